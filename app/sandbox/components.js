// Stand-in web components for the sandbox vendors, under the real tag names:
// <em-beddable token base-url>, <dbn-dashboard token dashboard-id>, <dbn-metric token metric-id>,
// and a stand-in for Superset's SDK: embedDashboard({id, supersetDomain, mountPoint,
// fetchGuestToken}) as @superset-ui/embedded-sdk exports it, rendering <superset-dashboard>.
//
// They render no charts. They show what a person needs to see that the broker works:
// the token's decoded claims, the request the (sandbox) vendor received when it issued
// this token (the security context, from GET /_sandbox/tokens/{token}), how many
// tokens this same element has been given, and a countdown to the next refresh (the
// page may set data-refresh-at, in epoch milliseconds) and to the token's expiry.
//
// Served by the sandbox at /_sandbox/components.js; no inline script or style, so a
// page with a strict Content-Security-Policy can load it.

const SANDBOX = new URL(import.meta.url).origin;

const CSS = `
:host { display: block; font: 13px/1.45 system-ui, sans-serif; color: #1d2733; }
.card { border: 1px solid #c9d3de; border-radius: 8px; padding: 12px 14px; background: #fbfcfe; }
.head { display: flex; justify-content: space-between; align-items: baseline; gap: 8px; }
.tag { font: 600 13px ui-monospace, monospace; color: #3a4a5c; }
.badge { font-size: 11px; padding: 1px 8px; border-radius: 10px; background: #e4ecf5; }
.badge.embeddable { background: #e3f1e6; color: #1f6b34; }
.badge.databrain { background: #ece6fb; color: #4b2c9b; }
.badge.superset { background: #fdeee0; color: #8a4b0f; }
.timers { display: flex; gap: 18px; margin: 8px 0; }
.timer b { font: 600 20px ui-monospace, monospace; }
.timer.refresh b { color: #0b62c4; }
.expired b { color: #b3261e; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 10px; margin: 6px 0; }
dt { color: #5b6b7d; }
dd { margin: 0; font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
h4 { margin: 10px 0 4px; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #5b6b7d; }
pre { margin: 0; padding: 8px; background: #f0f3f7; border-radius: 6px; font-size: 12px;
      white-space: pre-wrap; overflow-wrap: anywhere; max-height: 220px; overflow: auto; }
`;

let sheet = null;
try {
  sheet = new CSSStyleSheet();
  sheet.replaceSync(CSS);
} catch {
  sheet = null; // an old browser: unstyled, still readable
}

/** The payload of a JWT, or null when the token is opaque (Databrain's are UUIDs). */
export function decodeJwt(token) {
  const parts = String(token).split(".");
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

function seconds(ms) {
  if (ms === null || Number.isNaN(ms)) return "–";
  return `${Math.max(0, Math.round(ms / 1000))} s`;
}

function node(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  for (const child of children) element.append(child);
  return element;
}

class StandIn extends HTMLElement {
  static vendor = "";
  static idAttribute = "";

  static get observedAttributes() {
    return ["token", this.idAttribute, "data-refresh-at"];
  }

  constructor() {
    super();
    this.attachShadow({ mode: "open" });
    if (sheet) this.shadowRoot.adoptedStyleSheets = [sheet];
    this.tokensSeen = 0;
    this.claims = null;
    this.received = null; // the sandbox's record of the request for the current token
    this.timer = null;
  }

  connectedCallback() {
    this.render();
    if (this.timer === null) this.timer = setInterval(() => this.tick(), 1000);
  }

  disconnectedCallback() {
    clearInterval(this.timer);
    this.timer = null;
  }

  attributeChangedCallback(name, previous, value) {
    if (name === "token" && value && value !== previous) {
      this.tokensSeen += 1;
      this.claims = decodeJwt(value);
      this.received = null;
      this.lookup(value);
    }
    this.render();
  }

  async lookup(token) {
    try {
      const response = await fetch(`${SANDBOX}/_sandbox/tokens/${encodeURIComponent(token)}`);
      if (!response.ok) return;
      const { request } = await response.json();
      if (this.getAttribute("token") === token) {
        this.received = request;
        this.render();
      }
    } catch {
      // the sandbox is gone; the card shows what it knows
    }
  }

  /** The token's expiry in epoch ms, from its claims or from what the vendor was asked. */
  expiresAt() {
    if (this.claims && typeof this.claims.exp === "number") return this.claims.exp * 1000;
    return null;
  }

  securityContext() {
    return this.received ? this.received.body : null;
  }

  claimsText() {
    return this.claims ? JSON.stringify(this.claims, null, 2) : "(none)";
  }

  tick() {
    const refresh = this.shadowRoot.querySelector("[data-field=refresh]");
    const expiry = this.shadowRoot.querySelector("[data-field=expiry]");
    if (!refresh || !expiry) return;
    const now = Date.now();
    const refreshAt = Number(this.getAttribute("data-refresh-at"));
    refresh.textContent = refreshAt ? seconds(refreshAt - now) : "–";
    const expiresAt = this.expiresAt();
    expiry.textContent = expiresAt === null ? "–" : seconds(expiresAt - now);
    expiry.parentElement.classList.toggle("expired", expiresAt !== null && expiresAt <= now);
  }

  render() {
    const ctor = this.constructor;
    const token = this.getAttribute("token") || "";
    const context = this.securityContext();
    const card = node(
      "div",
      { class: "card", part: "card" },
      node(
        "div",
        { class: "head" },
        node("span", { class: "tag" }, `<${this.localName}>`),
        node("span", { class: `badge ${ctor.vendor}` }, `${ctor.vendor} stand-in (sandbox)`),
      ),
      node(
        "div",
        { class: "timers" },
        node("span", { class: "timer refresh" }, "next refresh in ", node("b", { "data-field": "refresh" }, "–")),
        node("span", { class: "timer" }, "token expires in ", node("b", { "data-field": "expiry" }, "–")),
      ),
      node(
        "dl",
        {},
        node("dt", {}, ctor.idAttribute),
        node("dd", { "data-field": "id" }, this.getAttribute(ctor.idAttribute) || "–"),
        node("dt", {}, "token"),
        node("dd", { "data-field": "token" }, token ? `${token.slice(0, 18)}… (${token.length} chars)` : "–"),
        node("dt", {}, "tokens received"),
        node("dd", { "data-field": "tokens-seen" }, String(this.tokensSeen)),
      ),
      node("h4", {}, "Token claims (decoded)"),
      node("pre", { "data-field": "claims" }, this.claimsText()),
      node("h4", {}, "Security context the vendor received"),
      node(
        "pre",
        { "data-field": "context" },
        context ? JSON.stringify(context, null, 2) : token ? "(asking the sandbox…)" : "(no token yet)",
      ),
    );
    this.shadowRoot.replaceChildren(card);
    this.tick();
  }
}

class EmBeddable extends StandIn {
  static vendor = "embeddable";
  static idAttribute = "base-url";

  securityContext() {
    if (!this.received || !this.received.body) return null;
    const { user, environment, securityContext, roles } = this.received.body;
    return { user, environment, roles, securityContext };
  }
}

class DatabrainStandIn extends StandIn {
  static vendor = "databrain";

  claimsText() {
    // Databrain guest tokens are opaque UUIDs; the vendor keeps what they grant.
    const expiry = this.expiresAt();
    return JSON.stringify(
      {
        opaque: "a Databrain guest token is a UUID; its grant lives at the vendor",
        expires_at: expiry === null ? null : new Date(expiry).toISOString(),
      },
      null,
      2,
    );
  }

  expiresAt() {
    const body = this.received && this.received.body;
    if (!body || typeof body.expiryTime !== "number") return null;
    return this.received.received_at * 1000 + body.expiryTime;
  }

  securityContext() {
    if (!this.received || !this.received.body) return null;
    const { clientId, dataAppName, datasourceName, params, permissions } = this.received.body;
    return { clientId, dataAppName, datasourceName, params, permissions };
  }
}

class DbnDashboard extends DatabrainStandIn {
  static idAttribute = "dashboard-id";
}

class DbnMetric extends DatabrainStandIn {
  static idAttribute = "metric-id";
}

class SupersetDashboard extends StandIn {
  static vendor = "superset";
  static idAttribute = "dashboard-id";

  securityContext() {
    if (!this.received || !this.received.body) return null;
    const { user, resources, rls } = this.received.body;
    return { user, resources, rls };
  }
}

for (const [tag, ctor] of [
  ["em-beddable", EmBeddable],
  ["dbn-dashboard", DbnDashboard],
  ["dbn-metric", DbnMetric],
  ["superset-dashboard", SupersetDashboard],
]) {
  if (!customElements.get(tag)) customElements.define(tag, ctor);
}

const REFRESH_EARLY_MS = 10_000;

/**
 * A stand-in for @superset-ui/embedded-sdk's embedDashboard(): the same options, but it
 * renders a <superset-dashboard> card instead of Superset's iframe. Like the SDK, it
 * asks fetchGuestToken() for a token, and again before that token expires.
 */
export async function embedDashboard({ id, supersetDomain, mountPoint, fetchGuestToken }) {
  const element = document.createElement("superset-dashboard");
  element.setAttribute("dashboard-id", id);
  element.setAttribute("data-superset-domain", supersetDomain);
  mountPoint.replaceChildren(element);
  let timer = null;
  let stopped = false;
  async function load() {
    const token = await fetchGuestToken();
    if (stopped) return;
    element.setAttribute("token", token);
    const claims = decodeJwt(token);
    const expiresAt = claims && typeof claims.exp === "number" ? claims.exp * 1000 : Date.now() + 60_000;
    const wait = Math.max(1000, expiresAt - Date.now() - REFRESH_EARLY_MS);
    element.setAttribute("data-refresh-at", String(Date.now() + wait));
    timer = setTimeout(() => load().catch(() => {}), wait);
  }
  await load();
  return {
    unmount() {
      stopped = true;
      clearTimeout(timer);
      element.remove();
    },
  };
}
