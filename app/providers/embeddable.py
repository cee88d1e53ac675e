"""Embeddable: ``POST {base_url}/api/v1/security-token`` per region.

Docs: docs.embeddable.com "Tokens API"; the embeddable-hq/handbook sample backends.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import httpx
import orjson
from pydantic import Field, SecretStr, model_validator

from app.providers.base import (
    ApiKey,
    BaseProvider,
    Element,
    EmbedElementConfig,
    IssuedToken,
    ProviderConfigBase,
    ScriptUrl,
    StrictModel,
    VendorUrl,
)
from app.providers.http import (
    post_json,
    raise_for_failure,
    refused_credential,
    require_positive_ttl,
    short_string,
    token_from_body,
)
from app.providers.validation import validate_body

log = logging.getLogger("token_broker.providers.embeddable")

TYPE_NAME = "embeddable"
TOKEN_PATH = "/api/v1/security-token"
DEFAULT_REGION_BASE_URLS: Mapping[str, str] = {
    "us": "https://api.us.embeddable.com",
    "eu": "https://api.eu.embeddable.com",
}
DEFAULT_REGION_SCRIPT_URLS: Mapping[str, str] = {
    "us": "https://embed.embeddable.com/js/v1/?region=US",
    "eu": "https://embed.embeddable.com/js/v1/?region=EU",
}
"""The loader script that defines ``<em-beddable>`` for the region (element.script)."""
ELEMENT_TAG = "em-beddable"
VALUELESS_OPERATORS = frozenset({"set", "notSet"})
"""Filter operators that test whether a member has a value: they must not send ``values``."""
LEGACY_CANVAS_STATE = "dashboardState"
CANVAS_STATE = "customCanvasState"
"""Embeddable renamed ``dashboardState``; policies may use either, the vendor gets this."""


class EmbeddableRegionConfig(StrictModel):
    api_key: ApiKey
    base_url: VendorUrl | None = None
    """Defaults to https://api.<region>.embeddable.com for us and eu."""
    script_url: ScriptUrl | None = None
    """The region's component loader, given to the front end as element.script. Defaults
    to Embeddable's loader for us and eu; ``null`` sends none (a bundled loader)."""

    def script(self, region: str) -> str | None:
        if "script_url" in self.model_fields_set:
            return None if self.script_url is None else str(self.script_url)
        return DEFAULT_REGION_SCRIPT_URLS.get(region)


class EmbeddableConfig(ProviderConfigBase):
    type: Literal["embeddable"]
    regions: dict[str, EmbeddableRegionConfig] = Field(min_length=1)

    def region_names(self) -> frozenset[str] | None:
        return frozenset(self.regions)

    def secrets(self) -> list[SecretStr]:
        return [region.api_key for region in self.regions.values()]

    @model_validator(mode="after")
    def _every_region_has_a_base_url(self) -> EmbeddableConfig:
        for name, region in self.regions.items():
            if region.base_url is None and name not in DEFAULT_REGION_BASE_URLS:
                raise ValueError(
                    f"region {name!r} has no default Embeddable base URL; set regions.{name}.base_url"
                )
        return self

    def base_url(self, region: str) -> str:
        """The region's API root without a trailing slash; ValueError for an unknown region."""
        if region not in self.regions:
            known = ", ".join(sorted(self.regions))
            raise ValueError(f"no Embeddable region {region!r} (configured: {known})")
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
    """``{member, operator, values}``; ``set``/``notSet`` test presence and take no values."""

    member: str = Field(min_length=1)
    operator: str = Field(min_length=1)
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _values_fit_the_operator(self) -> EmbeddableFilter:
        written = "values" in self.model_fields_set
        if self.operator in VALUELESS_OPERATORS:
            if written:
                raise ValueError(f"operator {self.operator!r} takes no values; remove values")
        elif not written or self.values is None:
            raise ValueError(f"operator {self.operator!r} needs values (a list)")
        return self


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

    @model_validator(mode="after")
    def _one_canvas_state(self) -> EmbeddableRequest:
        if self.customCanvasState is not None and self.dashboardState is not None:
            raise ValueError(
                "customCanvasState and dashboardState are the same field; write only one"
            )
        return self


class EmbeddableProvider(BaseProvider[EmbeddableConfig]):
    type_name: ClassVar[str] = TYPE_NAME
    config_model: ClassVar[type[ProviderConfigBase]] = EmbeddableConfig
    token_path: ClassVar[str] = TOKEN_PATH

    def __init__(
        self, name: str, config: EmbeddableConfig, *, http_client: httpx.AsyncClient
    ) -> None:
        super().__init__(name, config, http_client=http_client)
        self._elements: dict[str, Element] = {}

    def __repr__(self) -> str:
        return f"EmbeddableProvider(name={self.name!r}, regions={sorted(self.config.regions)!r})"

    @classmethod
    def validate_request(
        cls, body: Mapping[str, Any], *, allow_unknown_fields: bool = False
    ) -> tuple[str, ...]:
        return validate_body(EmbeddableRequest, body, allow_unknown_fields=allow_unknown_fields)

    @classmethod
    def validate_element(cls, element: EmbedElementConfig | None) -> None:
        if element is not None and (element.dashboard_id or element.metric_id):
            raise ValueError(
                "Embeddable embeds take no element block (base-url comes from the region)"
            )

    async def issue(
        self, body: Mapping[str, Any], ttl_seconds: int, region: str | None
    ) -> IssuedToken:
        require_positive_ttl(ttl_seconds)
        region_name = self._region(region)
        endpoint = self.endpoint(region_name)
        context = endpoint.context
        started = time.time()
        response = await post_json(self._http, endpoint, vendor_body(body, ttl_seconds))
        raise_for_failure(response, context, error_fields, refused_credential)
        token = token_from_body(response, context)
        expires_at = started + ttl_seconds
        token_exp = unverified_exp(token)
        if token_exp is None:
            log.warning(
                "provider.token_without_exp", extra={"provider": self.name, "region": region_name}
            )
        elif token_exp <= time.time():
            raise context.bad_response("the token is already expired")
        else:
            expires_at = min(expires_at, token_exp)
        return IssuedToken(token=token, expires_at=expires_at, vendor_status=response.status)

    def account(self, region: str | None) -> tuple[str, SecretStr]:
        name = self._region(region)
        return self.config.base_url(name), self.config.regions[name].api_key

    def element(self, element: EmbedElementConfig | None, region: str | None) -> Element:
        name = self._region(region)
        found = self._elements.get(name)
        if found is None:  # the same for every token of a region: built once
            base_url = self.config.base_url(name) + "/"
            found = self._elements[name] = Element(
                ELEMENT_TAG,
                MappingProxyType({"base-url": base_url}),
                self.config.regions[name].script(name),
            )
        return found

    def _region(self, region: str | None) -> str:
        if region is None:
            raise ValueError("Embeddable is region-based: the tenant has no region")
        if region not in self.config.regions:
            known = ", ".join(sorted(self.config.regions))
            raise ValueError(f"no Embeddable region {region!r} (configured: {known})")
        return region


def vendor_body(body: Mapping[str, Any], ttl_seconds: int) -> dict[str, Any]:
    """The security-token request as sent: config body, defaults, and the broker's expiry.

    Fields left as null are dropped: the vendor documents them as strings, lists, ...
    ``dashboardState`` (the field's old name) is sent as ``customCanvasState``.
    """
    sent = {key: value for key, value in body.items() if value is not None}
    legacy = sent.pop(LEGACY_CANVAS_STATE, None)
    if legacy is not None:
        sent.setdefault(CANVAS_STATE, legacy)
    sent.setdefault("savedVersion", "production")
    sent.setdefault("securityContext", {})
    sent["expiryInSeconds"] = ttl_seconds
    return sent


def error_fields(payload: Any) -> tuple[str | None, str | None]:
    """Embeddable's samples read ``errorMessage``; other shapes are tolerated."""
    if isinstance(payload, str):
        return None, short_string(payload)
    if not isinstance(payload, dict):
        return None, None
    message = (
        short_string(payload.get("errorMessage"))
        or short_string(payload.get("message"))
        or short_string(payload.get("error"))
    )
    code = short_string(payload.get("errorCode")) or short_string(payload.get("code"))
    return code, message


def unverified_exp(token: str) -> float | None:
    """The ``exp`` of a JWT, read without verifying it; None when the token is no JWT.

    The broker cannot verify the vendor's signature and does not need to: it only
    wants not to hand out a token for longer than the vendor will honour it.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    segment = parts[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)
