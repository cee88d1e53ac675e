"""The whole product on loopback: the sandbox as vendors and the broker in front of it.

Both run under real uvicorn servers (threads); tests talk HTTP to them and read what
the vendors received from the sandbox's ``/_sandbox/requests``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from jose import jwt

from app.main import create_app
from app.observability.tracing import Tracing
from app.sandbox import SandboxSettings, create_sandbox_app
from app.settings import Settings
from tests.support.policies import AUDIENCE, BASE_ENV, HS_ISSUER, HS_SECRET, write_policy
from tests.support.servers import serve_in_thread


def session_token(
    user: str = "alice",
    tenants: str | Sequence[str] = "acme",
    roles: Sequence[str] = ("viewer",),
    *,
    email: str | None = "alice@example.test",
    ttl: int = 600,
    **claims: Any,
) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": HS_ISSUER,
        "aud": AUDIENCE,
        "sub": user,
        "org_id": tenants if isinstance(tenants, str) else list(tenants),
        "roles": list(roles),
        "iat": now,
        "exp": now + ttl,
        **claims,
    }
    if email is not None:
        payload["email"] = email
    return str(jwt.encode(payload, HS_SECRET, algorithm="HS256"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Stack:
    broker: str
    sandbox: str
    policy_path: Path
    client: httpx.Client

    def token(self, embed: str, token: str | None = None, **body: Any) -> httpx.Response:
        headers = bearer(token if token is not None else session_token())
        return self.client.post(
            f"{self.broker}/v1/tokens", json={"embed": embed, **body}, headers=headers
        )

    def vendor_requests(self, vendor: str | None = None) -> list[dict[str, Any]]:
        params = {"vendor": vendor} if vendor else {}
        response = self.client.get(f"{self.sandbox}/_sandbox/requests", params=params)
        response.raise_for_status()
        return list(response.json()["requests"])

    def clear_vendor_requests(self) -> None:
        self.client.delete(f"{self.sandbox}/_sandbox/requests").raise_for_status()

    def set_fault(self, rule: Mapping[str, Any]) -> None:
        self.client.post(f"{self.sandbox}/_sandbox/faults", json=dict(rule)).raise_for_status()

    def clear_faults(self) -> None:
        self.client.delete(f"{self.sandbox}/_sandbox/faults").raise_for_status()


def sandbox_settings() -> SandboxSettings:
    """The sandbox accepts exactly the keys the test policy sends."""
    return SandboxSettings(
        embeddable_us_api_key=BASE_ENV["EMBEDDABLE_US_API_KEY"],
        embeddable_eu_api_key=BASE_ENV["EMBEDDABLE_EU_API_KEY"],
        databrain_api_key=BASE_ENV["DATABRAIN_API_KEY"],
    )


@contextlib.contextmanager
def serving_sandbox(**server: Any) -> Iterator[str]:
    """The sandbox under uvicorn on a free loopback port (``server``: uvicorn
    settings), accepting the test policy's keys; yields its URL."""
    with serve_in_thread(create_sandbox_app(sandbox_settings()), **server) as url:
        yield url


def sandbox_env(sandbox_url: str) -> dict[str, str]:
    """The test policy's variables (:data:`BASE_ENV`: canary API keys, the session
    secret) with every vendor's base URL on the sandbox at ``sandbox_url``."""
    return {
        **BASE_ENV,
        "EMBEDDABLE_US_URL": f"{sandbox_url}/embeddable/us",
        "EMBEDDABLE_EU_URL": f"{sandbox_url}/embeddable/eu",
        "DATABRAIN_URL": f"{sandbox_url}/databrain",
    }


@contextlib.contextmanager
def running_stack(
    directory: Path,
    document: dict[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    tracing: Tracing | None = None,
    **settings: Any,
) -> Iterator[Stack]:
    with serving_sandbox() as sandbox_url:
        variables = {**sandbox_env(sandbox_url), **(env or {})}
        path = write_policy(directory, document)
        with contextlib.ExitStack() as stack:
            patch = stack.enter_context(_patched_env(variables))
            del patch
            app = create_app(Settings(config=path, **settings), tracing=tracing)
            broker_url = stack.enter_context(serve_in_thread(app))
            client = stack.enter_context(httpx.Client(timeout=30))
            yield Stack(broker=broker_url, sandbox=sandbox_url, policy_path=path, client=client)


@contextlib.contextmanager
def _patched_env(variables: Mapping[str, str]) -> Iterator[None]:
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        for key, value in variables.items():
            patch.setenv(key, value)
        yield
