// The page: tabs (#search, #library, #models), the server status line, and the API key field.

import { api, apiKey, describeError, setApiKey } from "./api.js";
import { byId } from "./dom.js";
import { initLibrary } from "./library.js";
import { initModels } from "./models.js";
import { initSearch } from "./search.js";

const STATUS_MS = 10000;

async function refreshStatus() {
  const line = byId("server-status");
  try {
    const ready = await api("/readyz");
    line.textContent = `model ${ready.model_version} · ${ready.bits} bits · ${ready.indexed} images`;
    line.classList.remove("down");
  } catch (error) {
    line.textContent = `not ready: ${describeError(error)}`;
    line.classList.add("down");
  }
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
  const context = { onChange: refreshStatus };
  initKey();
  initSearch(context);
  initTabs({ search: {}, library: initLibrary(context), models: initModels(context) });
  refreshStatus();
  setInterval(refreshStatus, STATUS_MS);
  document.body.dataset.ready = "true";
}

main();
