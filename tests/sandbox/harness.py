"""A sandbox on loopback for the provider and sandbox tests, and helpers to steer it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from app.sandbox import SandboxSettings, create_sandbox_app
from tests.support.servers import serve_in_thread

TOKEN_SECRET = "sandbox-test-token-secret-0123456789abcdef"
US_KEY = "test-embeddable-us-key"
EU_KEY = "test-embeddable-eu-key"
DATABRAIN_KEY = "test-databrain-key"
DATA_APPS = frozenset({"opsapp", "salesapp", "sales-dashboard", "Demo Sales Data App"})
SUPERSET_USER = "test-superset-admin"
SUPERSET_PASSWORD = "test-superset-password"
SUPERSET_DASHBOARD = "9c7b2f4e-0000-4000-8000-000000000001"
SUPERSET_GUEST_SECRET = "test-superset-guest-token-secret-0123456789"
SUPERSET_AUDIENCE = "test-superset"
PRESET_TOKEN = "test-preset-token"
PRESET_SECRET = "test-preset-secret"
PRESET_TEAM = "team-1"
PRESET_WORKSPACE = "ws-1"
GUEST_BODY: dict[str, Any] = {
    "user": {"username": "alice", "first_name": "Alice", "last_name": "A"},
    "resources": [{"type": "dashboard", "id": SUPERSET_DASHBOARD}],
    "rls": [{"clause": "tenant_id = 'acme'"}],
}

EMBEDDABLE_BODY: dict[str, Any] = {
    "embeddableId": "d-1",
    "user": "alice",
    "securityContext": {"tenant": "acme"},
    "expiryInSeconds": 600,
}
DATABRAIN_BODY: dict[str, Any] = {"clientId": "acme", "dataAppName": "opsapp", "expiryTime": 60000}


def embeddable_post(
    sandbox: Sandbox,
    *,
    region: str = "eu",
    key: str | None = EU_KEY,
    json: Any = EMBEDDABLE_BODY,
    **kwargs: Any,
) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return sandbox.control.post(
        f"{sandbox.embeddable_url(region)}/api/v1/security-token",
        json=json,
        headers=headers,
        **kwargs,
    )


def databrain_post(
    sandbox: Sandbox, *, key: str | None = DATABRAIN_KEY, json: Any = DATABRAIN_BODY, **kwargs: Any
) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return sandbox.control.post(
        f"{sandbox.databrain_url}/api/v2/guest-token/create", json=json, headers=headers, **kwargs
    )


def sandbox_settings(**overrides: Any) -> SandboxSettings:
    values: dict[str, Any] = {
        "embeddable_us_api_key": US_KEY,
        "embeddable_eu_api_key": EU_KEY,
        "databrain_api_key": DATABRAIN_KEY,
        "token_secret": TOKEN_SECRET,
        "databrain_data_apps": DATA_APPS,
        "superset_username": SUPERSET_USER,
        "superset_password": SUPERSET_PASSWORD,
        "superset_dashboards": frozenset({SUPERSET_DASHBOARD}),
        "superset_guest_token_secret": SUPERSET_GUEST_SECRET,
        "superset_guest_token_audience": SUPERSET_AUDIENCE,
        "preset_api_token": PRESET_TOKEN,
        "preset_api_secret": PRESET_SECRET,
        "preset_team": PRESET_TEAM,
        "preset_workspace": PRESET_WORKSPACE,
        **overrides,
    }
    return SandboxSettings.model_validate(values)


@dataclass
class Sandbox:
    """A running sandbox: its base URL and a blocking client for the control API."""

    url: str
    control: httpx.Client

    def reset(self) -> None:
        self.control.delete(f"{self.url}/_sandbox/faults").raise_for_status()
        self.control.delete(f"{self.url}/_sandbox/requests").raise_for_status()
        self.control.delete(f"{self.url}/_sandbox/sessions").raise_for_status()

    def fault(self, **rule: Any) -> None:
        response = self.control.post(f"{self.url}/_sandbox/faults", json=rule)
        assert response.status_code == 200, response.text

    def requests(self, **query: str) -> list[dict[str, Any]]:
        response = self.control.get(f"{self.url}/_sandbox/requests", params=query)
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()["requests"]
        return found

    def last_request(self, vendor: str) -> dict[str, Any]:
        found = self.requests(vendor=vendor)
        assert found, f"{vendor} received nothing"
        return found[-1]

    def embeddable_url(self, region: str) -> str:
        return f"{self.url}/embeddable/{region}"

    @property
    def databrain_url(self) -> str:
        return f"{self.url}/databrain"

    @property
    def superset_url(self) -> str:
        return f"{self.url}/superset"

    @property
    def preset_url(self) -> str:
        return f"{self.url}/preset"


def running_sandbox(**overrides: Any) -> Iterator[Sandbox]:
    with (
        serve_in_thread(create_sandbox_app(sandbox_settings(**overrides))) as url,
        httpx.Client(timeout=5) as control,
    ):
        yield Sandbox(url, control)
