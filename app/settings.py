"""Process settings from the environment (``BROKER_*``).

These are the things that differ between deployments of the same policy file. The
policy itself lives in the YAML file named by ``BROKER_CONFIG`` (see ``app.config``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BROKER_", extra="ignore", frozen=True)

    config: Path = Field(default=Path("config/broker.yaml"), description="policy file path")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: LogLevel = "info"
    log_format: Literal["json", "console"] = "json"
    access_log: bool = True

    redis_url: SecretStr | None = None
    """When set, token cache and rate limits are shared through Redis."""
    redis_key_prefix: str = Field(default="token-broker:", min_length=1, max_length=64)
    cache_encryption_key: SecretStr | None = None
    """Secret (>= 32 bytes) from which the AES-GCM key for Redis cache values is derived."""

    reload_interval_seconds: float = Field(default=5.0, ge=0)
    """How often the policy file is checked for changes; 0 turns polling off (SIGHUP still works)."""
    shutdown_timeout_seconds: float = Field(default=10.0, ge=0)
    gc_full_interval_seconds: float = Field(default=60.0, ge=0)
    """Seconds between full garbage collections (app.collector); 0 keeps Python's policy."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("redis_url", "cache_encryption_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value
