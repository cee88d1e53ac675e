"""What the browser tests run against: the real broker and sandbox, a page on another
origin, and a recorder that counts every request the broker receives."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.main import create_app
from app.settings import Settings
from tests.support.policies import base_policy, write_policy
from tests.support.servers import serve_in_thread
from tests.support.stack import sandbox_env, serving_sandbox

CLIENT_JS = Path(__file__).resolve().parents[2] / "clients" / "js" / "token-broker.js"
COOKIE_NAME = "broker_session"
SHORT_TTL_SECONDS = 30  # the policy's minimum; the page refreshes at 10 % of it
STRICT_CSP = "default-src 'none'; script-src 'self'; connect-src {broker}; style-src 'self'"


@dataclass(frozen=True)
class Seen:
    at: float
    method: str
    path: str
    status: int
    body: dict[str, Any] | None
    retry_after: str | None


@dataclass
class Recorder:
    """ASGI wrapper around the broker: every request it answered, in order."""

    app: ASGIApp
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def recording_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
                try:
                    body = json.loads(b"".join(chunks)) if chunks else None
                except ValueError:
                    body = None
                seen = Seen(
                    time.monotonic(),
                    scope["method"],
                    scope["path"],
                    message["status"],
                    body if isinstance(body, dict) else None,
                    headers.get("retry-after"),
                )
                with self.lock:
                    self.seen.append(seen)
            await send(message)

        await self.app(scope, recording_receive, recording_send)

    def token_posts(self, embed: str | None = None) -> list[Seen]:
        with self.lock:
            return [
                s
                for s in self.seen
                if s.method == "POST"
                and s.path == "/v1/tokens"
                and (embed is None or (s.body or {}).get("embed") == embed)
            ]


class Pages:
    """The front end under test, on its own origin (not the broker's).

    ``/?script=self`` loads the client from this origin (as behind a same-origin
    proxy); ``/?script=remote`` imports it from the broker's ``/v1/client.js``;
    ``&csp=strict`` serves the page with ``script-src 'self'``. The module puts the
    client's exports on ``window.client`` for the test to drive.
    """

    def __init__(self) -> None:
        self.broker_url = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
        path = scope["path"]
        headers: list[tuple[bytes, bytes]] = []
        if path == "/":
            script = "/remote.js" if query.get("script") == "remote" else "/self.js"
            body = (
                '<!doctype html><html><head><meta charset="utf-8"><title>client test</title>'
                '<link rel="icon" href="data:,">'
                f'<script type="module" src="{script}"></script></head>'
                '<body><div id="slot"></div></body></html>'
            ).encode()
            content_type = b"text/html; charset=utf-8"
            if query.get("csp") == "strict":
                csp = STRICT_CSP.format(broker=self.broker_url)
                headers.append((b"content-security-policy", csp.encode()))
        elif path in ("/self.js", "/remote.js"):
            source = "/client.js" if path == "/self.js" else f"{self.broker_url}/v1/client.js"
            body = (
                "window.violations = [];\n"
                'document.addEventListener("securitypolicyviolation", (e) =>\n'
                "  window.violations.push(`${e.violatedDirective} ${e.blockedURI}`));\n"
                f'import("{source}").then((client) => {{\n'
                "  window.client = client;\n"
                '  document.body.dataset.loaded = "yes";\n'
                "}, (error) => { document.body.dataset.loaded = `failed: ${error}`; });\n"
            ).encode()
            content_type = b"text/javascript; charset=utf-8"
        elif path == "/client.js":
            body = CLIENT_JS.read_bytes()
            content_type = b"text/javascript; charset=utf-8"
        else:
            body, content_type = b"not found", b"text/plain"
        status = 404 if body == b"not found" else 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body})


def e2e_policy(page_origin: str, sandbox_url: str) -> dict[str, Any]:
    document = base_policy()
    # element.script: the sandbox's stand-in components, never Embeddable's real
    # loader (the browser must not reach past loopback).
    for region in document["providers"]["embeddable"]["regions"].values():
        region["script_url"] = f"{sandbox_url}/_sandbox/components.js"
    document["cors"] = {"allow_origins": [page_origin]}
    document["session"]["cookie"] = COOKIE_NAME
    embeds = document["embeds"]
    for name in ("live-a", "live-b"):
        embeds[name] = {**embeds["sales-overview"], "token_ttl_seconds": SHORT_TTL_SECONDS}
    # Tight per-user rate for the 429 storm; each test uses its own user.
    document["limits"] = {"per_user": "3/second", "per_tenant": "1000/second"}
    # A refresh at 10 % of the lifetime must mint a new token, not get the cached one.
    document["cache"] = {"enabled": True, "min_remaining_ratio": 0.95, "max_entries": 1000}
    return document


@dataclass
class E2EStack:
    broker: str
    sandbox: str
    page_origin: str
    recorder: Recorder

    def page_url(self, *, script: str = "remote", csp: str | None = None) -> str:
        url = f"{self.page_origin}/?script={script}"
        return url + (f"&csp={csp}" if csp else "")

    def unlisted_page_url(self) -> str:
        """The same page through another name: an origin the policy does not list."""
        return self.page_url(script="self").replace("127.0.0.1", "localhost")

    def vendor_requests(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.sandbox}/_sandbox/requests", timeout=10)
        return list(response.json()["requests"])


@contextlib.contextmanager
def running_e2e_stack(directory: Path) -> Iterator[E2EStack]:
    pages = Pages()
    with (
        serve_in_thread(pages) as page_origin,
        serving_sandbox() as sandbox_url,
        pytest.MonkeyPatch.context() as patch,
    ):
        for key, value in sandbox_env(sandbox_url).items():
            patch.setenv(key, value)
        path = write_policy(directory, e2e_policy(page_origin, sandbox_url))
        recorder = Recorder(create_app(Settings(config=path)))
        with serve_in_thread(recorder) as broker_url:
            pages.broker_url = broker_url
            yield E2EStack(broker_url, sandbox_url, page_origin, recorder)
