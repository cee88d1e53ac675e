"""LeanRouteDispatch: exact LeanRoute matches are served directly, the rest by the app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.api import tokens
from app.api.routing import LeanRoute, LeanRouteDispatch, lean_route_table
from app.errors import InvalidRequest
from app.main import create_app
from app.settings import Settings

pytestmark = pytest.mark.anyio
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"


class Fallback:
    """Stands for the framework: records what reached it."""

    def __init__(self) -> None:
        self.paths: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append((scope["method"], scope["path"]))
        await Response(b"framework", status_code=299)(scope, receive, send)


def dispatch_app() -> tuple[LeanRouteDispatch, Fallback]:
    router = APIRouter(route_class=LeanRoute)

    @router.post("/lean")
    async def lean(request: Request) -> Response:
        body = await request.body()
        if body == b"fail":
            raise InvalidRequest("the body says fail")
        route = request.scope["route"]
        return Response(f"lean {route.path}".encode(), status_code=200)

    @router.get("/lean/{item}")
    async def with_parameter(request: Request) -> Response:
        return Response(b"never served directly")

    fallback = Fallback()
    return LeanRouteDispatch(fallback, routes=router.routes), fallback


async def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    root_path = kwargs.pop("root_path", "")
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
        return await client.request(method, path, **kwargs)


async def test_an_exact_match_is_served_without_the_framework() -> None:
    app, fallback = dispatch_app()
    response = await call(app, "POST", "/lean", content=b"hello")
    assert (response.status_code, response.text) == (200, "lean /lean")
    assert fallback.paths == []


async def test_a_broker_error_becomes_its_problem_body() -> None:
    app, fallback = dispatch_app()
    response = await call(app, "POST", "/lean", content=b"fail")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["code"] == "invalid_request"
    assert body["detail"] == "the body says fail"
    assert fallback.paths == []


@pytest.mark.parametrize(
    ("method", "path", "root_path"),
    [
        ("GET", "/lean", ""),  # another method: the framework answers 405
        ("POST", "/lean/", ""),  # trailing slash: the framework redirects
        ("GET", "/lean/7", ""),  # path parameters are the router's job
        ("POST", "/other", ""),
        ("POST", "/api/lean", "/api"),  # mounted under a root path
    ],
)
async def test_everything_else_goes_to_the_framework(
    method: str, path: str, root_path: str
) -> None:
    app, fallback = dispatch_app()
    response = await call(app, method, path, root_path=root_path)
    assert response.status_code == 299
    assert fallback.paths == [(method, path)]


def test_the_table_is_exactly_the_token_routes_the_api_documents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BROKER_CONFIG", str(DEMO_CONFIG))
    documented = create_app(Settings()).openapi()["paths"]
    table = lean_route_table(tokens.router.routes)
    assert set(table) == {
        ("POST", "/v1/tokens"),
        ("GET", "/v1/embeds"),
        ("POST", "/internal/v1/tokens"),
    }
    for method, path in table:
        assert method.lower() in documented[path]
