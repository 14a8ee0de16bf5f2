// Jobs as the UI shows them: a progress bar, a one-line summary, and polling until a job has finished.

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

/** What a job did, in a line: counts of an ingestion, the version a training produced, the first error. */
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
  if (job.errors && job.errors.length) {
    const first = job.errors[0];
    const where = first.item ? `${first.item}: ` : "";
    parts.push(`${job.errors.length} error(s), first: ${where}${first.message || first.code}`);
  }
  return parts.join(" · ");
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
