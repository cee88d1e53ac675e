"""The README's front-end snippet, as written, behind the proxy the README documents.

The snippet is taken from README.md ("Front-end integration"), served by a page
server whose ``/analytics/`` forwards to the demo broker with the prefix removed (what
the README's nginx ``location`` and Vite proxy do), and opened in Chromium: the embed
must appear, rendered by the sandbox's stand-in component, for tenant acme.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from tests.e2e.conftest import keep_on_loopback
from tests.support.demo import Demo, running_demo
from tests.support.servers import serve_in_thread

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
PREFIX = "/analytics"
HOP_BY_HOP = {b"host", b"connection", b"content-length", b"transfer-encoding"}


def readme_snippet() -> str:
    section = README.read_text().split("## Front-end integration", 1)[1]
    match = re.search(r"```html\n(.*?)```", section, re.DOTALL)
    assert match, "the README's front-end section has no html snippet"
    return match.group(1)


class ProxiedApp:
    """The app's origin: the snippet at ``/``, the broker under ``/analytics/``."""

    def __init__(self, page: bytes, broker_url: str) -> None:
        self.page = page
        self.broker_url = broker_url
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.client = httpx.AsyncClient(base_url=self.broker_url)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.client is not None:
                        await self.client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/":
            headers = [(b"content-type", b"text/html; charset=utf-8")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": self.page})
            return
        if not path.startswith(PREFIX + "/") or self.client is None:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope["query_string"].decode()
        upstream = await self.client.request(
            scope["method"],
            path[len(PREFIX) :] + (f"?{query}" if query else ""),
            headers=[(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP],
            content=body,
        )
        headers = [
            (k.lower(), v)
            for k, v in upstream.headers.raw
            if k.lower() not in HOP_BY_HOP and k.lower() != b"content-encoding"
        ]
        headers.append((b"content-length", str(len(upstream.content)).encode()))
        await send(
            {"type": "http.response.start", "status": upstream.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": upstream.content})


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    with running_demo() as running:
        yield running


def test_the_readme_snippet_runs_as_written_behind_the_documented_proxy(
    demo: Demo, browser: Browser
) -> None:
    page_html = readme_snippet().encode()
    with serve_in_thread(ProxiedApp(page_html, demo.broker)) as app_origin:
        context = browser.new_context()
        offsite = keep_on_loopback(context)
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on(
            "console",
            lambda m: (
                problems.append(m.text)
                if m.type in ("error", "warning")
                and not m.text.startswith("Failed to load resource")
                else None
            ),
        )
        page.on(
            "response",
            lambda r: (
                problems.append(f"{r.status} {r.url}")
                if r.status >= 400 and not r.url.endswith("/favicon.ico")
                else None
            ),
        )
        try:
            page.goto(app_origin + "/")
            page.wait_for_function(
                """() => {
                  const el = document.querySelector('#sales > em-beddable');
                  const ctx = el && el.shadowRoot && el.shadowRoot.querySelector('[data-field=context]');
                  return !!ctx && ctx.textContent.includes('"tenantId": "acme"');
                }""",
                timeout=20_000,
            )
            token = page.evaluate(
                "document.querySelector('#sales > em-beddable').getAttribute('token')"
            )
            assert token and token.count(".") == 2
        finally:
            context.close()
    assert problems == [], problems
    assert offsite == [], f"requests beyond loopback: {offsite}"
