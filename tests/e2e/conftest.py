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

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path(os.environ.get("BROWSER_TESTS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
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
