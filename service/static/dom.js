// Small DOM helpers. Text from the server (labels, metadata, messages) only ever goes in as text, never as HTML.

import { describeError } from "./api.js";

/** `el("div", {className: "x", text: "hi", onclick: f, dataset: {id: 1}}, child, ...)`. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node) node[name] = value;
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

export const byId = (id) => document.getElementById(id);

export function showMessage(box, text) {
  box.textContent = text;
  box.hidden = false;
}

export function showError(box, error) {
  showMessage(box, describeError(error));
}

export function hide(...boxes) {
  for (const box of boxes) box.hidden = true;
}

export function formatNumber(value, digits = 3) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso.endsWith("Z") || iso.includes("+") ? iso : `${iso}Z`);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

/**
 * The domains offered in every domain field (the `#domains` list): those `GET /v1/domains` listed, with their
 * image counts, plus any other seen since (in a search hit, a library page) until the next listing.
 */
const domains = new Map(); // name → stored images (null: seen, count unknown)

function renderDomains() {
  const names = [...domains.keys()].sort();
  byId("domains").replaceChildren(
    ...names.map((name) => {
      const count = domains.get(name);
      return el("option", { value: name, label: count === null ? name : `${name} (${count} image${count === 1 ? "" : "s"})` });
    }),
  );
}

export function setDomains(list) {
  domains.clear();
  for (const { name, count } of list) domains.set(name, count);
  renderDomains();
}

export function noteDomains(values) {
  const fresh = values.filter((value) => value && !domains.has(value));
  if (!fresh.length) return;
  for (const value of fresh) domains.set(value, null);
  renderDomains();
}

/** A thumbnail card of a stored image: picture, caption, and the given buttons. */
export function imageCard(image, { className = "item", lines = [], buttons = [] } = {}) {
  return el(
    "figure",
    { className, dataset: { id: image.id } },
    el("img", { className: "thumb", src: image.content_url, alt: `image ${image.id}`, loading: "lazy" }),
    el("figcaption", {}, ...lines),
    buttons.length ? el("div", { className: "card-actions" }, ...buttons) : null,
  );
}
