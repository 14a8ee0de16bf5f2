// Search: upload, drop or sketch a query; show its code and the hits; "more like this" on any hit (and, through
// the returned `similar`, on any library card). The newest search wins: starting one aborts the one running.

import { api, queryString } from "./api.js";
import { byId, el, hide, imageCard, noteDomains, showError, showMessage } from "./dom.js";

export function initSearch() {
  const fileInput = byId("search-file");
  const dropzone = byId("dropzone");
  const errorBox = byId("search-error");
  const hitsBox = byId("hits");
  let running = null; // the AbortController of the search in flight

  function options() {
    return queryString({
      k: byId("opt-k").value,
      max_distance: byId("opt-radius").value,
      domain: byId("opt-domain").value.trim(),
    });
  }

  async function run(path, body, query) {
    if (running) running.abort();
    const mine = new AbortController();
    running = mine;
    document.body.classList.add("busy");
    hide(errorBox);
    try {
      const result = await api(`${path}${options()}`, { method: "POST", body, write: false, signal: mine.signal });
      if (mine.signal.aborted) return;
      showQuery(result, query);
      showHits(result.hits);
    } catch (error) {
      if (mine.signal.aborted) return; // a newer search took over: its answer is the one to show
      showError(errorBox, error);
      byId("query-info").hidden = true; // no stale results under a refusal
      byId("hits-empty").hidden = true;
      hitsBox.replaceChildren();
    } finally {
      if (running === mine) {
        running = null;
        document.body.classList.remove("busy");
      }
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

  /** "More like this": the stored image's own code is the query (a hit or a library card). */
  function similar(image) {
    run(`/v1/images/${image.id}/similar`, undefined, {
      preview: image.content_url,
      title: `More like image #${image.id}`,
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

  // Sketching: strokes of the chosen width, kept as point lists so that Undo takes back one stroke at a time; the
  // canvas is repainted from them (also when the ink changes). Searched as a PNG of the canvas.
  const canvas = byId("draw-canvas");
  const context = canvas.getContext("2d");
  const ink = byId("draw-ink");
  const width = byId("draw-width");
  const undo = byId("draw-undo");
  const strokes = []; // {width, points: [{x, y}]}
  let current = null; // the stroke being drawn

  function colours() {
    return ink.value === "white" ? { paper: "#000", pen: "#fff" } : { paper: "#fff", pen: "#000" };
  }

  function paintStroke({ width: lineWidth, points }) {
    const { pen } = colours();
    context.strokeStyle = pen;
    context.fillStyle = pen;
    context.lineWidth = lineWidth;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    if (points.length === 1) {
      context.arc(points[0].x, points[0].y, lineWidth / 2, 0, 2 * Math.PI);
      context.fill();
      return;
    }
    context.moveTo(points[0].x, points[0].y);
    for (const { x, y } of points.slice(1)) context.lineTo(x, y);
    context.stroke();
  }

  function repaint() {
    context.fillStyle = colours().paper;
    context.fillRect(0, 0, canvas.width, canvas.height);
    for (const stroke of strokes) paintStroke(stroke);
    undo.disabled = strokes.length === 0;
  }

  function point(event) {
    const box = canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * canvas.width) / box.width,
      y: ((event.clientY - box.top) * canvas.height) / box.height,
    };
  }

  function showWidth() {
    byId("draw-width-value").textContent = `${width.value} px`;
  }

  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    current = { width: Number(width.value), points: [point(event)] };
    strokes.push(current);
    repaint();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!current) return;
    const last = current.points[current.points.length - 1];
    const next = point(event);
    current.points.push(next);
    paintStroke({ width: current.width, points: [last, next] }); // the new segment only; repaint() redraws all
  });
  for (const name of ["pointerup", "pointercancel"]) canvas.addEventListener(name, () => (current = null));
  ink.addEventListener("change", repaint);
  width.addEventListener("input", showWidth);
  undo.addEventListener("click", () => {
    current = null;
    strokes.pop();
    repaint();
  });
  byId("draw-clear").addEventListener("click", () => {
    current = null;
    strokes.length = 0;
    repaint();
  });
  byId("draw-search").addEventListener("click", () => {
    if (!strokes.length) {
      showMessage(errorBox, "Draw something on the canvas first.");
      return;
    }
    const preview = canvas.toDataURL("image/png");
    canvas.toBlob((blob) => searchBlob(blob, "drawing.png", preview, "Drawing"), "image/png");
  });
  showWidth();
  repaint();

  // Changing an option repeats nothing by itself; the next search uses it.
  byId("search-options").addEventListener("submit", (event) => event.preventDefault());

  return { similar };
}
