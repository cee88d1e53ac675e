// Unit tests of clients/js/token-broker.js with a fake fetch, clock and DOM.
// Run: node --test tests/clients/   (tests/clients/test_node.py runs it under pytest)

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { TokenBroker, TokenBrokerError } from "../../clients/js/token-broker.js";
import { FakeClock, FakeDocument, fakeFetch, flush, grant, json, problem } from "./fakes.mjs";

function setup({ respond, random = () => 0, ...options } = {}) {
  const clock = new FakeClock();
  const { fetch, calls } = fakeFetch(clock, respond || ((call) => json(200, grant(call.body?.embed, call.body?.tenant))));
  const sessions = [];
  const broker = new TokenBroker({
    baseUrl: "/analytics/",
    getSessionToken: async (info) => {
      sessions.push(info);
      return `jwt-${sessions.length}`;
    },
    fetch,
    clock,
    random,
    ...options,
  });
  const events = { token: [], error: [] };
  broker.addEventListener("token", (e) => events.token.push(e.detail));
  broker.addEventListener("error", (e) => events.error.push(e.detail));
  return { broker, clock, calls, sessions, events };
}

/** Settle a promise that is waiting on the fake clock. */
async function settle(promise, clock, ms = 0) {
  let outcome;
  promise.then(
    (value) => (outcome = { value }),
    (error) => (outcome = { error }),
  );
  await clock.advance(ms);
  assert.ok(outcome, "the promise did not settle");
  return outcome;
}

describe("token()", () => {
  it("posts the embed and tenant with the Bearer session to baseUrl/v1/tokens", async () => {
    const { broker, calls } = setup();
    const g = await broker.token("sales-overview", { tenant: "acme" });
    assert.equal(g.embed, "sales-overview");
    assert.equal(calls.length, 1);
    assert.equal(calls[0].url, "/analytics/v1/tokens");
    assert.equal(calls[0].init.method, "POST");
    assert.deepEqual(calls[0].body, { embed: "sales-overview", tenant: "acme" });
    assert.equal(calls[0].init.headers.Authorization, "Bearer jwt-1");
    assert.equal(calls[0].init.headers["Content-Type"], "application/json");
    assert.equal(calls[0].init.credentials, undefined);
  });

  it("omits tenant when none is given", async () => {
    const { broker, calls } = setup();
    await broker.token("sales-overview");
    assert.deepEqual(calls[0].body, { embed: "sales-overview" });
  });

  it("reuses a grant until its refresh point, then fetches a new one", async () => {
    const { broker, clock, calls } = setup(); // expires_in 100 s, refreshAt 0.8
    const first = await broker.token("sales-overview", { tenant: "acme" });
    await clock.advance(79_999);
    assert.equal(await broker.token("sales-overview", { tenant: "acme" }), first);
    assert.equal(calls.length, 1);
    await clock.advance(1);
    const second = await broker.token("sales-overview", { tenant: "acme" });
    assert.notEqual(second.token, first.token);
    assert.equal(calls.length, 2);
  });

  it("honours a custom refreshAt", async () => {
    const { broker, clock, calls } = setup({ refreshAt: 0.5 });
    await broker.token("sales-overview");
    await clock.advance(49_999);
    await broker.token("sales-overview");
    assert.equal(calls.length, 1);
    await clock.advance(1);
    await broker.token("sales-overview");
    assert.equal(calls.length, 2);
  });

  it("shares one request among concurrent callers of the same embed and tenant", async () => {
    const { broker, calls } = setup();
    const results = await Promise.all([
      broker.token("sales-overview", { tenant: "acme" }),
      broker.token("sales-overview", { tenant: "acme" }),
      broker.token("sales-overview", { tenant: "acme" }),
    ]);
    assert.equal(calls.length, 1);
    assert.ok(results.every((g) => g === results[0]));
  });

  it("keeps tenants apart", async () => {
    const { broker, calls } = setup();
    const [a, b] = await Promise.all([
      broker.token("sales-overview", { tenant: "acme" }),
      broker.token("sales-overview", { tenant: "globex" }),
    ]);
    assert.equal(calls.length, 2);
    assert.equal(a.tenant, "acme");
    assert.equal(b.tenant, "globex");
  });

  it("rejects an invalid refreshAt and a missing embed", async () => {
    for (const refreshAt of [0, 1, -0.5, 2, "0.8", Number.NaN]) {
      assert.throws(() => new TokenBroker({ refreshAt, fetch: () => {} }), RangeError);
    }
    const { broker } = setup();
    await assert.rejects(broker.token(""), TypeError);
  });
});

describe("retries", () => {
  it("waits Retry-After (with jitter, never less) on 429, then succeeds", async () => {
    const { broker, clock, calls } = setup({
      random: () => 0.5,
      respond: (call, n) =>
        n === 1 ? problem(429, "rate_limited", { "Retry-After": "2" }) : json(200, grant()),
    });
    const pending = broker.token("sales-overview");
    await clock.advance(1999);
    assert.equal(calls.length, 1, "retried before Retry-After");
    await clock.advance(2250 - 1999); // 2 s + 25 % * 0.5 jitter
    assert.equal(calls.length, 2);
    assert.equal(calls[1].at - calls[0].at, 2250);
    assert.equal((await pending).embed, "sales-overview");
  });

  it("jitter spreads clients: the wait depends on random() within [Retry-After, +25 %]", async () => {
    const waits = [];
    for (const r of [0, 0.999]) {
      const { broker, clock, calls } = setup({
        random: () => r,
        respond: (call, n) =>
          n === 1 ? problem(503, "upstream_unavailable", { "Retry-After": "4" }) : json(200, grant()),
      });
      const pending = broker.token("x");
      await clock.advance(10_000);
      await pending;
      waits.push(calls[1].at - calls[0].at);
    }
    assert.equal(waits[0], 4000);
    assert.ok(waits[1] > 4900 && waits[1] <= 5000, `jittered wait ${waits[1]}`);
  });

  it("gives up after 3 retries with the broker's error, never in a tight loop", async () => {
    const { broker, clock, calls } = setup({
      respond: () => problem(503, "upstream_unavailable", { "Retry-After": "1", "X-Request-ID": "rid" }),
    });
    const { error } = await settle(broker.token("x"), clock, 60_000);
    assert.equal(calls.length, 4);
    for (let i = 1; i < calls.length; i += 1) assert.ok(calls[i].at - calls[i - 1].at >= 1000);
    assert.ok(error instanceof TokenBrokerError);
    assert.ok(error instanceof Error);
    assert.equal(error.name, "TokenBrokerError");
    assert.equal(error.status, 503);
    assert.equal(error.code, "upstream_unavailable");
    assert.equal(error.detail, "detail of upstream_unavailable");
    assert.equal(error.requestId, "req-upstream_unavailable");
    assert.equal(error.retryAfter, 1);
  });

  it("caps Retry-After at 60 s", async () => {
    const { broker, clock, calls } = setup({
      respond: (call, n) =>
        n === 1 ? problem(429, "rate_limited", { "Retry-After": "3600" }) : json(200, grant()),
    });
    const pending = broker.token("x");
    await clock.advance(60_000);
    assert.equal(calls.length, 2);
    await pending;
  });

  it("reads an HTTP-date Retry-After", async () => {
    const clock = new FakeClock();
    const at = new Date(clock.now() + 5000).toUTCString();
    const { fetch, calls } = fakeFetch(clock, (call) =>
      calls.length === 1 ? problem(429, "rate_limited", { "Retry-After": at }) : json(200, grant()),
    );
    const broker = new TokenBroker({ fetch, clock, random: () => 0 });
    const pending = broker.token("x");
    await clock.advance(4999);
    assert.equal(calls.length, 1);
    await clock.advance(1);
    assert.equal(calls.length, 2);
    await pending;
  });

  it("backs off 1 s, 2 s, 4 s when there is no Retry-After", async () => {
    const { broker, clock, calls } = setup({ respond: () => problem(503, "upstream_unavailable") });
    const { error } = await settle(broker.token("x"), clock, 60_000);
    assert.equal(error.retryAfter, null);
    assert.deepEqual(
      calls.slice(1).map((c, i) => c.at - calls[i].at),
      [1000, 2000, 4000],
    );
  });

  it("a Retry-After of 0 still waits a little", async () => {
    const { broker, clock, calls } = setup({ respond: () => problem(429, "rate_limited", { "Retry-After": "0" }) });
    await settle(broker.token("x"), clock, 10_000);
    assert.equal(calls.length, 4);
    for (let i = 1; i < calls.length; i += 1) assert.ok(calls[i].at - calls[i - 1].at >= 250);
  });

  for (const [status, code] of [
    [400, "invalid_request"],
    [403, "embed_not_allowed"],
    [403, "tenant_not_allowed"],
    [502, "upstream_rejected"],
    [504, "upstream_timeout"],
    [500, "internal_error"],
  ]) {
    it(`fails at once on ${status} ${code}`, async () => {
      const { broker, clock, calls } = setup({ respond: () => problem(status, code) });
      const { error } = await settle(broker.token("x"), clock, 60_000);
      assert.equal(calls.length, 1);
      assert.equal(error.status, status);
      assert.equal(error.code, code);
    });
  }

  it("on 401 asks getSessionToken again once and retries once", async () => {
    const { broker, calls, sessions } = setup({
      respond: (call, n) => (n === 1 ? problem(401, "session_expired") : json(200, grant())),
    });
    await broker.token("x");
    assert.equal(calls.length, 2);
    assert.deepEqual(sessions, [{ retry: false }, { retry: true }]);
    assert.equal(calls[0].init.headers.Authorization, "Bearer jwt-1");
    assert.equal(calls[1].init.headers.Authorization, "Bearer jwt-2");
  });

  it("a second 401 is final", async () => {
    const { broker, calls } = setup({ respond: () => problem(401, "invalid_session") });
    await assert.rejects(broker.token("x"), (e) => e.code === "invalid_session" && e.status === 401);
    assert.equal(calls.length, 2);
  });

  it("getSessionToken returning nothing is an unauthenticated error, not a request", async () => {
    const clock = new FakeClock();
    const { fetch, calls } = fakeFetch(clock, () => json(200, grant()));
    const broker = new TokenBroker({ fetch, clock, getSessionToken: async () => undefined });
    await assert.rejects(broker.token("x"), (e) => e.code === "unauthenticated");
    assert.equal(calls.length, 0);
  });

  it("a getSessionToken that throws is an unauthenticated TokenBrokerError", async () => {
    const clock = new FakeClock();
    const { fetch, calls } = fakeFetch(clock, () => json(200, grant()));
    const broker = new TokenBroker({
      fetch,
      clock,
      getSessionToken: async () => {
        throw new Error("not logged in");
      },
    });
    await assert.rejects(broker.token("x"), (e) => {
      assert.ok(e instanceof TokenBrokerError);
      assert.equal(e.code, "unauthenticated");
      assert.match(e.detail, /not logged in/);
      return true;
    });
    assert.equal(calls.length, 0);
  });

  it("a 200 that is not JSON (an SPA fallback page) says the proxy is wrong", async () => {
    const { broker } = setup({
      respond: () => new Response("<!doctype html><title>app</title>", { status: 200 }),
    });
    await assert.rejects(broker.token("x"), (e) => {
      assert.equal(e.code, "bad_response");
      assert.match(e.detail, /\/analytics\/v1\/tokens answered 200 without JSON/);
      return true;
    });
  });

  it("a network failure is status 0 network_error (no retry inside the call)", async () => {
    const { broker, calls } = setup({
      respond: () => {
        throw new TypeError("Failed to fetch");
      },
    });
    await assert.rejects(broker.token("x"), (e) => e.status === 0 && e.code === "network_error");
    assert.equal(calls.length, 1);
  });

  it("a non-JSON error page keeps the status and the X-Request-ID header", async () => {
    const { broker } = setup({
      respond: () =>
        new Response("<html>Bad Gateway</html>", {
          status: 502,
          statusText: "Bad Gateway",
          headers: { "Content-Type": "text/html", "X-Request-ID": "from-header" },
        }),
    });
    await assert.rejects(broker.token("x"), (e) => {
      assert.equal(e.code, "http_502");
      assert.equal(e.requestId, "from-header");
      assert.match(e.detail, /502/);
      return true;
    });
  });

  it("an aborted signal stops waiting for a retry, with no request after it", async () => {
    const { broker, clock, calls } = setup({ respond: () => problem(429, "rate_limited", { "Retry-After": "5" }) });
    const controller = new AbortController();
    const pending = broker.token("x", { signal: controller.signal });
    await clock.advance(1000);
    controller.abort();
    const { error } = await settle(pending, clock, 60_000);
    assert.equal(error.name, "AbortError");
    assert.equal(calls.length, 1);
    assert.equal(clock.timers.size, 0);
  });
});

describe("cookie mode", () => {
  it("sends no Authorization, passes credentials, and does not retry a 401", async () => {
    const clock = new FakeClock();
    const { fetch, calls } = fakeFetch(clock, () => problem(401, "unauthenticated"));
    const broker = new TokenBroker({ baseUrl: "https://broker.test", credentials: "include", fetch, clock });
    await assert.rejects(broker.token("x"), (e) => e.code === "unauthenticated");
    assert.equal(calls.length, 1);
    assert.equal(calls[0].url, "https://broker.test/v1/tokens");
    assert.equal(calls[0].init.credentials, "include");
    assert.equal(calls[0].init.headers.Authorization, undefined);
    assert.equal(calls[0].init.headers["Content-Type"], "application/json");
  });
});

describe("embeds()", () => {
  it("GETs /v1/embeds with the tenant", async () => {
    const body = { tenant: "acme", embeds: [{ name: "a", title: "A", provider: "embeddable" }] };
    const { broker, calls } = setup({ respond: () => json(200, body) });
    assert.deepEqual(await broker.embeds({ tenant: "a c/me" }), body);
    assert.equal(calls[0].url, "/analytics/v1/embeds?tenant=a%20c%2Fme");
    assert.equal(calls[0].init.method, "GET");
    assert.equal(calls[0].init.body, undefined);
    assert.equal(calls[0].init.headers["Content-Type"], "application/json"); // cookie mode needs it
    assert.equal(calls[0].init.headers.Authorization, "Bearer jwt-1");
  });
});

describe("mount()", () => {
  function mountSetup(options = {}) {
    const doc = new FakeDocument();
    const ctx = setup(options);
    return { ...ctx, doc, container: doc.body };
  }

  it("creates the element with its attributes and token, and emits a token event", async () => {
    const { broker, container, events } = mountSetup();
    const handle = await broker.mount(container, "sales-overview", { tenant: "acme" });
    const el = handle.element;
    assert.equal(el.tagName, "em-beddable");
    assert.equal(el.getAttribute("base-url"), "https://api.eu.test/");
    assert.match(el.getAttribute("token"), /^token-/);
    assert.deepEqual(container.children, [el]);
    assert.equal(events.token.length, 1);
    assert.equal(events.token[0].refreshed, false);
    assert.equal(events.token[0].embed, "sales-overview");
    assert.equal(events.token[0].tenant, "acme");
    assert.ok(events.token[0].expires_at);
  });

  it("replaces the token on the same element before it expires, again and again", async () => {
    const { broker, clock, calls, container, events } = mountSetup();
    const handle = await broker.mount(container, "sales-overview", { tenant: "acme" });
    const el = handle.element;
    const first = el.getAttribute("token");
    assert.equal(handle.nextRefresh, clock.now() + 80_000);
    await clock.advance(79_999);
    assert.equal(calls.length, 1);
    await clock.advance(1);
    assert.equal(calls.length, 2);
    assert.notEqual(el.getAttribute("token"), first);
    assert.equal(handle.element, el);
    assert.deepEqual(container.children, [el]);
    assert.deepEqual(events.token.map((d) => d.refreshed), [false, true]);
    await clock.advance(80_000);
    assert.equal(calls.length, 3);
    assert.equal(el.attributeLog.filter(([n]) => n === "token").length, 3);
    handle.stop();
  });

  it("loads element.script once per document, before creating the element", async () => {
    const element = { tag: "em-beddable", attributes: {}, script: "https://cdn.test/loader.js" };
    const { broker, container, doc } = mountSetup({ respond: () => json(200, grant("a", "acme", 100, element)) });
    const first = broker.mount(container, "a");
    const second = broker.mount(container, "b");
    await flush();
    const scripts = doc.scripts();
    assert.equal(scripts.length, 1);
    assert.equal(scripts[0].src, "https://cdn.test/loader.js");
    assert.equal(scripts[0].type, "module");
    assert.equal(container.children.length, 0, "element created before its script loaded");
    scripts[0].dispatch("load");
    await Promise.all([first, second]);
    assert.equal(container.children.length, 2);
    await broker.mount(container, "c");
    assert.equal(doc.scripts().length, 1);
  });

  it("a script that fails to load rejects mount with script_load_failed", async () => {
    const element = { tag: "em-beddable", attributes: {}, script: "https://cdn.test/broken.js" };
    const { broker, container, doc } = mountSetup({ respond: () => json(200, grant("a", "acme", 100, element)) });
    const pending = broker.mount(container, "a");
    await flush();
    doc.scripts()[0].dispatch("error");
    await assert.rejects(pending, (e) => e.code === "script_load_failed");
  });

  it("an SDK-rendered embed is refused with a clear error", async () => {
    const element = { sdk: "@superset-ui/embedded-sdk", options: { id: "x" } };
    const { broker, container } = mountSetup({ respond: () => json(200, grant("a", "acme", 100, element)) });
    await assert.rejects(broker.mount(container, "a"), (e) => e.code === "unsupported_element");
  });

  it("a failed refresh keeps the token, emits error, and tries again before expiry", async () => {
    let fail = false;
    const { broker, clock, calls, container, events } = mountSetup({
      respond: () => (fail ? problem(502, "upstream_rejected") : json(200, grant())),
    });
    const handle = await broker.mount(container, "sales-overview");
    const token = handle.element.getAttribute("token");
    fail = true;
    await clock.advance(80_000);
    assert.equal(calls.length, 2);
    assert.equal(handle.element.getAttribute("token"), token);
    assert.equal(events.error.length, 1);
    assert.ok(events.error[0] instanceof TokenBrokerError);
    assert.equal(events.error[0].code, "upstream_rejected");
    // 20 s left: next try after a third of it
    assert.equal(handle.nextRefresh, clock.now() + 20_000 / 3);
    fail = false;
    await clock.advance(20_000 / 3);
    assert.equal(calls.length, 3);
    assert.notEqual(handle.element.getAttribute("token"), token);
    assert.equal(events.token.at(-1).refreshed, true);
    handle.stop();
  });

  it("once the token has expired after failed refreshes, it stops and leaves the element", async () => {
    const { broker, clock, calls, container, events } = mountSetup({
      respond: (call, n) => (n === 1 ? json(200, grant()) : problem(503, "upstream_unavailable", { "Retry-After": "1" })),
    });
    const handle = await broker.mount(container, "sales-overview");
    const token = handle.element.getAttribute("token");
    await clock.advance(200_000);
    const made = calls.length;
    assert.ok(made > 2 && made < 30, `${made} requests`);
    // no refresh starts after expiry (100 s); the last one's retries may run past it
    assert.ok(calls.at(-1).at < calls[0].at + 100_000 + 4000, "a refresh after expiry");
    assert.ok(events.error.length >= 1);
    assert.equal(handle.element.getAttribute("token"), token);
    assert.deepEqual(container.children, [handle.element]);
    assert.equal(handle.nextRefresh, null);
    assert.equal(clock.timers.size, 0);
    await clock.advance(600_000);
    assert.equal(calls.length, made);
  });

  it("a refused refresh (403) is not asked again", async () => {
    const { broker, clock, calls, container, events } = mountSetup({
      respond: (call, n) => (n === 1 ? json(200, grant()) : problem(403, "embed_not_allowed")),
    });
    await broker.mount(container, "sales-overview");
    await clock.advance(600_000);
    assert.equal(calls.length, 2);
    assert.equal(events.error[0].code, "embed_not_allowed");
    assert.equal(clock.timers.size, 0);
  });

  it("stop() removes the element and leaves no timer and no request", async () => {
    const { broker, clock, calls, container } = mountSetup();
    const handle = await broker.mount(container, "sales-overview");
    handle.stop();
    handle.stop(); // idempotent
    assert.equal(container.children.length, 0);
    assert.equal(clock.timers.size, 0);
    await clock.advance(3_600_000);
    assert.equal(calls.length, 1);
  });

  it("stop() during a refresh's Retry-After wait makes no further request", async () => {
    const { broker, clock, calls, container, events } = mountSetup({
      respond: (call, n) => (n === 1 ? json(200, grant()) : problem(429, "rate_limited", { "Retry-After": "10" })),
    });
    const handle = await broker.mount(container, "sales-overview");
    await clock.advance(80_000 + 1000); // refresh sent, now waiting 10 s to retry
    assert.equal(calls.length, 2);
    handle.stop();
    await clock.advance(3_600_000);
    assert.equal(calls.length, 2);
    assert.equal(clock.timers.size, 0);
    assert.equal(events.error.length, 0, "a stop is not an error");
  });

  it("an element the page removed gets no more refreshes", async () => {
    const { broker, clock, calls, container } = mountSetup();
    const handle = await broker.mount(container, "sales-overview");
    handle.element.remove();
    await clock.advance(3_600_000);
    assert.equal(calls.length, 1);
    assert.equal(clock.timers.size, 0);
  });

  it("two mounts of one embed share each refresh", async () => {
    const { broker, clock, calls, container } = mountSetup();
    const a = await broker.mount(container, "sales-overview");
    const b = await broker.mount(container, "sales-overview");
    assert.equal(calls.length, 1);
    await clock.advance(80_000);
    assert.equal(calls.length, 2);
    assert.equal(a.element.getAttribute("token"), b.element.getAttribute("token"));
    a.stop();
    await clock.advance(80_000);
    assert.equal(calls.length, 3, "the other mount still refreshes");
    b.stop();
    assert.equal(clock.timers.size, 0);
  });

  it("a short token is not refreshed more often than once a second", async () => {
    const { broker, clock, calls, container } = mountSetup({
      respond: () => json(200, grant("x", "acme", 0)),
    });
    const handle = await broker.mount(container, "x");
    await clock.advance(10_000);
    assert.ok(calls.length <= 11, `${calls.length} requests in 10 s`);
    handle.stop();
  });
});
