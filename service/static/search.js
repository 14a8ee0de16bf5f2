// Search: upload, drop or draw a query; show its code and the hits; "more like this" on any hit.

import { api, queryString } from "./api.js";
import { byId, el, hide, imageCard, noteDomains, showError, showMessage } from "./dom.js";

export function initSearch() {
  const fileInput = byId("search-file");
  const dropzone = byId("dropzone");
  const errorBox = byId("search-error");
  const hitsBox = byId("hits");
  let busy = false;

  function options() {
    return queryString({
      k: byId("opt-k").value,
      max_distance: byId("opt-radius").value,
      domain: byId("opt-domain").value.trim(),
    });
  }

  async function run(path, body, query) {
    if (busy) return;
    busy = true;
    document.body.classList.add("busy");
    hide(errorBox);
    try {
      const result = await api(`${path}${options()}`, { method: "POST", body, write: false });
      showQuery(result, query);
      showHits(result.hits);
    } catch (error) {
      showError(errorBox, error);
      byId("query-info").hidden = true; // no stale results under a refusal
      byId("hits-empty").hidden = true;
      hitsBox.replaceChildren();
    } finally {
      busy = false;
      document.body.classList.remove("busy");
    }
  }

  function searchBlob(blob, name, preview, title) {
    const form = new FormData();
    form.append("image", blob, name);
    return run("/v1/search", form, { preview, title });
  }

  function searchFile(file) {
    if (!file) return;
    searchBlob(file, file.name || "query", URL.createObjectURL(file), `Uploaded ${file.name || "image"}`);
  }

  function similar(hit) {
    run(`/v1/images/${hit.id}/similar`, undefined, {
      preview: hit.content_url,
      title: `More like image #${hit.id}`,
    });
  }

  function showQuery(result, query) {
    byId("query-info").hidden = false;
    byId("search-hint").hidden = true;
    byId("query-preview").src = query.preview;
    byId("query-title").textContent = query.title;
    byId("query-bits").textContent = result.query.code_bits.match(/.{1,8}/g).join(" ");
    byId("query-hex").textContent = result.query.code_hex;
    byId("query-meta").textContent =
      `model ${result.model_version} · ${result.bits} bits · ${result.hits.length} hits · ${result.took_ms} ms`;
  }

  function showHits(hits) {
    noteDomains(hits.map((hit) => hit.domain));
    byId("hits-empty").hidden = hits.length > 0;
    hitsBox.replaceChildren(
      ...hits.map((hit) =>
        imageCard(hit, {
          className: "hit",
          lines: [
            el("span", { className: "distance", text: `d = ${hit.distance}` }),
            el("span", { className: "domain", text: hit.domain }),
            el("span", { className: "label", text: hit.label === null ? "no label" : `label ${hit.label}` }),
            el("span", { className: "muted", text: `#${hit.id}` }),
          ],
          buttons: [el("button", { type: "button", className: "similar", text: "More like this", onclick: () => similar(hit) })],
        }),
      ),
    );
  }

  // Upload and drag-and-drop.
  fileInput.addEventListener("change", () => {
    searchFile(fileInput.files[0]);
    fileInput.value = "";
  });
  dropzone.addEventListener("click", () => fileInput.click());
  dropzone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      fileInput.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    dropzone.addEventListener(name, (event) => {
      event.preventDefault();
      dropzone.classList.add("over");
    });
  }
  dropzone.addEventListener("dragleave", () => dropzone.classList.remove("over"));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) searchFile(file);
    else showMessage(errorBox, "Drop an image file.");
  });

  // Drawing: a digit in one ink on the other colour's background, sent as PNG.
  const canvas = byId("draw-canvas");
  const context = canvas.getContext("2d");
  const ink = byId("draw-ink");
  let drawing = false;
  let drawn = false;
  let last = null;

  function clearCanvas() {
    context.fillStyle = ink.value === "white" ? "#000" : "#fff";
    context.fillRect(0, 0, canvas.width, canvas.height);
    drawn = false;
  }

  function point(event) {
    const box = canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * canvas.width) / box.width,
      y: ((event.clientY - box.top) * canvas.height) / box.height,
    };
  }

  function stroke(from, to) {
    context.strokeStyle = ink.value === "white" ? "#fff" : "#000";
    context.lineWidth = canvas.width / 11;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(from.x, from.y);
    context.lineTo(to.x, to.y);
    context.stroke();
    drawn = true;
  }

  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    drawing = true;
    last = point(event);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const next = point(event);
    stroke(last, next);
    last = next;
  });
  for (const name of ["pointerup", "pointercancel"]) canvas.addEventListener(name, () => (drawing = false));
  ink.addEventListener("change", clearCanvas);
  byId("draw-clear").addEventListener("click", clearCanvas);
  byId("draw-search").addEventListener("click", () => {
    if (!drawn) {
      showMessage(errorBox, "Draw a digit on the canvas first.");
      return;
    }
    const preview = canvas.toDataURL("image/png");
    canvas.toBlob((blob) => searchBlob(blob, "drawing.png", preview, "Drawing"), "image/png");
  });
  clearCanvas();

  // Changing an option repeats nothing by itself; the next search uses it.
  byId("search-options").addEventListener("submit", (event) => event.preventDefault());
}
