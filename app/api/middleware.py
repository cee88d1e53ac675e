"""Pure ASGI middleware (no BaseHTTPMiddleware on the hot path).

``RequestContextMiddleware`` gives every request an id (echoed when sane, generated
otherwise), sets it for logging, adds ``X-Request-ID`` to every response, counts the
request in the HTTP metrics (a client that disconnects mid-body as 499), and turns any
exception that escaped the app into a bare ``500 internal_error`` problem: the body says
nothing but the request id.
"""

from __future__ import annotations

import logging
import random
import re
import time

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.docs import DOCS_CSP, DOCS_PATH
from app.asgi import route_path
from app.errors import PROBLEM_CONTENT_TYPE, InternalError
from app.observability.logging import loggable_path, request_id_var
from app.observability.metrics import Metrics

log = logging.getLogger("token_broker.http")

# A JSON API: nothing here is meant to be framed, sniffed, or referred from.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)
# The interactive reference (app.api.docs) is a page: it may load its own assets.
DOCS_ASSETS = DOCS_PATH + "/"
DOCS_SECURITY_HEADERS = (
    *SECURITY_HEADERS[:3],
    (b"content-security-policy", DOCS_CSP.encode()),
)
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._\-]{1,128}")
_HEADER = b"x-request-id"


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == _HEADER:
            if _SANE_REQUEST_ID.fullmatch(value):
                return bytes(value).decode("ascii")
            break
    # Unique, not secret: it is echoed to clients and logged, and guards nothing.
    return f"{random.getrandbits(128):032x}"


def route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        context_token = request_id_var.set(request_id)
        header = (_HEADER, request_id.encode("ascii"))
        path = route_path(scope)
        security_headers = (
            DOCS_SECURITY_HEADERS
            if path == DOCS_PATH or path.startswith(DOCS_ASSETS)
            else SECURITY_HEADERS
        )
        status = 500
        started = False
        begin = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header, *security_headers]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # Gone before its body arrived: nobody to answer and nothing broke, so no
            # error log (SREs alert on those); 499 is nginx's code for it in the metrics.
            status = 499
            log.info("http.client_disconnected", extra={"path": loggable_path(scope["path"])})
        except Exception:
            log.exception("http.unhandled_error", extra={"path": loggable_path(scope["path"])})
            if not started:
                status = 500
                body = orjson.dumps(InternalError().problem(request_id))
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                            (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store"),
                            header,
                            *SECURITY_HEADERS,
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            # The lifespan state (copied into each request's scope) holds the metrics.
            metrics: Metrics | None = scope["state"].get("metrics")
            if metrics is not None:
                counter, histogram = metrics.http_children(
                    route_label(scope), scope["method"], status
                )
                counter.inc()
                histogram.observe(time.perf_counter() - begin)
            request_id_var.reset(context_token)
