// token-broker browser client: fetches embed tokens from the broker and keeps the
// vendors' web components alive by swapping in a fresh token before each one expires.
//
// One dependency-free ES module, no build step, no globals, no eval: safe under a
// strict Content-Security-Policy (script-src 'self'). The broker serves this file at
// GET /v1/client.js. Documentation: docs/client.md in the repository.
//
//   import { TokenBroker } from "/v1/client.js";
//   const broker = new TokenBroker({ baseUrl: "", getSessionToken: async () => jwt });
//   const handle = await broker.mount(container, "sales-overview", { tenant: "acme" });
//
// Why the rules below: a dashboard that dies when its token expires is the most common
// complaint about embedding SDKs; a client that retries in a tight loop is the second.
// So refreshes are scheduled from the token's own lifetime, retries wait for the
// broker's Retry-After (bounded, jittered), and nothing runs once a handle is stopped.

/** Default fraction of a token's lifetime after which it is refreshed. */
const DEFAULT_REFRESH_AT = 0.8;
/** Retries of a 429 / 503 before the error is final. */
const MAX_RETRIES = 3;
/** Longest wait the client honours from a Retry-After header, in seconds. */
const MAX_RETRY_AFTER_SECONDS = 60;
/** Wait before a retry when the broker gave no Retry-After, doubled per attempt (ms). */
const DEFAULT_BACKOFF_MS = 1000;
/** Shortest wait before any retry (a Retry-After of 0 is not a licence to spin), ms. */
const MIN_RETRY_DELAY_MS = 250;
/** Up to this fraction is added to each retry wait, so clients spread out. */
const JITTER = 0.25;
/** Shortest interval between two refreshes of one token, ms. */
const MIN_REFRESH_DELAY_MS = 1000;
/** After a failed background refresh: next try at a third of the time left, within these. */
const REFRESH_RETRY_MIN_MS = 2000;
const REFRESH_RETRY_MAX_MS = 30000;

const RETRY_STATUSES = new Set([429, 503]);
/** Statuses after which a failed background refresh is tried again later. */
const TRANSIENT_STATUSES = new Set([0, 429, 500, 502, 503, 504]);

/**
 * An error answered by the broker (or a network failure, status 0).
 * `code` is the broker's stable error code (docs/api.md); branch on it, show `detail`.
 */
export class TokenBrokerError extends Error {
  constructor({ status, code, detail, requestId = null, retryAfter = null, title = null, cause }) {
    super(detail || title || code, cause === undefined ? undefined : { cause });
    this.name = "TokenBrokerError";
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.title = title;
    this.requestId = requestId;
    this.retryAfter = retryAfter;
  }
}

// CustomEvent is global in browsers and Node 19+; Node 18 needs the stand-in.
const DetailEvent =
  globalThis.CustomEvent ||
  class DetailEvent extends Event {
    constructor(type, init = {}) {
      super(type);
      this.detail = init.detail === undefined ? null : init.detail;
    }
  };

const realClock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (id) => globalThis.clearTimeout(id),
};

function abortError() {
  return new DOMException("stopped", "AbortError");
}

function isAbort(error) {
  return error !== null && typeof error === "object" && error.name === "AbortError";
}

/** Seconds from a Retry-After header (delta-seconds or an HTTP date), or null. */
function parseRetryAfter(value, nowMs) {
  if (value === null || value === undefined || value === "") return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text);
  const date = Date.parse(text);
  if (Number.isNaN(date)) return null;
  return Math.max(0, Math.ceil((date - nowMs) / 1000));
}

function joinUrl(baseUrl, path) {
  return String(baseUrl).replace(/\/+$/, "") + path;
}

/** Tenant-qualified cache key of a grant. */
function grantKey(embed, tenant) {
  return JSON.stringify([embed, tenant === undefined ? null : tenant]);
}

// Scripts load once per document, whichever broker instance asked first.
const loadedScripts = new WeakMap();

export class TokenBroker extends EventTarget {
  /**
   * @param {object} options
   * @param {string} [options.baseUrl] where /v1/... is reachable: "" for the page's
   *   origin, "/analytics" behind a same-origin proxy, or a full URL.
   * @param {() => Promise<string>|string} [options.getSessionToken] the user's session
   *   JWT (Bearer mode); omit it to send the session cookie instead (cookie mode).
   * @param {RequestCredentials} [options.credentials] fetch's credentials option;
   *   "include" sends the cookie to a broker on another origin.
   * @param {number} [options.refreshAt] fraction of the lifetime after which a token
   *   is refreshed (0 < refreshAt < 1; default 0.8).
   * @param {typeof fetch} [options.fetch] the fetch to use (default: the global one).
   * @param {{now(): number, setTimeout: Function, clearTimeout: Function}} [options.clock]
   * @param {() => number} [options.random] jitter source in [0, 1).
   * @param {Document} [options.document] where mount() creates elements and scripts.
   */
  constructor(options = {}) {
    super();
    const refreshAt = options.refreshAt === undefined ? DEFAULT_REFRESH_AT : options.refreshAt;
    if (!(typeof refreshAt === "number" && refreshAt > 0 && refreshAt < 1)) {
      throw new RangeError("refreshAt must be a number between 0 and 1 (exclusive)");
    }
    if (options.getSessionToken !== undefined && typeof options.getSessionToken !== "function") {
      throw new TypeError("getSessionToken must be a function returning the session JWT");
    }
    this.baseUrl = options.baseUrl === undefined ? "" : String(options.baseUrl);
    this.refreshAt = refreshAt;
    this._getSessionToken = options.getSessionToken;
    this._credentials = options.credentials;
    const fetchImpl = options.fetch || globalThis.fetch;
    if (typeof fetchImpl !== "function") throw new TypeError("no fetch available");
    this._fetch = (...args) => fetchImpl.apply(globalThis, args);
    this._clock = options.clock || realClock;
    this._random = options.random || Math.random;
    this._document = options.document;
    this._grants = new Map(); // key -> {grant, refreshAtMs, expiresAtMs}
    this._inflight = new Map(); // key -> {promise, controller, holders}
  }

  /**
   * The POST /v1/tokens body for an embed. Reused until its refresh point; concurrent
   * calls for the same (embed, tenant) share one request.
   * @param {string} embed
   * @param {{tenant?: string, signal?: AbortSignal}} [options]
   */
  async token(embed, options = {}) {
    const { tenant, signal } = options;
    if (typeof embed !== "string" || embed === "") {
      throw new TypeError("token(embed): embed must be a non-empty string");
    }
    return (await this._entry(embed, tenant, signal)).grant;
  }

  /**
   * GET /v1/embeds: the embeds this user may request for the tenant.
   * @param {{tenant?: string, signal?: AbortSignal}} [options]
   */
  async embeds(options = {}) {
    const { tenant, signal } = options;
    const query = tenant === undefined ? "" : `?tenant=${encodeURIComponent(tenant)}`;
    return this._request("GET", `/v1/embeds${query}`, undefined, signal);
  }

  /**
   * Render an embed into `container` and keep its token fresh until `stop()`.
   * @param {Element} container
   * @param {string} embed
   * @param {{tenant?: string}} [options]
   * @returns {Promise<{element: Element, stop(): void}>}
   */
  async mount(container, embed, options = {}) {
    const { tenant } = options;
    if (!container || typeof container.appendChild !== "function") {
      throw new TypeError("mount(container, ...): container must be a DOM element");
    }
    const doc = container.ownerDocument || this._document || globalThis.document;
    const controller = new AbortController();
    const first = await this._entry(embed, tenant, controller.signal);
    const described = first.grant.element || {};
    if (described.script) await loadScript(doc, described.script);
    let element;
    if (described.tag) {
      element = doc.createElement(described.tag);
      applyAttributes(element, described.attributes);
      element.setAttribute("token", first.grant.token);
    } else if (described.iframe) {
      element = doc.createElement("iframe");
      element.setAttribute("src", described.iframe);
      element.setAttribute("title", embed);
    } else {
      throw new TokenBrokerError({
        status: 200,
        code: "unsupported_element",
        detail:
          `embed '${embed}' is rendered by an SDK (${described.sdk || "unknown"}), ` +
          "not a web component: pass broker.token() to the SDK's token callback instead",
      });
    }
    container.appendChild(element);
    const mounted = new Mounted(this, element, embed, tenant, controller);
    // A signed iframe URL cannot be swapped without reloading the frame: no refresh.
    if (described.tag) mounted.schedule(first);
    this._emitToken(first.grant, false); // listeners see the handle's next refresh
    return mounted.handle;
  }

  // --- internals ----------------------------------------------------------------------

  /** The cached grant until its refresh point, else a fresh one. */
  _entry(embed, tenant, signal) {
    const entry = this._grants.get(grantKey(embed, tenant));
    if (entry && this._clock.now() < entry.refreshAtMs) return Promise.resolve(entry);
    return this._fresh(embed, tenant, signal);
  }

  /** A grant newer than the cached one: joins a request in flight or starts one. */
  _fresh(embed, tenant, signal) {
    const key = grantKey(embed, tenant);
    let flight = this._inflight.get(key);
    if (!flight) {
      const controller = new AbortController();
      const body = tenant === undefined ? { embed } : { embed, tenant };
      flight = { controller, holders: 0, promise: null };
      flight.promise = this._request("POST", "/v1/tokens", body, controller.signal).then(
        (grant) => {
          const now = this._clock.now();
          const lifetimeMs = lifetimeOf(grant, now) * 1000;
          const entry = {
            grant,
            expiresAtMs: now + lifetimeMs,
            refreshAtMs: now + Math.max(MIN_REFRESH_DELAY_MS, lifetimeMs * this.refreshAt),
          };
          this._grants.set(key, entry);
          return entry;
        },
      );
      const forget = () => {
        if (this._inflight.get(key) === flight) this._inflight.delete(key);
      };
      flight.promise.then(forget, forget);
      this._inflight.set(key, flight);
    }
    return joinFlight(flight, signal);
  }

  /** One API call with the retry rules: 429/503 wait, 401 once through getSessionToken. */
  async _request(method, path, body, signal) {
    let sessionRetried = false;
    let retries = 0;
    for (;;) {
      if (signal && signal.aborted) throw abortError();
      let failure;
      try {
        return await this._send(method, path, body, signal, sessionRetried);
      } catch (error) {
        if (isAbort(error) || !(error instanceof TokenBrokerError)) throw error;
        failure = error;
      }
      if (failure.status === 401 && this._getSessionToken && !sessionRetried) {
        sessionRetried = true;
        continue;
      }
      if (!RETRY_STATUSES.has(failure.status) || retries >= MAX_RETRIES) throw failure;
      const delay = this._retryDelay(failure, retries);
      retries += 1;
      await sleep(this._clock, delay, signal);
    }
  }

  _retryDelay(failure, attempt) {
    const base =
      failure.retryAfter === null || failure.retryAfter === undefined
        ? DEFAULT_BACKOFF_MS * 2 ** attempt
        : Math.min(failure.retryAfter, MAX_RETRY_AFTER_SECONDS) * 1000;
    const floor = Math.max(base, MIN_RETRY_DELAY_MS);
    return floor + floor * JITTER * this._random();
  }

  async _send(method, path, body, signal, sessionRetry) {
    // Content-Type on every call, GET included: with a session cookie the broker
    // requires it (a cross-site form cannot send it without a preflight).
    const headers = { Accept: "application/json", "Content-Type": "application/json" };
    if (this._getSessionToken) {
      let jwt;
      try {
        jwt = await this._getSessionToken({ retry: sessionRetry });
      } catch (error) {
        throw new TokenBrokerError({
          status: 401,
          code: "unauthenticated",
          detail: `getSessionToken() failed: ${error && error.message ? error.message : error}`,
          cause: error,
        });
      }
      if (typeof jwt !== "string" || jwt === "") {
        throw new TokenBrokerError({
          status: 401,
          code: "unauthenticated",
          detail: "getSessionToken() returned no session token",
        });
      }
      headers.Authorization = `Bearer ${jwt}`;
    }
    const init = { method, headers, signal };
    if (body !== undefined) init.body = JSON.stringify(body);
    if (this._credentials !== undefined) init.credentials = this._credentials;
    let response;
    try {
      response = await this._fetch(joinUrl(this.baseUrl, path), init);
    } catch (error) {
      if (isAbort(error)) throw error;
      throw new TokenBrokerError({
        status: 0,
        code: "network_error",
        detail: "the broker could not be reached (network error or CORS refusal)",
        cause: error,
      });
    }
    if (!response.ok) throw await errorFrom(response, this._clock.now());
    try {
      return await response.json();
    } catch (error) {
      if (isAbort(error)) throw error;
      // Typically an SPA fallback answering index.html: the proxy does not reach the broker.
      throw new TokenBrokerError({
        status: response.status,
        code: "bad_response",
        detail: `${joinUrl(this.baseUrl, path)} answered ${response.status} without JSON: is baseUrl the broker (or a proxy to it)?`,
        requestId: response.headers ? response.headers.get("X-Request-ID") : null,
        cause: error,
      });
    }
  }

  _emitToken(grant, refreshed) {
    const detail = {
      embed: grant.embed,
      tenant: grant.tenant,
      expires_at: grant.expires_at,
      refreshed,
    };
    this.dispatchEvent(new DetailEvent("token", { detail }));
  }

  _emitError(error) {
    this.dispatchEvent(new DetailEvent("error", { detail: error }));
  }
}

/** One mounted element and its refresh timer. */
class Mounted {
  constructor(broker, element, embed, tenant, controller) {
    this.broker = broker;
    this.element = element;
    this.embed = embed;
    this.tenant = tenant;
    this.controller = controller;
    this.timer = null;
    this.stopped = false;
    this.expiresAtMs = 0;
    this.nextRefreshMs = null;
    const self = this;
    this.handle = {
      element,
      stop: () => this.stop(),
      /** When the next refresh is due (clock ms), or null when none is scheduled. */
      get nextRefresh() {
        return self.nextRefreshMs;
      },
      /** When the element's current token expires (clock ms). */
      get expiresAt() {
        return self.expiresAtMs;
      },
    };
  }

  schedule(entry) {
    this.token = entry.grant.token;
    this.expiresAtMs = entry.expiresAtMs;
    this.at(entry.refreshAtMs);
  }

  at(whenMs) {
    if (this.stopped) return;
    const clock = this.broker._clock;
    this.nextRefreshMs = whenMs;
    this.timer = clock.setTimeout(() => this.refresh(), Math.max(0, whenMs - clock.now()));
  }

  async refresh() {
    this.timer = null;
    if (this.stopped) return;
    if (this.element.isConnected === false) {
      this.stop(); // removed by the page: nothing keeps running for it
      return;
    }
    const broker = this.broker;
    let entry;
    try {
      const signal = this.controller.signal;
      entry = await broker._entry(this.embed, this.tenant, signal);
      // Another mount of the same embed may have refreshed it already; if not (or a
      // timer fired a millisecond early), this is the token we hold: ask for a new one.
      if (entry.grant.token === this.token) {
        entry = await broker._fresh(this.embed, this.tenant, signal);
      }
    } catch (error) {
      if (this.stopped || isAbort(error)) return;
      broker._emitError(error);
      const now = broker._clock.now();
      // Keep the current token while it is valid, and try again before it expires;
      // a refusal (400/401/403) will not change by asking again.
      if (TRANSIENT_STATUSES.has(error.status) && now < this.expiresAtMs) {
        const wait = Math.min(
          REFRESH_RETRY_MAX_MS,
          Math.max(REFRESH_RETRY_MIN_MS, (this.expiresAtMs - now) / 3),
        );
        this.at(now + wait);
      } else {
        this.nextRefreshMs = null;
      }
      return;
    }
    if (this.stopped) return;
    const described = entry.grant.element || {};
    applyAttributes(this.element, described.attributes);
    this.token = entry.grant.token;
    this.element.setAttribute("token", entry.grant.token);
    this.schedule(entry);
    broker._emitToken(entry.grant, true);
  }

  stop() {
    if (this.stopped) return;
    this.stopped = true;
    this.nextRefreshMs = null;
    if (this.timer !== null) this.broker._clock.clearTimeout(this.timer);
    this.timer = null;
    this.controller.abort();
    if (typeof this.element.remove === "function") this.element.remove();
  }
}

/**
 * Wait for a shared request. Callers with a signal leave on abort; the request itself
 * is aborted once every caller has left (a token() call without a signal stays).
 */
function joinFlight(flight, signal) {
  if (!signal) {
    flight.holders += 1; // never leaves: the request runs to its end
    return flight.promise;
  }
  flight.holders += 1;
  let left = false;
  const leave = () => {
    if (left) return;
    left = true;
    flight.holders -= 1;
    if (flight.holders === 0) flight.controller.abort();
  };
  if (signal.aborted) {
    leave();
    return Promise.reject(abortError());
  }
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      leave();
      reject(abortError());
    };
    signal.addEventListener("abort", onAbort, { once: true });
    flight.promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        left = true;
        resolve(value);
      },
      (error) => {
        signal.removeEventListener("abort", onAbort);
        left = true;
        reject(error);
      },
    );
  });
}

/** Whole seconds the grant is valid from now (expires_in; else from expires_at). */
function lifetimeOf(grant, nowMs) {
  if (typeof grant.expires_in === "number" && Number.isFinite(grant.expires_in)) {
    return Math.max(0, grant.expires_in);
  }
  const at = Date.parse(grant.expires_at);
  return Number.isNaN(at) ? 0 : Math.max(0, (at - nowMs) / 1000);
}

function applyAttributes(element, attributes) {
  if (!attributes) return;
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "token") continue; // only the broker's token field sets it
    if (element.getAttribute(name) !== String(value)) element.setAttribute(name, String(value));
  }
}

function sleep(clock, ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) {
      reject(abortError());
      return;
    }
    const onAbort = () => {
      clock.clearTimeout(timer);
      reject(abortError());
    };
    const timer = clock.setTimeout(() => {
      if (signal) signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    if (signal) signal.addEventListener("abort", onAbort, { once: true });
  });
}

async function errorFrom(response, nowMs) {
  let problem = {};
  try {
    const parsed = await response.json();
    if (parsed && typeof parsed === "object") problem = parsed;
  } catch {
    // not JSON (a proxy's HTML error page): the status says what we know
  }
  const header = (name) => (response.headers ? response.headers.get(name) : null);
  return new TokenBrokerError({
    status: response.status,
    code: typeof problem.code === "string" ? problem.code : `http_${response.status}`,
    detail:
      typeof problem.detail === "string"
        ? problem.detail
        : `the broker answered ${response.status} ${response.statusText || ""}`.trim(),
    title: typeof problem.title === "string" ? problem.title : null,
    requestId:
      typeof problem.request_id === "string" ? problem.request_id : header("X-Request-ID"),
    retryAfter: parseRetryAfter(header("Retry-After"), nowMs),
  });
}

function loadScript(doc, url) {
  let scripts = loadedScripts.get(doc);
  if (!scripts) {
    scripts = new Map();
    loadedScripts.set(doc, scripts);
  }
  let loading = scripts.get(url);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = doc.createElement("script");
      script.type = "module";
      script.src = url;
      script.addEventListener("load", () => resolve(), { once: true });
      script.addEventListener(
        "error",
        () => {
          scripts.delete(url); // a later mount may try again
          reject(
            new TokenBrokerError({
              status: 0,
              code: "script_load_failed",
              detail: `the vendor's component script did not load: ${url}`,
            }),
          );
        },
        { once: true },
      );
      (doc.head || doc.documentElement).appendChild(script);
    });
    scripts.set(url, loading);
  }
  return loading;
}
