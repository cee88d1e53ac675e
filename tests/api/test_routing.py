"""TokenRouter: the token routes' one dispatch path (app.api.routing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.api import tokens
from app.api.openapi import build_document
from app.api.routing import TokenRoute, TokenRouter
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


async def lean(request: Request) -> Response:
    body = await request.body()
    if body == b"fail":
        raise InvalidRequest("the body says fail")
    route = request.scope["route"]
    return Response(f"lean {route.path}".encode(), status_code=200)


async def listing(request: Request) -> Response:
    return Response(b"listing")


def dispatch_app() -> tuple[TokenRouter, Fallback]:
    routes = [
        TokenRoute("POST", "/lean", lean, "createLean", "session"),
        TokenRoute("GET", "/lean", listing, "listLean", "session"),
    ]
    fallback = Fallback()
    return TokenRouter(fallback, routes=routes), fallback


async def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    root_path = kwargs.pop("root_path", "")
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
        return await client.request(method, path, **kwargs)


@pytest.mark.parametrize(("path", "root_path"), [("/lean", ""), ("/api/lean", "/api")])
async def test_a_token_route_is_served_without_the_framework(path: str, root_path: str) -> None:
    app, fallback = dispatch_app()
    response = await call(app, "POST", path, content=b"hello", root_path=root_path)
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


@pytest.mark.parametrize("method", ["PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
async def test_another_method_on_a_token_path_is_405_never_the_framework(method: str) -> None:
    app, fallback = dispatch_app()
    response = await call(app, method, "/lean")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    if method != "HEAD":
        assert response.json()["code"] == "method_not_allowed"
    assert fallback.paths == []


async def test_an_exception_that_is_not_a_broker_error_propagates() -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("bug")

    app = TokenRouter(Fallback(), routes=[TokenRoute("GET", "/x", broken, "getX", "session")])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
        with pytest.raises(RuntimeError, match="bug"):
            await client.get("/x")


@pytest.mark.parametrize(
    ("method", "path", "root_path"),
    [
        ("POST", "/lean/", ""),  # no trailing-slash match: the framework answers (404)
        ("POST", "/other", ""),
        ("POST", "/api/other", "/api"),
        ("POST", "/api/lean/", "/api"),
    ],
)
async def test_everything_else_goes_to_the_framework(
    method: str, path: str, root_path: str
) -> None:
    app, fallback = dispatch_app()
    response = await call(app, method, path, root_path=root_path)
    assert response.status_code == 299
    assert fallback.paths == [(method, path)]


def test_two_routes_for_one_method_and_path_are_refused() -> None:
    route = TokenRoute("GET", "/x", listing, "getX", "session")
    with pytest.raises(ValueError, match="two token routes for GET /x"):
        TokenRouter(Fallback(), routes=[route, route])


def test_the_framework_cannot_reach_a_token_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_CONFIG", str(DEMO_CONFIG))
    app = create_app(Settings())
    handlers = {route.endpoint for route in tokens.ROUTES}
    token_paths = {route.path for route in tokens.ROUTES}
    for route in app.routes:
        assert getattr(route, "endpoint", None) not in handlers
        assert getattr(route, "path", None) not in token_paths


def test_the_document_lists_exactly_the_token_routes_with_their_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BROKER_CONFIG", str(DEMO_CONFIG))
    app = create_app(Settings())
    document = build_document(
        version="1", framework_routes=app.routes, token_routes=tokens.ROUTES, cookie_name=None
    )
    served = {(route.method, route.path): route.operation_id for route in tokens.ROUTES}
    assert set(served) == {
        ("POST", "/v1/tokens"),
        ("GET", "/v1/embeds"),
        ("POST", "/internal/v1/tokens"),
    }
    for (method, path), operation_id in served.items():
        assert document["paths"][path][method.lower()]["operationId"] == operation_id
