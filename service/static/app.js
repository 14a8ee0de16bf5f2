// The page: tabs (#search, #library, #models), the server status line, the domains offered in every domain
// field, and the API key field.

import { api, apiKey, describeError, setApiKey } from "./api.js";
import { byId, setDomains } from "./dom.js";
import { initLibrary } from "./library.js";
import { initModels } from "./models.js";
import { initSearch } from "./search.js";

const STATUS_MS = 10000;

let indexed = null; // the image count last shown: the poll lists the domains again when it changes

async function refreshDomains() {
  try {
    setDomains((await api("/v1/domains")).domains);
  } catch {
    // the fields still take any name; the list comes back with the next change
  }
}

/** The status line; true when the number of stored images changed since the last look. */
async function refreshStatus() {
  const line = byId("server-status");
  try {
    const ready = await api("/readyz");
    line.textContent = `model ${ready.model_version} · ${ready.bits} bits · ${ready.indexed} images`;
    line.classList.remove("down");
    const changed = indexed !== null && ready.indexed !== indexed;
    indexed = ready.indexed;
    return changed;
  } catch (error) {
    line.textContent = `not ready: ${describeError(error)}`;
    line.classList.add("down");
    return false;
  }
}

/** The periodic look: other clients and job workers add and delete images too. */
async function poll() {
  if (await refreshStatus()) refreshDomains();
}

/** At start and after a write of this page: the status line and the domains with their counts. */
function refresh() {
  refreshStatus();
  refreshDomains();
}

function initKey() {
  const input = byId("api-key");
  const state = byId("key-state");
  input.value = apiKey();
  state.textContent = apiKey() ? "saved" : "";
  byId("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    state.textContent = input.value.trim() ? "saved" : "cleared";
  });
}

function initTabs(panels) {
  let current = null;
  function show() {
    const name = location.hash.slice(1) in panels ? location.hash.slice(1) : "search";
    if (name === current) return;
    if (current && panels[current].onHide) panels[current].onHide();
    current = name;
    for (const section of document.querySelectorAll("[data-panel]")) section.hidden = section.dataset.panel !== name;
    for (const link of document.querySelectorAll("[data-tab]")) {
      if (link.dataset.tab === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (panels[name].onShow) panels[name].onShow();
  }
  window.addEventListener("hashchange", show);
  show();
}

function main() {
  const context = { onChange: refresh };
  initKey();
  const search = initSearch(context);
  const findSimilar = (image) => {
    location.hash = "#search";
    search.similar(image);
  };
  initTabs({ search: {}, library: initLibrary({ ...context, findSimilar }), models: initModels(context) });
  refresh();
  setInterval(poll, STATUS_MS);
  document.body.dataset.ready = "true";
}

main();
