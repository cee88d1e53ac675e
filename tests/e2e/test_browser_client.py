"""The browser client in real Chromium against the real broker and sandbox on loopback.

The page is served from another origin than the broker (another port), as a company's
app would be; it loads the client either from the broker (``/v1/client.js``, CORS) or
from its own origin (a same-origin proxy). A recorder in front of the broker counts
every request it receives, so "no tight loop" and "nothing after stop()" are counted,
not timed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.conftest import keep_on_loopback
from tests.e2e.support import COOKIE_NAME, E2EStack, running_e2e_stack
from tests.support.stack import session_token

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

LOAD_TIMEOUT_MS = 20_000
REFRESH_TIMEOUT_MS = 30_000
_users = itertools.count(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EStack]:
    with running_e2e_stack(tmp_path_factory.mktemp("e2e")) as running:
        yield running


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    offsite = keep_on_loopback(context)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], errors
    assert offsite == [], f"requests beyond loopback: {offsite}"


def open_page(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("document.body && document.body.dataset.loaded", timeout=LOAD_TIMEOUT_MS)
    loaded = page.evaluate("document.body.dataset.loaded")
    assert loaded == "yes", loaded


def fresh_user(tenants: str | list[str] = "acme", roles: tuple[str, ...] = ("analyst",)) -> str:
    """A session for a user no other test uses (the per-user limit is tight)."""
    return session_token(f"user-{next(_users)}", tenants, roles)


TOKEN = """async ({ broker, jwt, embed, options }) => {
  const b = new client.TokenBroker({ baseUrl: broker, getSessionToken: async () => jwt });
  try {
    return { grant: await b.token(embed, options || {}) };
  } catch (e) {
    return { error: { name: e.name, status: e.status, code: e.code, detail: e.detail,
                      requestId: e.requestId, retryAfter: e.retryAfter,
                      isError: e instanceof client.TokenBrokerError } };
  }
}"""


def test_bearer_mode_from_another_origin_importing_the_client_from_the_broker(
    stack: E2EStack, page: Page
) -> None:
    open_page(page, stack.page_url(script="remote"))
    result = page.evaluate(
        TOKEN, {"broker": stack.broker, "jwt": fresh_user(), "embed": "sales-overview"}
    )
    grant = result["grant"]
    assert grant["embed"] == "sales-overview"
    assert grant["tenant"] == "acme"
    assert grant["element"]["tag"] == "em-beddable"
    assert grant["expires_in"] > 0
    tokens = {r["token"] for r in stack.vendor_requests() if r["token"]}
    assert grant["token"] in tokens


def test_errors_arrive_as_token_broker_errors(stack: E2EStack, page: Page) -> None:
    open_page(page, stack.page_url(script="remote"))
    viewer = fresh_user(roles=("viewer",))
    result = page.evaluate(TOKEN, {"broker": stack.broker, "jwt": viewer, "embed": "ops-dashboard"})
    error = result["error"]
    assert error["isError"] is True
    assert (error["status"], error["code"]) == (403, "embed_not_allowed")
    assert error["requestId"]  # X-Request-ID is readable cross-origin (exposed)
    expired = page.evaluate(
        TOKEN, {"broker": stack.broker, "jwt": "not-a-jwt", "embed": "sales-overview"}
    )
    assert (expired["error"]["status"], expired["error"]["code"]) == (401, "invalid_session")


def test_cookie_mode_sends_the_session_cookie_only_with_credentials_include(
    stack: E2EStack, page: Page
) -> None:
    page.context.add_cookies([{"name": COOKIE_NAME, "value": fresh_user(), "url": stack.broker}])
    open_page(page, stack.page_url(script="remote"))
    result = page.evaluate(
        """async (broker) => {
      const withCookie = new client.TokenBroker({ baseUrl: broker, credentials: "include" });
      const without = new client.TokenBroker({ baseUrl: broker });
      const grant = await withCookie.token("sales-overview");
      const listed = (await withCookie.embeds()).embeds.map((e) => e.name);
      let refused = null;
      try { await without.token("sales-overview"); } catch (e) { refused = [e.status, e.code]; }
      return { grant, listed, refused };
    }""",
        stack.broker,
    )
    assert result["grant"]["embed"] == "sales-overview"
    assert result["refused"] == [401, "unauthenticated"]
    assert "sales-overview" in result["listed"]


def test_an_unlisted_origin_is_refused_by_cors_and_nothing_is_minted(
    stack: E2EStack, page: Page
) -> None:
    open_page(page, stack.unlisted_page_url())
    assert page.evaluate("location.origin").startswith("http://localhost:")
    before = len(stack.recorder.token_posts())
    vendor_before = len(stack.vendor_requests())
    result = page.evaluate(
        TOKEN, {"broker": stack.broker, "jwt": fresh_user(), "embed": "sales-overview"}
    )
    assert result["error"]["status"] == 0
    assert result["error"]["code"] == "network_error"
    assert len(stack.recorder.token_posts()) == before, "the POST got past the preflight"
    preflights = [
        s for s in stack.recorder.seen if s.method == "OPTIONS" and s.path == "/v1/tokens"
    ]
    assert preflights and preflights[-1].status == 403
    assert len(stack.vendor_requests()) == vendor_before


MOUNT = """async ({ broker, jwt, embed, tenant, refreshAt }) => {
  window.broker = new client.TokenBroker({ baseUrl: broker, getSessionToken: async () => jwt,
                                           refreshAt });
  window.events = [];
  window.broker.addEventListener("token", (e) => window.events.push(["token", e.detail]));
  window.broker.addEventListener("error", (e) => window.events.push(["error", e.detail.code]));
  const slot = document.getElementById("slot");
  const handle = await window.broker.mount(slot, embed, tenant ? { tenant } : {});
  window.handles = [...(window.handles || []), handle];
  window.tokenChanges = window.tokenChanges || [];
  new MutationObserver((records) => {
    for (const r of records) if (r.attributeName === "token")
      window.tokenChanges.push({ embed, at: Date.now(), token: r.target.getAttribute("token") });
  }).observe(handle.element, { attributes: true });
  return { tag: handle.element.localName, token: handle.element.getAttribute("token"),
           baseUrl: handle.element.getAttribute("base-url"),
           expiresAt: handle.expiresAt, index: window.handles.length - 1 };
}"""


def mount(page: Page, stack: E2EStack, jwt: str, embed: str, refresh_at: float = 0.1) -> Any:
    return page.evaluate(
        MOUNT,
        {
            "broker": stack.broker,
            "jwt": jwt,
            "embed": embed,
            "tenant": None,
            "refreshAt": refresh_at,
        },
    )


def test_the_token_is_replaced_in_place_before_it_expires(stack: E2EStack, page: Page) -> None:
    open_page(page, stack.page_url(script="remote"))
    first = mount(page, stack, fresh_user(), "live-a")
    assert first["tag"] == "em-beddable"
    assert first["baseUrl"].endswith("/embeddable/eu/")
    page.evaluate("window.firstElement = document.querySelector('#slot > em-beddable')")
    page.wait_for_function(
        "window.tokenChanges.length >= 1", timeout=REFRESH_TIMEOUT_MS, polling=100
    )
    after = page.evaluate(
        """() => ({
          same: document.querySelector('#slot > em-beddable') === window.firstElement
                && window.handles[0].element === window.firstElement,
          children: document.getElementById('slot').children.length,
          change: window.tokenChanges[0],
          events: window.events.map(([kind, detail]) => kind === 'token' ? detail.refreshed : kind),
        })"""
    )
    assert after["same"] is True, "the element was replaced, not updated"
    assert after["children"] == 1
    assert after["change"]["token"] != first["token"]
    assert after["change"]["at"] < first["expiresAt"], "refreshed only after expiry"
    assert after["events"][:2] == [False, True]
    assert len(stack.recorder.token_posts("live-a")) >= 2
    page.evaluate("window.handles[0].stop()")


def test_stop_leaves_no_further_requests(stack: E2EStack, page: Page) -> None:
    open_page(page, stack.page_url(script="remote"))
    jwt = fresh_user()
    mount(page, stack, jwt, "live-a")
    mount(page, stack, jwt, "live-b")
    posts_a = len(stack.recorder.token_posts("live-a"))
    page.evaluate("window.handles[0].stop()")
    assert page.evaluate("document.querySelectorAll('#slot > em-beddable').length") == 1
    # live-b was due at the same moment as live-a: once it has refreshed twice,
    # live-a would have refreshed too had stop() left anything running.
    page.wait_for_function(
        "window.tokenChanges.filter((c) => c.embed === 'live-b').length >= 2",
        timeout=2 * REFRESH_TIMEOUT_MS,
        polling=100,
    )
    assert len(stack.recorder.token_posts("live-a")) == posts_a
    page.evaluate("window.handles[1].stop()")
    assert page.evaluate("document.getElementById('slot').children.length") == 0


def test_a_429_storm_waits_for_retry_after_and_never_spins(stack: E2EStack, page: Page) -> None:
    open_page(page, stack.page_url(script="remote"))
    jwt = fresh_user(["acme", "globex"])
    keys = [
        (embed, tenant)
        for tenant in ("acme", "globex")
        for embed in ("sales-overview", "live-a", "live-b")
    ] + [("ops-dashboard", "acme")]
    start = len(stack.recorder.seen)
    results = page.evaluate(
        """async ({ broker, jwt, keys }) => {
      const b = new client.TokenBroker({ baseUrl: broker, getSessionToken: async () => jwt });
      return Promise.all(keys.map(([embed, tenant]) => b.token(embed, { tenant }).then(
        (g) => ({ ok: g.embed + "@" + g.tenant }),
        (e) => ({ error: [e.status, e.code, e.retryAfter] }))));
    }""",
        {"broker": stack.broker, "jwt": jwt, "keys": keys},
    )
    seen = [s for s in stack.recorder.seen[start:] if s.method == "POST"]
    limited = [s for s in seen if s.status == 429]
    assert limited, "the per-user limit never bit: no storm"
    assert all(s.retry_after and int(s.retry_after) >= 1 for s in limited)
    # Every key ends in a token: the client waited and retried instead of failing.
    assert sorted(r.get("ok", "") for r in results) == sorted(f"{e}@{t}" for e, t in keys)
    # Bounded: at most the first try and 3 retries per key ...
    assert len(seen) <= 4 * len(keys)
    # ... and each retry came no sooner than the Retry-After it was given.
    for embed, tenant in keys:
        mine = [s for s in seen if s.body == {"embed": embed, "tenant": tenant}]
        for earlier, later in itertools.pairwise(mine):
            assert earlier.status == 429
            assert later.at - earlier.at >= int(earlier.retry_after or 0) * 0.95


def test_a_strict_csp_page_works(stack: E2EStack, page: Page) -> None:
    open_page(page, stack.page_url(script="self", csp="strict"))
    # The policy is in force: an inline script is refused on this page ...
    refused = page.evaluate(
        """() => new Promise((resolve) => {
          document.addEventListener("securitypolicyviolation",
            (e) => resolve(e.violatedDirective), { once: true });
          const inline = document.createElement("script");
          inline.textContent = "window.inlineRan = true";
          document.head.append(inline);
        })"""
    )
    assert refused.startswith("script-src")
    assert page.evaluate("window.inlineRan") is None
    page.evaluate("window.violations = []")
    # ... and the client needs none of it.
    # (Databrain here: no element.script, whose origin script-src 'self' would refuse.)
    first = mount(page, stack, fresh_user(), "ops-dashboard", refresh_at=0.8)
    assert first["tag"] == "dbn-dashboard"
    assert first["token"]
    listed = page.evaluate(
        """async (jwt) => (await window.broker.embeds()).embeds.map((e) => e.name)""",
        fresh_user(),
    )
    assert "sales-overview" in listed
    assert page.evaluate("window.violations") == []
    page.evaluate("window.handles[0].stop()")


def test_element_script_is_loaded_once_and_defines_the_element(stack: E2EStack, page: Page) -> None:
    """The broker's element hint names a loader script (``script_url`` in the policy:
    here the sandbox's stand-in components); two mounts load it once."""
    script = f"{stack.sandbox}/_sandbox/components.js"
    open_page(page, stack.page_url(script="remote"))
    jwt = fresh_user()
    mount(page, stack, jwt, "sales-overview", refresh_at=0.8)
    mount(page, stack, jwt, "live-a", refresh_at=0.8)
    state = page.evaluate(
        """(src) => ({
          scripts: [...document.querySelectorAll('script')].filter((s) => s.src === src).length,
          defined: !!customElements.get('em-beddable'),
          upgraded: [...document.querySelectorAll('#slot > em-beddable')]
                      .map((e) => e.shadowRoot !== null),
        })""",
        script,
    )
    assert state == {"scripts": 1, "defined": True, "upgraded": [True, True]}
    page.evaluate("window.handles.forEach((h) => h.stop())")


def test_broker_serves_the_module_the_page_imported(stack: E2EStack) -> None:
    import httpx

    served = httpx.get(f"{stack.broker}/v1/client.js").content
    assert (
        served == (Path(__file__).resolve().parents[2] / "clients/js/token-broker.js").read_bytes()
    )
