"""Routes whose handlers take the Request and return a Response themselves.

``LeanRoute`` is declared like any FastAPI route, so FastAPI builds the OpenAPI
description from it (response model, error responses, documented body). At request
time ``LeanRouteDispatch`` — the innermost of the app's own middleware, inside the
request-id and CORS middleware and FastAPI's error and telemetry layers — serves an
exact ``(method, path)`` match of a LeanRoute by calling its handler directly, and
renders a :class:`~app.errors.BrokerError` as the app's exception handler would.

Why: the token routes are on every dashboard page load, and FastAPI's exception
middleware, exit-stack middleware, router matching and request/response wrappers cost
more per request than the whole cache-hit path of the broker (performance.md S1/S2).
Everything else (other routes, other methods on these paths, trailing-slash
redirects, ``root_path`` deployments) goes on through the framework unchanged; a
LeanRoute handler reached that way behaves the same, because the framework's
exception handler renders the same problem body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import problem_response, request_id_of
from app.errors import BrokerError

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class LeanRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handler: Handler = self.endpoint
        return handler


def lean_route_table(routes: Sequence[BaseRoute]) -> dict[tuple[str, str], LeanRoute]:
    """(method, path) of every LeanRoute without path parameters."""
    table: dict[tuple[str, str], LeanRoute] = {}
    for route in routes:
        if isinstance(route, LeanRoute) and not route.param_convertors:
            for method in route.methods or ():
                table.setdefault((method, route.path), route)
    return table


class LeanRouteDispatch:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        """``routes``: those of a router included into the app without a prefix."""
        self.app = app
        self._table = lean_route_table(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and not scope.get("root_path"):
            route = self._table.get((scope["method"], scope["path"]))
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # as the router sets it (metrics label the route by it)
        scope["endpoint"] = route.endpoint
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except BrokerError as exc:
            response = problem_response(exc, request_id_of(request))
        await response(scope, receive, send)
