// Library: browse stored images by domain and label (keyset pages), upload images or an archive (with upload
// progress, then the ingest job's), delete, and "more like this" (shown in the search tab).

import { api, describeError, queryString, request, upload } from "./api.js";
import { byId, el, hide, imageCard, noteDomains, showError, showMessage } from "./dom.js";
import { FINISHED, errorPager, jobSummary, progressBar, statusBadge, watchJob } from "./jobs.js";

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

/** The archive's upload as a job-like card: bytes sent of the total, before the ingest job exists. */
function uploadCard(name, sent, total) {
  const percent = total ? Math.floor((100 * sent) / total) : 0;
  const text = sent < total ? `${formatBytes(sent)} / ${formatBytes(total)} (${percent} %)` : "uploaded, queuing…";
  return el(
    "div",
    { className: "job-card upload-card" },
    el("div", {}, el("strong", { text: `Uploading ${name}` })),
    el(
      "div",
      { className: "progress-line" },
      el("progress", { className: "job-progress upload-progress", max: Math.max(total, 1), value: sent }),
      el("span", { className: "progress-text", text }),
    ),
  );
}

export function initLibrary({ onChange, findSimilar }) {
  const grid = byId("library-grid");
  const errorBox = byId("library-error");
  const notice = byId("library-notice");
  const more = byId("library-more");
  let next = null;
  let shown = 0;
  let loaded = false;
  let archives = 0; // archive submissions so far: only the latest one's upload and job are shown

  function filter() {
    return {
      domain: byId("filter-domain").value.trim(),
      label: byId("filter-label").value.trim(),
      limit: byId("filter-limit").value,
    };
  }

  async function load({ reset }) {
    hide(errorBox);
    if (reset) {
      next = null;
      shown = 0;
    }
    try {
      const page = await api(`/v1/images${queryString({ ...filter(), after: next })}`);
      if (reset) grid.replaceChildren();
      grid.append(...page.items.map(card));
      noteDomains(page.items.map((item) => item.domain));
      shown += page.items.length;
      next = page.next;
      loaded = true;
    } catch (error) {
      showError(errorBox, error);
    }
    more.hidden = !next;
    byId("library-empty").hidden = shown > 0;
    byId("library-count").textContent = shown ? `${shown} image(s) shown${next ? ", more available" : ""}` : "";
  }

  function card(image) {
    const node = imageCard(image, {
      lines: [
        el("span", { className: "domain", text: image.domain }),
        el("span", { className: "label", text: image.label === null ? "no label" : `label ${image.label}` }),
        el("span", { className: "muted", text: `#${image.id} · ${image.width}×${image.height}` }),
      ],
      buttons: [
        el("button", { type: "button", className: "similar", text: "More like this", onclick: () => findSimilar(image) }),
        el("button", { type: "button", className: "danger delete", text: "Delete", onclick: () => remove(image, node) }),
      ],
    });
    return node;
  }

  async function remove(image, node) {
    if (!window.confirm(`Delete image #${image.id}? It will never be returned by a search again.`)) return;
    hide(errorBox);
    try {
      await api(`/v1/images/${image.id}`, { method: "DELETE" });
      node.remove();
      shown -= 1;
      byId("library-empty").hidden = shown > 0;
      showMessage(notice, `Deleted image #${image.id}.`);
      onChange();
    } catch (error) {
      showError(errorBox, error);
    }
  }

  byId("library-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    hide(notice);
    load({ reset: true });
  });
  more.addEventListener("click", () => load({ reset: false }));

  // Single images: one request each, a summary at the end with the server's message for every refusal.
  byId("upload-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const files = [...byId("upload-files").files];
    const result = byId("upload-result");
    const counts = { created: 0, existing: 0 };
    const refused = [];
    result.classList.remove("error");
    for (const [index, file] of files.entries()) {
      showMessage(result, `Uploading ${index + 1} of ${files.length}…`);
      const form = new FormData();
      form.append("image", file, file.name);
      form.append("domain", byId("upload-domain").value.trim());
      const label = byId("upload-label").value.trim();
      if (label) form.append("label", label);
      try {
        const { status } = await request("/v1/images", { method: "POST", body: form });
        counts[status === 201 ? "created" : "existing"] += 1;
      } catch (error) {
        refused.push(`${file.name}: ${describeError(error)}`);
      }
    }
    result.replaceChildren(
      el("div", { text: `${counts.created} added, ${counts.existing} already stored, ${refused.length} refused.` }),
      ...refused.map((line) => el("div", { className: "refused", text: line })),
    );
    result.classList.toggle("error", refused.length > 0);
    byId("upload-form").reset();
    byId("upload-domain").value = byId("upload-domain").defaultValue;
    if (counts.created) {
      onChange();
      load({ reset: true });
    }
  });

  // An archive: uploaded with a progress bar (archives can be large), then queued as an ingest job and followed
  // with the job's progress bar and every error until it has finished.
  byId("archive-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const archiveError = byId("archive-error");
    const box = byId("archive-job");
    const submit = byId("archive-form").querySelector("button[type=submit]");
    hide(archiveError);
    const mine = ++archives;
    const show = (node) => mine === archives && box.replaceChildren(node);
    const file = byId("archive-file").files[0];
    const form = new FormData();
    form.append("archive", file, file.name);
    form.append("domain", byId("archive-domain").value.trim());
    submit.disabled = true;
    show(uploadCard(file.name, 0, file.size));
    try {
      const { job_id: jobId } = await upload("/v1/ingest-jobs", form, (sent, total) =>
        show(uploadCard(file.name, sent, total)),
      );
      byId("archive-form").reset();
      submit.disabled = false;
      const errors = errorPager({ open: true });
      const finished = await watchJob(jobId, (job) => {
        errors.update(job);
        show(
          el(
            "div",
            { className: "job-card", dataset: { jobId: job.id } },
            el("div", {}, el("strong", { text: `Ingest job #${job.id} ` }), statusBadge(job)),
            progressBar(job),
            el("div", { className: "job-summary", text: jobSummary(job) }),
            errors.node,
          ),
        );
      });
      if (FINISHED.has(finished.status)) {
        onChange();
        load({ reset: true });
      }
    } catch (error) {
      if (mine === archives && box.querySelector(".upload-card")) box.replaceChildren();
      showError(archiveError, error);
    } finally {
      submit.disabled = false;
    }
  });

  return {
    onShow() {
      if (!loaded) load({ reset: true });
    },
  };
}
