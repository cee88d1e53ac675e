"""The token routes' one dispatch path: :class:`TokenRouter`.

``POST /v1/tokens``, ``GET /v1/embeds`` and ``POST /internal/v1/tokens`` are on every
dashboard page load. FastAPI's exception middleware, router matching and
request/response wrappers cost more per request than the broker's whole cache-hit
path (performance.md S1), and an ``APIRoute`` subclass still pays for all of them. So
these three routes are not framework routes at all: they are
:class:`TokenRoute` entries served by :class:`TokenRouter`, a pure-ASGI router that
sits inside the request-id and CORS middleware (so every answer gets a request id,
security headers, CORS and metrics exactly as a framework route does) and in front
of FastAPI. The framework never sees those paths, so a handler is reached one way
only, and nothing framework-specific (``Depends``, ``response_model``) is declared on
them to sit there inert: a handler takes the :class:`~starlette.requests.Request`,
reads and validates its own body (``app.api.body``) and returns a ``Response``. Their
OpenAPI description is written explicitly in ``app.api.openapi``, and a test checks
that the document and this table list the same routes.

What the router does, and all it does:

- matches the path below any ``root_path`` exactly (no trailing-slash redirect, no
  path parameters: none of these routes has any);
- answers another method on a token path with ``405 method_not_allowed`` and ``Allow``;
- renders a :class:`~app.errors.BrokerError` as ``application/problem+json`` (the same
  ``problem_response`` the framework's exception handler uses); anything else
  propagates to ``RequestContextMiddleware``, which answers a bare 500;
- sets ``scope["route"]`` as Starlette's router does, so metrics label by route path,
  and, with tracing on, hands the route to ``on_route`` (FastAPI's request span names
  only the routes FastAPI routes itself).

Everything else goes on to FastAPI unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import problem_response, request_id_of
from app.asgi import route_path
from app.errors import BrokerError, MethodNotAllowed

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
RouteHook = Callable[[str, str], None]
"""(method, route path) of a matched token route."""


@dataclass(frozen=True, slots=True)
class TokenRoute:
    """One method on one exact path, served by ``endpoint``."""

    method: str
    path: str
    endpoint: Handler
    operation_id: str
    credentials: Literal["session", "service"]


class TokenRouter:
    def __init__(
        self, app: ASGIApp, routes: Sequence[TokenRoute], on_route: RouteHook | None = None
    ) -> None:
        self.app = app
        self._on_route = on_route
        self._routes: dict[str, dict[str, TokenRoute]] = {}
        for route in routes:
            by_method = self._routes.setdefault(route.path, {})
            if route.method in by_method:
                raise ValueError(f"two token routes for {route.method} {route.path}")
            by_method[route.method] = route
        self._allow = {path: ", ".join(sorted(methods)) for path, methods in self._routes.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope) if scope.get("root_path") else scope["path"]
        by_method = self._routes.get(path)
        if by_method is None:
            await self.app(scope, receive, send)
            return
        route = by_method.get(scope["method"])
        request = Request(scope, receive, send)
        if route is None:
            error = MethodNotAllowed(headers={"Allow": self._allow[path]})
            await problem_response(error, request_id_of(request))(scope, receive, send)
            return
        scope["route"] = route  # as Starlette's router sets it (metrics label by its path)
        if self._on_route is not None:
            self._on_route(route.method, route.path)
        try:
            response = await route.endpoint(request)
        except BrokerError as exc:
            response = problem_response(exc, request_id_of(request))
        await response(scope, receive, send)
