"""Pydantic models of the whole policy file (config.md). Unknown keys are errors.

These models check shape and types; the cross-references between sections
(embeds → providers, allow → tenants, templates → attributes, …) are checked by
``app.config.loader`` so that each error can name its own YAML path.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StringConstraints,
    field_validator,
)

from app.jose_keys import HMAC_ALGORITHMS, SUPPORTED_ALGORITHMS
from app.providers.base import LOOPBACK_HOSTS, EmbedElementConfig
from app.providers.registry import ProviderConfig

_LIMIT = re.compile(r"^\s*([1-9][0-9]{0,8})\s*/\s*(second|minute|hour|day)\s*$")
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IssuerConfig(StrictModel):
    issuer: str = Field(min_length=1, max_length=2048)
    audiences: list[Annotated[str, StringConstraints(min_length=1)]] = Field(min_length=1)
    algorithms: list[str] = Field(min_length=1)
    jwks_url: AnyHttpUrl | None = None
    public_key: str | None = Field(default=None, min_length=1)
    secret: SecretStr | None = None

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        for alg in value:
            if alg.strip().lower() == "none":
                raise ValueError("algorithm 'none' is never accepted")
            if alg not in SUPPORTED_ALGORITHMS:
                known = ", ".join(sorted(SUPPORTED_ALGORITHMS))
                raise ValueError(f"unsupported algorithm {alg!r} (supported: {known})")
        if len(set(value)) != len(value):
            raise ValueError("algorithms are listed twice")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _https_unless_loopback(cls, value: AnyHttpUrl | None) -> AnyHttpUrl | None:
        if value is not None and value.scheme != "https" and value.host not in LOOPBACK_HOSTS:
            raise ValueError("jwks_url must use https (plain http is allowed only on loopback)")
        return value

    @property
    def is_hmac(self) -> bool:
        return all(alg in HMAC_ALGORITHMS for alg in self.algorithms)


class ClaimsConfig(StrictModel):
    user_id: str = Field(default="sub", min_length=1)
    tenants: str = Field(min_length=1)
    roles: str | None = Field(default=None, min_length=1)
    email: str | None = Field(default=None, min_length=1)


class SessionConfig(StrictModel):
    issuers: list[IssuerConfig] = Field(min_length=1)
    leeway_seconds: int = Field(default=30, ge=0, le=300)
    max_token_bytes: int = Field(default=8192, ge=256, le=65536)
    cookie: Annotated[str, StringConstraints(pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")] | None = (
        None
    )
    claims: ClaimsConfig


class CorsConfig(StrictModel):
    allow_origins: list[str] = Field(default_factory=list)

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*":
                raise ValueError("'*' is not allowed: list the origins (credentials are used)")
            parts = urlsplit(origin)
            if (
                parts.scheme not in ("http", "https")
                or not parts.netloc
                or parts.path
                or parts.query
            ):
                raise ValueError(f"{origin!r} is not an origin such as https://app.example.com")
        return value


class TenantConfig(StrictModel):
    region: Name
    attributes: dict[str, Any] = Field(default_factory=dict)


class EmbedAllow(StrictModel):
    tenants: list[str] = Field(min_length=1)
    roles: list[str] | None = Field(default=None, min_length=1)
    """Any of these roles; omitted means any role."""


class EmbedConfig(StrictModel):
    provider: Name
    title: str | None = Field(default=None, max_length=256)
    allow: EmbedAllow
    token_ttl_seconds: int = Field(default=900, ge=30, le=86_400)
    element: EmbedElementConfig | None = None
    request: dict[str, Any]


class ServiceAllow(StrictModel):
    tenants: list[str] = Field(min_length=1)
    embeds: list[str] = Field(min_length=1)


class ServiceConfig(StrictModel):
    key_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]
    allow: ServiceAllow


class LimitsConfig(StrictModel):
    per_user: str | None = None
    per_tenant: str | None = None

    @field_validator("per_user", "per_tenant")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None and not _LIMIT.match(value):
            raise ValueError(
                f"{value!r} is not a rate such as '60/minute' (N/second|minute|hour|day)"
            )
        return value


class CacheConfig(StrictModel):
    enabled: bool = True
    min_remaining_ratio: float = Field(default=0.5, gt=0, le=1)
    max_entries: int = Field(default=100_000, ge=1, le=10_000_000)


class PolicyConfig(StrictModel):
    version: Literal[1]
    session: SessionConfig
    cors: CorsConfig = Field(default_factory=CorsConfig)
    tenants: dict[Name, TenantConfig] = Field(min_length=1)
    roles: dict[Name, dict[Name, dict[str, Any]]] = Field(default_factory=dict)
    providers: dict[Name, ProviderConfig] = Field(min_length=1)
    embeds: dict[Name, EmbedConfig] = Field(min_length=1)
    services: dict[Name, ServiceConfig] = Field(default_factory=dict)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)

    # Set by the loader: request fields forwarded unchecked under allow_unknown_fields.
    _forwarded_unknown_fields: tuple[str, ...] = PrivateAttr(default=())

    @property
    def forwarded_unknown_fields(self) -> tuple[str, ...]:
        """YAML paths of embed request fields no request model knows, forwarded as
        written because their provider sets ``allow_unknown_fields`` (listed at load)."""
        return self._forwarded_unknown_fields

    def secrets(self) -> list[SecretStr]:
        """Every secret value in the policy (for scrubbing and leak tests)."""
        found = [issuer.secret for issuer in self.session.issuers if issuer.secret is not None]
        for provider in self.providers.values():
            found.extend(provider.secrets())
        return found
