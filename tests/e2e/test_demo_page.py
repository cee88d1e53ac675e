"""The demo page (`token-broker demo`) in real Chromium: both embeds render with their
claims and security context, the tenant switch changes them, and a screenshot is taken.

``UPDATE_DEMO_SCREENSHOT=1`` also writes it to docs/demo.png (the README shows it).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.conftest import keep_on_loopback
from tests.support.demo import Demo, running_demo

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

VIEWPORT = {"width": 1280, "height": 900}
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo.png"
TIMEOUT_MS = 20_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    with running_demo() as running:
        yield running


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    offsite = keep_on_loopback(context)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    yield page
    context.close()
    assert problems == [], problems
    assert offsite == [], f"requests beyond loopback: {offsite}"


SELECTOR = "#embeds em-beddable, #embeds dbn-dashboard, #embeds superset-dashboard"
CARDS = """() => [...document.querySelectorAll('SELECTOR')]
  .map((el) => {
    const field = (name) => el.shadowRoot.querySelector(`[data-field=${name}]`).textContent;
    return { tag: el.localName, claims: field('claims'), context: field('context'),
             refresh: field('refresh'), seen: field('tokens-seen') };
  })""".replace("SELECTOR", SELECTOR)

CONTEXT_ARRIVED = """(tenant) => {
  const els = [...document.querySelectorAll('SELECTOR')];
  return els.length === 3 && els.every((el) => {
    const text = el.shadowRoot.querySelector('[data-field=context]').textContent;
    // a JSON value "acme", or Superset's SQL literal 'acme' in an RLS clause
    return (text.includes(`"${tenant}"`) || text.includes(`'${tenant}'`)) && /\\d+ s/.test(
      el.shadowRoot.querySelector('[data-field=refresh]').textContent);
  });
}""".replace("SELECTOR", SELECTOR)


def wait_for_tenant(page: Page, tenant: str) -> list[dict[str, Any]]:
    page.wait_for_selector(f"body[data-ready={tenant}]", timeout=TIMEOUT_MS)
    page.wait_for_function(CONTEXT_ARRIVED, arg=tenant, timeout=TIMEOUT_MS)
    cards: list[dict[str, Any]] = page.evaluate(CARDS)
    return cards


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # IHDR, the first chunk
    return width, height


def test_demo_page_shows_both_vendors_per_tenant_and_a_screenshot(
    demo: Demo, page: Page, tmp_path: Path
) -> None:
    page.goto(demo.page)
    cards = wait_for_tenant(page, "acme")
    by_tag = {card["tag"]: card for card in cards}
    assert set(by_tag) == {"em-beddable", "dbn-dashboard", "superset-dashboard"}
    embeddable, databrain = by_tag["em-beddable"], by_tag["dbn-dashboard"]
    superset = by_tag["superset-dashboard"]
    # Superset's guest token carries the tenant's row filter, as does what it was asked.
    assert '"rls_rules"' in superset["claims"]
    assert "tenant_id = 'acme'" in superset["claims"]
    assert "tenant_id = 'acme'" in superset["context"]
    # The Embeddable token's decoded claims, and what the vendor was asked for acme.
    assert '"securityTokenId"' in embeddable["claims"]
    assert '"exp"' in embeddable["claims"]
    assert '"tenantId": "acme"' in embeddable["context"]
    assert '"environment": "acme-prod"' in embeddable["context"]
    # Databrain's token is opaque; its security context is the clientId and filters.
    assert "opaque" in databrain["claims"]
    assert '"clientId": "acme"' in databrain["context"]
    assert "globex" not in embeddable["context"] + databrain["context"] + superset["context"]
    for card in cards:
        seconds = int(card["refresh"].split()[0])
        # Superset's guest tokens live as long as Superset says (the sandbox: 300 s), and
        # its SDK refreshes by the token's exp; the others refresh within a minute.
        limit = 300 if card["tag"] == "superset-dashboard" else 60
        assert 0 < seconds <= limit, "demo tokens refresh within their lifetime"
        assert card["seen"] == "1"

    shot = page.screenshot()
    assert png_size(shot) == (VIEWPORT["width"], VIEWPORT["height"])
    assert len(shot) > 40_000, "a nearly blank page compresses to far less"
    (tmp_path / "demo-acme.png").write_bytes(shot)
    if os.environ.get("UPDATE_DEMO_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.write_bytes(shot)

    page.select_option("#tenant", "globex")
    cards = wait_for_tenant(page, "globex")
    contexts = " ".join(card["context"] for card in cards)
    assert '"tenantId": "globex"' in contexts
    assert '"clientId": "globex"' in contexts
    assert "tenant_id = 'globex'" in contexts
    assert "acme" not in contexts
    events = page.evaluate("document.getElementById('events').textContent")
    assert "issued sales-overview for globex" in events


def test_the_committed_screenshot_is_a_real_png_of_the_page() -> None:
    data = DOCS_SCREENSHOT.read_bytes()
    assert png_size(data) == (VIEWPORT["width"], VIEWPORT["height"])
    assert len(data) > 40_000
