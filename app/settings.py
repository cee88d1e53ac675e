"""Process settings from the environment (``BROKER_*``).

These are the things that differ between deployments of the same policy file. The
policy itself lives in the YAML file named by ``BROKER_CONFIG`` (see ``app.config``).

Every setting is validated here, in one place, before anything starts
(:func:`load_settings`): ``serve``, ``demo`` and ``check-config`` all go through it,
so a bad value is one line naming the variable and the reason, and never a traceback
from deep inside the lifespan. A value is never printed: ``BROKER_REDIS_URL`` may hold
a password and ``BROKER_CACHE_ENCRYPTION_KEY`` is a secret.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.outbound import (
    OutboundOptions,
    check_ca_bundle,
    check_client_identity,
    check_proxy_url,
)
from app.state.redis_url import parse_redis_url

ENV_PREFIX = "BROKER_"
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
MIN_ENCRYPTION_KEY_BYTES = 32


class SettingsError(ValueError):
    """One or more invalid settings; ``problems`` are lines of ``BROKER_X: reason``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    config: Path = Field(default=Path("config/broker.yaml"), description="policy file path")
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: LogLevel = "info"
    log_format: Literal["json", "console"] = "json"
    access_log: bool = True
    docs_enabled: bool = True
    """Serve the interactive API reference at /docs (its assets from the broker itself)."""

    redis_url: SecretStr | None = None
    """When set, token cache and rate limits are shared through Redis."""
    redis_key_prefix: str = Field(default="token-broker:", min_length=1, max_length=64)
    cache_encryption_key: SecretStr | None = Field(default=None, validate_default=True)
    """Secret (>= 32 bytes) from which the AES-GCM key for Redis cache values is derived."""

    reload_interval_seconds: float = Field(default=5.0, ge=0, allow_inf_nan=False)
    """How often the policy file is checked for changes; 0 turns polling off (SIGHUP still works)."""
    shutdown_timeout_seconds: float = Field(default=10.0, ge=0, allow_inf_nan=False)
    gc_full_interval_seconds: float = Field(default=60.0, ge=0, allow_inf_nan=False)
    """Seconds between full garbage collections (app.collector); 0 keeps Python's policy."""

    # What a client may send before the app sees it (app.connections; security.md).
    max_header_bytes: int = Field(default=32768, ge=1024, le=1 << 20)
    """Request line plus header fields of one request, in bytes (431 over it)."""
    max_header_fields: int = Field(default=100, ge=8, le=10000)
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=3600, allow_inf_nan=False)
    """From a connection's start (or a request's first byte) to its complete headers."""
    body_timeout_seconds: float = Field(default=10.0, gt=0, le=3600, allow_inf_nan=False)
    """From a body's first bytes to its last."""
    max_connections: int = Field(default=512, ge=1, le=100000)
    """Open client connections per worker process; an idle one makes room for a new one."""
    probe_reserve: int = Field(default=8, ge=1, le=1000)
    """Connections over ``max_connections`` kept for /healthz, /readyz and /metrics."""

    metrics_embed_labels: bool = False
    """Label ``token_broker_tokens_total`` with embed names. ``/metrics`` needs no
    credentials, and the API answers one ``embed_not_allowed`` for unknown and forbidden
    embeds so that names cannot be enumerated; an operator who keeps ``/metrics``
    private may opt in."""

    otel_enabled: bool = False
    """OpenTelemetry tracing (app.observability.tracing); needs the ``otel`` extra. The
    standard ``OTEL_*`` variables configure the exporter, sampler and resource."""

    outbound_proxy: SecretStr | None = None
    """Proxy URL for every outbound call; unset: HTTPS_PROXY / HTTP_PROXY / NO_PROXY apply."""
    outbound_ca_bundle: Path | None = None
    """Extra CA certificates (PEM) trusted for outbound TLS, besides the system store."""
    outbound_client_cert: Path | None = None
    """Client certificate (PEM; may hold the key too) for vendors behind mTLS."""
    outbound_client_key: Path | None = Field(default=None, validate_default=True)

    def outbound_options(self) -> OutboundOptions:
        """The ``BROKER_OUTBOUND_*`` settings as app.outbound takes them."""
        proxy = self.outbound_proxy
        return OutboundOptions(
            proxy=proxy.get_secret_value() if proxy is not None else None,
            ca_bundle=self.outbound_ca_bundle,
            client_cert=self.outbound_client_cert,
            client_key=self.outbound_client_key,
        )

    @field_validator("outbound_proxy")
    @classmethod
    def _proxy_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_proxy_url(value.get_secret_value())
        return value

    @field_validator("outbound_ca_bundle")
    @classmethod
    def _ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None:
            check_ca_bundle(value)
        return value

    @field_validator("outbound_client_key")
    @classmethod
    def _client_identity(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        cert = info.data.get("outbound_client_cert")
        if value is not None and cert is None:
            raise ValueError("set BROKER_OUTBOUND_CLIENT_CERT with it")
        if cert is not None:
            check_client_identity(cert, value)
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "redis_url",
        "cache_encryption_key",
        "outbound_proxy",
        "outbound_ca_bundle",
        "outbound_client_cert",
        "outbound_client_key",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_redis_url(value.get_secret_value())  # single node, Cluster or Sentinel
        return value

    @field_validator("redis_key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        # Key names end in a {hash tag} that keeps a token's value and its fleet lock in
        # one Cluster slot; a brace in the prefix would become the tag instead.
        if "{" in value or "}" in value:
            raise ValueError("must not contain { or } (the broker adds its own hash tags)")
        return value

    @field_validator("cache_encryption_key")
    @classmethod
    def _encryption_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # Runs for the default too (validate_default), so a Redis URL without a key is
        # refused here, beside the other fields' problems. A bad URL was reported already.
        if value is None:
            if info.data.get("redis_url") is not None:
                raise ValueError(
                    "required when BROKER_REDIS_URL is set (a secret of at least "
                    f"{MIN_ENCRYPTION_KEY_BYTES} bytes that encrypts the tokens cached in "
                    "Redis; the same on every replica)"
                )
            return None
        if len(value.get_secret_value().encode()) < MIN_ENCRYPTION_KEY_BYTES:
            raise ValueError(f"must be at least {MIN_ENCRYPTION_KEY_BYTES} bytes")
        return value

    @field_validator("otel_enabled")
    @classmethod
    def _otel_sdk_installed(cls, value: bool) -> bool:
        # Refused here, not at the first span: the API ships with FastAPI, the SDK and
        # the exporters only with the extra, and a broker that silently traces nothing
        # is worse than one that does not start.
        if value and importlib.util.find_spec("opentelemetry.sdk") is None:
            raise ValueError(
                "tracing needs the optional OpenTelemetry packages: install "
                "token-broker[otel] (pip install 'token-broker[otel]'), or unset it"
            )
        return value


def _problem_lines(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            name = ENV_PREFIX + "_".join(str(part) for part in error["loc"]).upper()
            lines.append(f"{name}: {message}")
        else:
            lines.append(message)
    return lines


def known_variables() -> frozenset[str]:
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """``BROKER_*`` variables that are no setting (a typo silently changes nothing)."""
    environ = os.environ if environ is None else environ
    known = known_variables()
    return sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)


def load_settings() -> Settings:
    """The settings from the environment; raises :class:`SettingsError`, whose lines
    name each bad variable and why (never its value)."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(_problem_lines(exc)) from None
