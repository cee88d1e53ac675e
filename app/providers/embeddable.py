"""Embeddable: ``POST {base_url}/api/v1/security-token`` per region.

Docs: docs.embeddable.com "Tokens API"; the embeddable-hq/handbook sample backends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError

from app.providers.base import (
    BaseProvider,
    Element,
    EmbedElementConfig,
    IssuedToken,
    ProviderConfigBase,
    StrictModel,
)

TYPE_NAME = "embeddable"
TOKEN_PATH = "/api/v1/security-token"
DEFAULT_REGION_BASE_URLS: Mapping[str, str] = {
    "us": "https://api.us.embeddable.com",
    "eu": "https://api.eu.embeddable.com",
}
ELEMENT_TAG = "em-beddable"


class EmbeddableRegionConfig(StrictModel):
    api_key: SecretStr = Field(min_length=1)
    base_url: AnyHttpUrl | None = None
    """Defaults to https://api.<region>.embeddable.com for us and eu."""


class EmbeddableConfig(ProviderConfigBase):
    type: Literal["embeddable"]
    regions: dict[str, EmbeddableRegionConfig] = Field(min_length=1)

    def region_names(self) -> frozenset[str] | None:
        return frozenset(self.regions)

    def secrets(self) -> list[SecretStr]:
        return [region.api_key for region in self.regions.values()]

    def base_url(self, region: str) -> str:
        configured = self.regions[region].base_url
        if configured is not None:
            return str(configured).rstrip("/")
        try:
            return DEFAULT_REGION_BASE_URLS[region]
        except KeyError:
            raise ValueError(
                f"region {region!r} has no default Embeddable base URL; set base_url"
            ) from None


class EmbeddableFilter(StrictModel):
    member: str
    operator: str
    values: list[Any]


class EmbeddableRequest(StrictModel):
    """The body of a security-token request, as the policy file may write it."""

    embeddableId: str = Field(min_length=1)
    savedVersion: str = "production"
    securityContext: dict[str, Any] = Field(default_factory=dict)
    user: str = Field(min_length=1)
    environment: str | None = None
    roles: list[str] | None = None
    customCanvasState: str | None = None
    dashboardState: str | None = None
    customCanvasReadOnly: bool | None = None
    filters: list[EmbeddableFilter] | None = None
    dataProvider: str | None = None


class EmbeddableProvider(BaseProvider):
    type_name: ClassVar[str] = TYPE_NAME
    config_model: ClassVar[type[ProviderConfigBase]] = EmbeddableConfig

    config: EmbeddableConfig

    def __repr__(self) -> str:
        return f"EmbeddableProvider(name={self.name!r}, regions={sorted(self.config.regions)!r})"

    @classmethod
    def validate_request(cls, body: Mapping[str, Any]) -> None:
        try:
            EmbeddableRequest.model_validate(body)
        except ValidationError as exc:
            raise ValueError(_first_error(exc)) from None

    @classmethod
    def validate_element(cls, element: EmbedElementConfig | None) -> None:
        if element is not None and (element.dashboard_id or element.metric_id):
            raise ValueError(
                "Embeddable embeds take no element block (base-url comes from the region)"
            )

    async def issue(
        self, body: Mapping[str, Any], ttl_seconds: int, region: str | None
    ) -> IssuedToken:
        raise NotImplementedError("issue 4")

    def element(self, element: EmbedElementConfig | None, region: str | None) -> Element:
        raise NotImplementedError("issue 4")


def _first_error(exc: ValidationError) -> str:
    """Field path and reason of a request-model error, without echoing input values."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
