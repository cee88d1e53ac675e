// The demo page's script: nothing here that a real page would not do, except where the
// session JWT comes from (/demo/session mints one for the demo user; a real app has its own).
import { TokenBroker } from "/v1/client.js";

let session = null;

async function getSessionToken({ retry } = {}) {
  if (session === null || retry) {
    const response = await fetch("/demo/session", { cache: "no-store" });
    session = await response.json();
  }
  return session.token;
}

const broker = new TokenBroker({ baseUrl: "", getSessionToken });
const handles = new Map(); // embed name -> mount handle
const dashboards = new Map(); // embed name -> a Superset SDK dashboard (unmount())
const SANDBOX = document.body.dataset.sandbox;
const SDK_VENDORS = new Set(["superset", "preset"]); // element.sdk instead of a tag
let generation = 0;

function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  element.append(...children);
  return element;
}

function note(kind, text) {
  const list = document.getElementById("events");
  const time = new Date().toLocaleTimeString();
  list.prepend(el("li", { class: kind }, el("time", {}, time), " ", text));
  while (list.children.length > 40) list.lastElementChild.remove();
}

/** Tell each stand-in component when its next refresh is due (for its countdown). */
function syncCountdowns() {
  for (const handle of handles.values()) {
    if (handle.nextRefresh === null) handle.element.removeAttribute("data-refresh-at");
    else handle.element.setAttribute("data-refresh-at", String(handle.nextRefresh));
  }
}

broker.addEventListener("token", (event) => {
  const { embed, tenant, expires_at, refreshed } = event.detail;
  note("token", `${refreshed ? "refreshed" : "issued"} ${embed} for ${tenant} (expires ${expires_at})`);
  syncCountdowns();
});

broker.addEventListener("error", (event) => {
  const error = event.detail;
  note("error", `${error.code}: ${error.detail} (request ${error.requestId || "?"})`);
});

async function showTenant(tenant) {
  const mine = (generation += 1);
  for (const handle of handles.values()) handle.stop();
  handles.clear();
  for (const dashboard of dashboards.values()) dashboard.unmount();
  dashboards.clear();
  const main = document.getElementById("embeds");
  main.replaceChildren();
  main.dataset.tenant = tenant;
  let list;
  try {
    list = await broker.embeds({ tenant });
  } catch (error) {
    main.append(el("p", { class: "error" }, `${error.code}: ${error.detail}`));
    return;
  }
  await Promise.all(
    list.embeds.map(async (embed) => {
      const slot = el("div", { class: "slot" });
      main.append(
        el(
          "section",
          { class: "panel", "data-embed": embed.name },
          el("h2", {}, embed.title || embed.name, " ", el("small", {}, `${embed.name} · ${embed.provider}`)),
          slot,
        ),
      );
      try {
        if (SDK_VENDORS.has(embed.provider)) {
          const first = await broker.token(embed.name, { tenant });
          // Superset and Preset render through their SDK, which asks for guest tokens
          // itself. The sandbox serves a stand-in with the SDK's embedDashboard().
          const { embedDashboard } = await import(`${SANDBOX}/_sandbox/components.js`);
          let pending = first;
          const dashboard = await embedDashboard({
            ...first.element.options,
            mountPoint: slot,
            fetchGuestToken: async () => {
              const grant = pending || (await broker.token(embed.name, { tenant }));
              pending = null;
              return grant.token;
            },
          });
          if (mine !== generation) dashboard.unmount();
          else dashboards.set(embed.name, dashboard);
          return;
        }
        const handle = await broker.mount(slot, embed.name, { tenant });
        if (mine !== generation) {
          handle.stop(); // the tenant changed while this one was loading
          return;
        }
        handles.set(embed.name, handle);
        syncCountdowns();
      } catch (error) {
        slot.append(el("p", { class: "error" }, `${error.code}: ${error.detail}`));
      }
    }),
  );
  if (mine === generation) document.body.dataset.ready = tenant;
}

async function start() {
  await getSessionToken();
  document.getElementById("user").textContent = `${session.user} (${session.roles.join(", ")})`;
  const select = document.getElementById("tenant");
  for (const tenant of session.tenants) {
    const label = tenant.region ? `${tenant.id} (region ${tenant.region})` : tenant.id;
    select.append(el("option", { value: tenant.id }, label));
  }
  select.addEventListener("change", () => showTenant(select.value));
  await showTenant(select.value);
}

start().catch((error) => note("error", String(error && error.message ? error.message : error)));
