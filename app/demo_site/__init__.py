"""The demo page of ``token-broker demo``: the browser client at work, for a person to watch.

:class:`DemoSite` wraps the broker's ASGI app on the broker's own port, the way a
company's app puts its pages and the broker behind one origin. It serves ``/demo/``
(the page, its script and stylesheet) and ``/demo/session`` (a dev session JWT for the
demo user, who belongs to two tenants); every other path goes to the broker untouched.

The page imports ``/v1/client.js`` and mounts every embed ``/v1/embeds`` lists for the
chosen tenant; the sandbox's stand-in components (app/sandbox/components.js) show the
claims, the security context and the refresh countdown. The page is served with a
strict Content-Security-Policy (scripts from this origin and the sandbox only), as a
real page embedding the vendors would be.

Never part of ``token-broker serve``: a route that hands out session tokens to anyone
is a demo, not a product.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth import mint_dev_token
from app.config.models import SessionConfig
from app.sandbox.asgi import respond

PREFIX = "/demo/"
SESSION_PATH = "/demo/session"
STATIC_DIR = Path(__file__).with_name("static")
SESSION_TTL_SECONDS = 600
CONTENT_TYPES = {
    "index.html": b"text/html; charset=utf-8",
    "demo.js": b"text/javascript; charset=utf-8",
    "demo.css": b"text/css; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class DemoUser:
    id: str = "alice"
    roles: tuple[str, ...] = ("analyst",)
    tenants: tuple[str, ...] = field(default=())
    """Empty: every tenant of the policy."""


def content_security_policy(sandbox_url: str) -> str:
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src 'self' {sandbox_url}",
            f"connect-src 'self' {sandbox_url}",
            "style-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


class DemoSite:
    def __init__(
        self,
        broker: ASGIApp,
        *,
        session: SessionConfig,
        tenants: Mapping[str, str | None],
        sandbox_url: str,
        user: DemoUser | None = None,
    ) -> None:
        """``tenants``: tenant id -> region, in the order the page offers them."""
        self.broker = broker
        self.session = session
        self.user = user if user is not None else DemoUser()
        chosen: Sequence[str] = self.user.tenants or tuple(tenants)
        self.tenants = [{"id": t, "region": tenants.get(t)} for t in chosen]
        sandbox_url = sandbox_url.rstrip("/")
        self.files: dict[str, bytes] = {}
        for name in CONTENT_TYPES:  # read once, here, not on the event loop
            body = (STATIC_DIR / name).read_bytes()
            if name == "index.html":
                body = body.replace(b"{{SANDBOX}}", html.escape(sandbox_url).encode())
            self.files[name] = body
        self.csp = content_security_policy(sandbox_url).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith(PREFIX) or path in ("/", "/demo")):
            await self.broker(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, b"method not allowed\n", b"text/plain", [(b"allow", b"GET")])
        elif path in ("/", "/demo"):
            await _send(send, 307, b"", b"text/plain", [(b"location", PREFIX.encode())])
        elif path == SESSION_PATH:
            await self._session(send)
        else:
            name = path[len(PREFIX) :] or "index.html"
            if name not in self.files:
                await _send(send, 404, b"not found\n", b"text/plain")
                return
            headers = [(b"cache-control", b"no-cache")]
            if name == "index.html":
                headers.append((b"content-security-policy", self.csp))
            await _send(send, 200, self.files[name], CONTENT_TYPES[name], headers)

    async def _session(self, send: Send) -> None:
        token = mint_dev_token(
            self.session,
            user=self.user.id,
            tenant=[t["id"] for t in self.tenants if t["id"]],
            roles=self.user.roles,
            ttl_seconds=SESSION_TTL_SECONDS,
        )
        body = orjson.dumps(
            {
                "token": token,
                "user": self.user.id,
                "roles": list(self.user.roles),
                "tenants": self.tenants,
            }
        )
        await _send(send, 200, body, b"application/json", [(b"cache-control", b"no-store")])


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """The sandbox's ``respond()``, with ``nosniff`` on every page the demo serves."""
    await respond(
        send,
        status,
        body,
        content_type=content_type,
        headers=[(b"x-content-type-options", b"nosniff"), *headers],
    )
