"""DynamicCORSMiddleware at the ASGI level: which paths it guards, under a root path too."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.api.cors import DynamicCORSMiddleware

pytestmark = pytest.mark.anyio
ALLOWED = "https://app.example.com"


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    await Response(b"ok")(scope, receive, send)


def cors_app() -> Any:
    cors = DynamicCORSMiddleware(endpoint)
    runtime = SimpleNamespace(
        active=SimpleNamespace(
            config=SimpleNamespace(cors=SimpleNamespace(allow_origins=[ALLOWED]))
        )
    )

    async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = {"runtime": runtime, "request_id": "rid"}
        await cors(scope, receive, send)

    return with_state


async def request(method: str, path: str, origin: str, root_path: str = "") -> httpx.Response:
    headers = {"Origin": origin}
    if method == "OPTIONS":
        headers["Access-Control-Request-Method"] = "POST"
    transport = httpx.ASGITransport(app=cors_app(), root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
        return await client.request(method, path, headers=headers)


# uvicorn --root-path keeps the prefix in scope["path"]; httpx's ASGITransport does too.
MOUNTS = [("", "/v1/tokens"), ("/broker", "/broker/v1/tokens")]


@pytest.mark.parametrize(("root_path", "path"), MOUNTS)
async def test_an_allowed_origin_gets_its_preflight_and_headers(root_path: str, path: str) -> None:
    preflight = await request("OPTIONS", path, ALLOWED, root_path)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    assert preflight.headers["access-control-allow-credentials"] == "true"

    actual = await request("POST", path, ALLOWED, root_path)
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == ALLOWED
    assert actual.headers["vary"] == "Origin"


@pytest.mark.parametrize(("root_path", "path"), MOUNTS)
async def test_an_unlisted_origin_is_refused(root_path: str, path: str) -> None:
    preflight = await request("OPTIONS", path, "https://evil.example", root_path)
    assert preflight.status_code == 403
    assert preflight.json()["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in preflight.headers

    actual = await request("POST", path, "https://evil.example", root_path)
    assert "access-control-allow-origin" not in actual.headers


@pytest.mark.parametrize(
    ("root_path", "path"),
    [("", "/internal/v1/tokens"), ("", "/healthz"), ("/broker", "/broker/internal/v1/tokens")],
)
async def test_routes_outside_v1_get_no_cors(root_path: str, path: str) -> None:
    response = await request("POST", path, ALLOWED, root_path)
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
