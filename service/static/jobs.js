// Jobs as the UI shows them: a progress bar, a one-line summary, every error a page at a time, and polling
// until a job has finished.

import { api } from "./api.js";
import { el } from "./dom.js";

export const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

export function progressBar(job) {
  const { done, total } = job.progress;
  const finished = job.status === "succeeded";
  const bar = el("progress", { className: "job-progress", max: Math.max(total, 1), value: finished ? Math.max(total, 1) : done });
  if (total === 0 && !FINISHED.has(job.status)) bar.removeAttribute("value"); // indeterminate until a total is known
  const percent = total ? Math.round((100 * done) / total) : finished ? 100 : 0;
  return el(
    "div",
    { className: "progress-line" },
    bar,
    el("span", { className: "progress-text", text: total ? `${done} / ${total} (${percent} %)` : job.status }),
  );
}

export function statusBadge(job) {
  const text = job.cancel_requested && !FINISHED.has(job.status) ? `${job.status} (cancelling)` : job.status;
  return el("span", { className: `badge status-${job.status}`, text });
}

/** What a job did, in a line: counts of an ingestion, the version a training produced (errors: errorPager). */
export function jobSummary(job) {
  const parts = [];
  const result = job.result || {};
  if (job.kind === "ingest" && "created" in result) {
    parts.push(`${result.created} added, ${result.existing} already stored, ${result.failed} failed`);
  }
  if (job.kind === "train" && result.version) {
    parts.push(`model ${result.version} (${result.sources} source, ${result.targets} target images)`);
  }
  if (job.kind === "activate" && result.encoded !== undefined) parts.push(`${result.encoded} images re-encoded`);
  return parts.join(" · ");
}

export const ERRORS_PER_PAGE = 10;

function errorLine(error) {
  return el(
    "li",
    { dataset: { code: error.code || "" } },
    error.item ? [el("code", { className: "error-item", text: error.item }), ": "] : null,
    el("span", { className: "error-message", text: error.message || error.code || "error" }),
  );
}

/**
 * Every error of a job, ERRORS_PER_PAGE at a time with previous / next, in a disclosure ("23 errors").
 * `update(job)` is called with each new look at the job; the same `node` stays in place across re-renders, so
 * the page shown and whether it is open are kept. Hidden while the job has no error.
 */
export function errorPager({ open = false } = {}) {
  let errors = [];
  let page = 0;
  const heading = el("summary", { className: "error-count" });
  const list = el("ol", { className: "error-list" });
  const range = el("span", { className: "error-range" });
  const prev = el("button", { type: "button", className: "error-prev", text: "‹ Previous", onclick: () => show(page - 1) });
  const next = el("button", { type: "button", className: "error-next", text: "Next ›", onclick: () => show(page + 1) });
  const pages = el("div", { className: "error-pages" }, prev, range, next);
  const node = el("details", { className: "job-errors", open, hidden: true }, heading, list, pages);

  function show(wanted) {
    const count = Math.max(1, Math.ceil(errors.length / ERRORS_PER_PAGE));
    page = Math.min(Math.max(wanted, 0), count - 1);
    const start = page * ERRORS_PER_PAGE;
    const shown = errors.slice(start, start + ERRORS_PER_PAGE);
    heading.textContent = errors.length === 1 ? "1 error" : `${errors.length} errors`;
    list.start = start + 1;
    list.replaceChildren(...shown.map(errorLine));
    range.textContent = `${start + 1}–${start + shown.length} of ${errors.length}`;
    prev.disabled = page === 0;
    next.disabled = page === count - 1;
    pages.hidden = count === 1;
    node.hidden = errors.length === 0;
  }

  return {
    node,
    update(job) {
      errors = job.errors || [];
      show(page);
    },
  };
}

/** Poll `GET /v1/jobs/{id}` every `intervalMs` and call `onUpdate(job)` until it has finished. */
export async function watchJob(jobId, onUpdate, intervalMs = 500) {
  for (;;) {
    const job = await api(`/v1/jobs/${jobId}`);
    onUpdate(job);
    if (FINISHED.has(job.status)) return job;
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
