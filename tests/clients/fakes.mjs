// Fakes for the client's unit tests: a manual clock, a scripted fetch and a tiny DOM.

/** Let every pending promise callback run. */
export async function flush() {
  for (let i = 0; i < 20; i += 1) await new Promise((resolve) => setImmediate(resolve));
}

export class FakeClock {
  constructor(start = 1_700_000_000_000) {
    this.t = start;
    this.timers = new Map();
    this.seq = 0;
    this.now = this.now.bind(this);
    this.setTimeout = this.setTimeout.bind(this);
    this.clearTimeout = this.clearTimeout.bind(this);
  }

  now() {
    return this.t;
  }

  setTimeout(callback, ms) {
    this.seq += 1;
    this.timers.set(this.seq, { at: this.t + Math.max(0, ms), callback });
    return this.seq;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  /** Move time forward by `ms`, running each timer at its due time, in order. */
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      await flush();
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (next === null || timer.at < next[1].at)) next = [id, timer];
      }
      if (next === null) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].callback();
    }
    this.t = end;
    await flush();
  }
}

export function json(status, body, headers = {}) {
  const type = status >= 400 ? "application/problem+json" : "application/json";
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": type, ...headers },
  });
}

export function problem(status, code, headers = {}, extra = {}) {
  return json(
    status,
    { type: `https://token-broker.dev/errors/${code}`, title: code, status, code,
      detail: `detail of ${code}`, request_id: `req-${code}`, ...extra },
    headers,
  );
}

let serial = 0;

export function grant(embed = "sales-overview", tenant = "acme", expiresIn = 100, element) {
  serial += 1;
  return {
    token: `token-${serial}`,
    provider: "embeddable",
    embed,
    tenant,
    expires_at: new Date(Date.now() + expiresIn * 1000).toISOString(),
    expires_in: expiresIn,
    element: element || { tag: "em-beddable", attributes: { "base-url": "https://api.eu.test/" } },
  };
}

/**
 * A fetch that answers from `respond(call)`; each call is recorded with its time.
 * `respond` may return a Response, a promise of one, or throw.
 */
export function fakeFetch(clock, respond) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    const call = { url, init, at: clock.now(), body: init.body ? JSON.parse(init.body) : undefined };
    calls.push(call);
    if (init.signal && init.signal.aborted) throw new DOMException("aborted", "AbortError");
    return respond(call, calls.length);
  };
  return { fetch, calls };
}

class FakeElement {
  constructor(tag, doc) {
    this.tagName = tag;
    this.ownerDocument = doc;
    this.attributes = new Map();
    this.attributeLog = [];
    this.children = [];
    this.parent = null;
    this.listeners = {};
  }

  setAttribute(name, value) {
    this.attributes.set(name, String(value));
    this.attributeLog.push([name, String(value)]);
  }

  getAttribute(name) {
    return this.attributes.has(name) ? this.attributes.get(name) : null;
  }

  appendChild(child) {
    child.parent = this;
    this.children.push(child);
    return child;
  }

  remove() {
    if (this.parent) this.parent.children = this.parent.children.filter((c) => c !== this);
    this.parent = null;
  }

  get isConnected() {
    let node = this;
    while (node.parent) node = node.parent;
    return node === this.ownerDocument.documentElement;
  }

  addEventListener(type, listener) {
    (this.listeners[type] ||= []).push(listener);
  }

  dispatch(type) {
    for (const listener of this.listeners[type] || []) listener();
  }
}

export class FakeDocument {
  constructor() {
    this.created = [];
    this.documentElement = new FakeElement("html", this);
    this.head = this.documentElement.appendChild(new FakeElement("head", this));
    this.body = this.documentElement.appendChild(new FakeElement("body", this));
  }

  createElement(tag) {
    const element = new FakeElement(tag, this);
    this.created.push(element);
    return element;
  }

  scripts() {
    return this.head.children.filter((child) => child.tagName === "script");
  }
}
