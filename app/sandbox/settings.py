"""Sandbox settings from the environment (``SANDBOX_*``).

The default API keys are public development values, not secrets: anyone can read them
here. A broker pointed at the sandbox uses them in its policy file, e.g.
``EMBEDDABLE_EU_API_KEY=sandbox-embeddable-eu-dev-key``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090
DEV_EMBEDDABLE_US_API_KEY = "sandbox-embeddable-us-dev-key"
DEV_EMBEDDABLE_EU_API_KEY = "sandbox-embeddable-eu-dev-key"
DEV_DATABRAIN_API_KEY = "sandbox-databrain-dev-key"


def _random_secret() -> SecretStr:
    return SecretStr(secrets.token_urlsafe(32))


class SandboxSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore", frozen=True)

    embeddable_us_api_key: SecretStr = Field(
        default=SecretStr(DEV_EMBEDDABLE_US_API_KEY), min_length=1
    )
    embeddable_eu_api_key: SecretStr = Field(
        default=SecretStr(DEV_EMBEDDABLE_EU_API_KEY), min_length=1
    )
    databrain_api_key: SecretStr = Field(default=SecretStr(DEV_DATABRAIN_API_KEY), min_length=1)
    token_secret: SecretStr = Field(default_factory=_random_secret, min_length=32)
    """HS256 key of the Embeddable tokens; random per process unless set."""
    databrain_data_apps: Annotated[frozenset[str], NoDecode] = frozenset()
    """Known data apps (env: comma-separated); any other dataAppName gets 404 DATA_APP_ID_ERROR.
    Empty: every valid name is known."""
    history_limit: int = Field(default=1000, ge=1, le=100_000)
    """Requests (and issued tokens) remembered for ``/_sandbox/requests``."""
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["json", "console"] = "console"
    access_log: bool = False
    """Off by default: the sandbox serves benchmarks; /_sandbox/requests shows the traffic."""

    @field_validator("databrain_data_apps", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    def embeddable_api_keys(self) -> Mapping[str, SecretStr]:
        """Region → the key that region's endpoint accepts."""
        return {"us": self.embeddable_us_api_key, "eu": self.embeddable_eu_api_key}
