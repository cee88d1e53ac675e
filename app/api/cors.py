"""CORS for the browser-facing routes, from the *current* policy's ``cors.allow_origins``.

Pure ASGI (Starlette's CORSMiddleware is fixed at start-up; our origins change with a
policy reload). Only listed origins get CORS headers, always echoed exactly and never
``*``, because credentials (cookies, Authorization) are used. A preflight from an
unlisted origin gets ``403 origin_not_allowed``.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.asgi import route_path
from app.errors import PROBLEM_CONTENT_TYPE, OriginNotAllowed

BROWSER_PREFIX = "/v1/"
ALLOW_METHODS = b"GET, POST, OPTIONS"
ALLOW_HEADERS = b"Authorization, Content-Type, X-Request-ID"
EXPOSE_HEADERS = b"X-Request-ID, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"
PREFLIGHT_MAX_AGE = b"600"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class DynamicCORSMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not route_path(scope).startswith(BROWSER_PREFIX):
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        runtime = scope["state"].get("runtime")
        allowed = runtime is not None and origin.decode("latin-1") in (
            runtime.active.config.cors.allow_origins
        )
        is_preflight = scope["method"] == "OPTIONS" and _header(
            scope, b"access-control-request-method"
        )
        if is_preflight:
            await self._preflight(scope, send, origin if allowed else None)
            return
        if not allowed:
            await self.app(scope, receive, send)
            return
        extra = [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-expose-headers", EXPOSE_HEADERS),
            (b"vary", b"Origin"),
        ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: Scope, send: Send, origin: bytes | None) -> None:
        if origin is None:
            request_id = scope["state"].get("request_id", "-")
            body = orjson.dumps(
                OriginNotAllowed("this origin may not call the broker").problem(request_id)
            )
            headers = [(b"content-type", PROBLEM_CONTENT_TYPE.encode()), (b"vary", b"Origin")]
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        headers = [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-allow-methods", ALLOW_METHODS),
            (b"access-control-allow-headers", ALLOW_HEADERS),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE),
            (b"vary", b"Origin"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
