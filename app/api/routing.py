"""A route class for handlers that take the Request and return a Response themselves.

FastAPI still builds the OpenAPI description from the route's declaration (response
model, error responses, documented body); at request time Starlette calls the handler
directly, without FastAPI's dependency solving and response serialization, which cost
tens of microseconds per request on the token path. FastAPI documents ``route_class``
as the extension point for this.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response


class LeanRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return handler
