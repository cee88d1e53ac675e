"""Request and response bodies of the public API (api.md), for validation and OpenAPI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

EmbedName = Field(min_length=1, max_length=128)
TenantId = Field(min_length=1, max_length=128)


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenRequest(StrictBody):
    embed: str = EmbedName
    tenant: str | None = Field(default=None, min_length=1, max_length=128)


class ServiceUserBody(StrictBody):
    id: str = Field(min_length=1, max_length=256)
    tenant: str = TenantId
    roles: list[str] = Field(default_factory=list, max_length=64)
    email: str | None = Field(default=None, max_length=320)
    claims: dict[str, Any] = Field(default_factory=dict)


class InternalTokenRequest(StrictBody):
    embed: str = EmbedName
    user: ServiceUserBody


class ElementOut(BaseModel):
    tag: str = Field(examples=["em-beddable"])
    attributes: dict[str, str] = Field(examples=[{"base-url": "https://api.eu.embeddable.com/"}])
    script: str | None = Field(
        default=None,
        description="URL of the vendor's loader script that defines the element for this "
        "region; absent when the provider has none (load the vendor's npm package instead)",
        examples=["https://embed.embeddable.com/js/v1/?region=EU"],
    )


class TokenResponse(BaseModel):
    token: str
    provider: str = Field(description="the vendor type: embeddable or databrain")
    embed: str
    tenant: str
    expires_at: str = Field(description="RFC 3339 UTC")
    expires_in: int = Field(description="whole seconds left at the moment of the response")
    element: ElementOut


class EmbedOut(BaseModel):
    name: str
    title: str | None
    provider: str


class EmbedsResponse(BaseModel):
    tenant: str
    embeds: list[EmbedOut]


class Problem(BaseModel):
    """RFC 9457 problem details; ``code`` is stable, ``detail`` is for people."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str
    upstream_status: int | None = None
    upstream_code: str | None = None


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "invalid_request",
        401: "unauthenticated, invalid_session, session_expired or invalid_service_key",
        403: "tenant_not_allowed, embed_not_allowed, missing_claim or origin_not_allowed",
        413: "request_too_large",
        429: "rate_limited (Retry-After)",
        502: "upstream_rejected, upstream_auth_failed or upstream_bad_response",
        503: "upstream_unavailable (Retry-After)",
        504: "upstream_timeout",
        500: "internal_error",
    }
    return {
        status: {
            "model": Problem,
            "description": descriptions[status],
            "content": {"application/problem+json": {}},
        }
        for status in statuses
    }
