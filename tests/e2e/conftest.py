"""Real Chromium for the browser tests: Debian's ``chromium`` driven by Playwright.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (the
Debian package ``.ci/run`` installs). Without it the browser tests are skipped on a
developer machine and FAIL under ``CI=true``: a missing real part is not a pass.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Request

CHROMIUM = Path(os.environ.get("BROWSER_TESTS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    # Nothing but loopback resolves: a page or script that tries the internet fails.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]


def chromium_or_skip() -> Path:
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    found = shutil.which("chromium")
    message = f"chromium not found at {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; CI must install it (.ci/run)")
    if found:
        return Path(found)
    pytest.skip(message)


# Module scope, not session: Playwright's sync API keeps an event loop running on the
# main thread while it is started, which would break every later anyio test.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(executable), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})


def keep_on_loopback(context: BrowserContext) -> list[str]:
    """The URLs of requests ``context`` tried to send beyond loopback (a test asserts
    none). Observed, not intercepted: Playwright's interception answers CORS preflights
    itself, which would hide the broker's own CORS decisions. The browser cannot reach
    them anyway (``--host-resolver-rules`` in CHROMIUM_ARGS)."""
    offsite: list[str] = []

    def watch(request: Request) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("http", "https") and parts.hostname not in LOOPBACK_HOSTS:
            offsite.append(request.url)

    context.on("request", watch)
    return offsite
