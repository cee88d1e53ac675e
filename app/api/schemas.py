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
    """What the front end renders besides the token: a custom element (``tag``,
    ``attributes``, ``script``), an SDK (``sdk``, ``options``: Superset, Preset) or a
    signed URL (``iframe``: Metabase). Exactly one kind is present."""

    tag: str | None = Field(
        default=None,
        examples=["em-beddable"],
        description="the vendor's custom element; absent for SDK and iframe vendors",
    )
    attributes: dict[str, str] | None = Field(
        default=None,
        examples=[{"base-url": "https://api.eu.embeddable.com/"}],
        description="the custom element's attributes besides token",
    )
    script: str | None = Field(
        default=None,
        description="URL of the vendor's loader script that defines the element for this "
        "region; absent when the provider has none (load the vendor's npm package instead)",
        examples=["https://embed.embeddable.com/js/v1/?region=EU"],
    )
    sdk: str | None = Field(
        default=None,
        examples=["@superset-ui/embedded-sdk"],
        description="the npm package that renders the embed (Superset, Preset)",
    )
    options: dict[str, str] | None = Field(
        default=None,
        examples=[
            {
                "id": "4e5f0c2a-0000-4000-8000-000000000001",
                "supersetDomain": "https://bi.example.com",
            }
        ],
        description="what to pass the SDK besides the token fetcher",
    )
    iframe: str | None = Field(
        default=None,
        examples=["https://metabase.example.com/embed/dashboard/eyJ...#bordered=true&titled=true"],
        description="the signed URL to load in an iframe (Metabase); it contains the token",
    )


class TokenResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2lnbmF0dXJl",
                    "provider": "embeddable",
                    "embed": "sales-overview",
                    "tenant": "acme",
                    "expires_at": "2026-11-22T10:15:00Z",
                    "expires_in": 900,
                    "element": {
                        "tag": "em-beddable",
                        "attributes": {"base-url": "https://api.eu.embeddable.com/"},
                    },
                }
            ]
        }
    )

    token: str = Field(description="the short-lived embed token; treat it as a secret")
    provider: str = Field(description="the vendor type: embeddable or databrain")
    embed: str = Field(description="the embed's name in the policy")
    tenant: str = Field(description="the tenant the token is scoped to")
    expires_at: str = Field(description="RFC 3339 UTC", examples=["2026-11-22T10:15:00Z"])
    expires_in: int = Field(description="whole seconds left at the moment of the response")
    element: ElementOut


class EmbedOut(BaseModel):
    name: str
    title: str | None
    provider: str


class EmbedsResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "tenant": "acme",
                    "embeds": [
                        {
                            "name": "sales-overview",
                            "title": "Sales overview",
                            "provider": "embeddable",
                        }
                    ],
                }
            ]
        }
    )

    tenant: str
    embeds: list[EmbedOut]


class Problem(BaseModel):
    """RFC 9457 problem details. Branch on `code` (stable); `detail` is for people.
    `request_id` is also in the `X-Request-ID` header and the broker's logs."""

    # The OpenAPI document narrows `code` to the enum of every code the broker answers
    # with (app.api.openapi reads them from the error classes in app.errors).

    type: str = Field(description="a URI naming the kind of problem (ends with the code)")
    title: str = Field(description="a short summary of the kind of problem")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what went wrong, for people (never secrets)")
    code: str = Field(description="stable: branch on this")
    request_id: str = Field(description="also in X-Request-ID and the broker's logs")
    upstream_status: int | None = Field(
        default=None, description="upstream_rejected only: the vendor's HTTP status"
    )
    upstream_code: str | None = Field(
        default=None, description="upstream_rejected only: the vendor's error code, when sane"
    )
