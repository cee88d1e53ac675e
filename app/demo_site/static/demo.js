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
