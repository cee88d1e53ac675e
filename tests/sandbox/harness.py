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


def running_sandbox(**overrides: Any) -> Iterator[Sandbox]:
    with (
        serve_in_thread(create_sandbox_app(sandbox_settings(**overrides))) as url,
        httpx.Client(timeout=5) as control,
    ):
        yield Sandbox(url, control)
