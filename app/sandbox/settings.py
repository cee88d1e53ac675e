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
DEV_SUPERSET_USERNAME = "sandbox-admin"
DEV_SUPERSET_PASSWORD = "sandbox-superset-dev-password"
DEV_SUPERSET_DASHBOARDS = frozenset(
    {"5b1c8a0e-0000-4000-8000-000000000021", "5b1c8a0e-0000-4000-8000-000000000022"}
)
"""The embedded dashboard uuids the sandbox's Superset and Preset know."""
DEV_PRESET_API_TOKEN = "sandbox-preset-dev-token"
DEV_PRESET_API_SECRET = "sandbox-preset-dev-secret"
DEV_PRESET_TEAM = "sandbox-team"
DEV_PRESET_WORKSPACE = "sandbox-workspace"


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
    superset_username: str = Field(default=DEV_SUPERSET_USERNAME, min_length=1)
    superset_password: SecretStr = Field(default=SecretStr(DEV_SUPERSET_PASSWORD), min_length=1)
    superset_dashboards: Annotated[frozenset[str], NoDecode] = DEV_SUPERSET_DASHBOARDS
    """Embedded dashboard uuids (env: comma-separated); any other id is 400
    "EmbeddedDashboard not found." (Superset and Preset alike)."""
    superset_access_token_seconds: int = Field(default=900, ge=1, le=86_400)
    """Lifetime of a login's access token (Superset's default: 15 minutes)."""
    superset_guest_token_seconds: int = Field(default=300, ge=1, le=86_400)
    """GUEST_TOKEN_JWT_EXP_SECONDS: the guest token's lifetime, server-wide as in Superset."""
    superset_guest_token_secret: SecretStr = Field(default_factory=_random_secret, min_length=32)
    """GUEST_TOKEN_JWT_SECRET: the HS256 key of guest tokens; random per process unless set."""
    superset_guest_token_audience: str = Field(default="sandbox-superset", min_length=1)
    preset_api_token: str = Field(default=DEV_PRESET_API_TOKEN, min_length=1)
    preset_api_secret: SecretStr = Field(default=SecretStr(DEV_PRESET_API_SECRET), min_length=1)
    preset_team: str = Field(default=DEV_PRESET_TEAM, min_length=1)
    preset_workspace: str = Field(default=DEV_PRESET_WORKSPACE, min_length=1)
    history_limit: int = Field(default=1000, ge=1, le=100_000)
    """Requests (and issued tokens) remembered for ``/_sandbox/requests``."""
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["json", "console"] = "console"
    access_log: bool = False
    """Off by default: the sandbox serves benchmarks; /_sandbox/requests shows the traffic."""

    @field_validator("databrain_data_apps", "superset_dashboards", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    def embeddable_api_keys(self) -> Mapping[str, SecretStr]:
        """Region → the key that region's endpoint accepts."""
        return {"us": self.embeddable_us_api_key, "eu": self.embeddable_eu_api_key}
