// Models and jobs: the registry with metrics, activation, training jobs, live job progress, training plots.

import { api, queryString } from "./api.js";
import { byId, el, formatNumber, formatTime, hide, showError, showMessage } from "./dom.js";
import { FINISHED, errorPager, jobSummary, progressBar, statusBadge } from "./jobs.js";

const POLL_MS = 1000;
const PLOTS = [
  ["loss_curves.png", "Loss curves"],
  ["pr_curve.png", "Precision-recall curve"],
];

export function initModels({ onChange }) {
  const modelsError = byId("models-error");
  const jobsError = byId("jobs-error");
  let timer = null;
  let lastJobs = "";
  const statuses = new Map(); // job id → last status seen, to react when a job finishes
  const pagers = new Map(); // job id → its error pager, kept across re-renders (page shown, open or not)
  let jobsSeen = false;

  async function loadModels() {
    hide(modelsError);
    try {
      const list = await api("/v1/models");
      byId("models-table").tBodies[0].replaceChildren(...list.items.map(modelRow));
    } catch (error) {
      showError(modelsError, error);
    }
  }

  function metricsText(metrics) {
    const lines = Object.entries(metrics.evaluation || {}).map(
      ([name, value]) =>
        `${name}: MAP ${formatNumber(value.map_all)} · MAP r≤2 ${formatNumber(value.map_radius2)} · ` +
        `P r≤2 ${formatNumber(value.precision_radius2)}`,
    );
    if (metrics.train_seconds !== undefined) lines.push(`trained in ${metrics.train_seconds} s`);
    return lines.length ? lines : ["–"];
  }

  function modelRow(model) {
    return el(
      "tr",
      { className: model.active ? "active-model" : "", dataset: { version: model.version } },
      el("td", {}, el("code", { text: model.version }), model.active ? el("span", { className: "badge status-succeeded", text: "active" }) : null),
      el("td", { text: String(model.bits) }),
      el("td", { text: model.method || "–" }),
      el("td", { text: model.backbone || "–" }),
      el("td", { text: formatTime(model.created_at) }),
      el("td", { className: "metrics" }, ...metricsText(model.metrics).map((line) => el("div", { text: line }))),
      el(
        "td",
        { className: "actions" },
        el("button", { type: "button", className: "plots-button", text: "Plots", onclick: () => showPlots(model.version) }),
        model.active ? null : el("button", { type: "button", className: "activate", text: "Activate", onclick: () => activate(model.version) }),
      ),
    );
  }

  async function activate(version) {
    hide(modelsError, byId("models-notice"));
    try {
      const { job_id: jobId } = await api(`/v1/models/${encodeURIComponent(version)}/activate`, { method: "POST" });
      showMessage(byId("models-notice"), `Activation job #${jobId} queued: every image is re-encoded, then ${version} answers searches.`);
      loadJobs();
    } catch (error) {
      showError(modelsError, error);
    }
  }

  function showPlots(version) {
    const box = byId("plots");
    const base = `/v1/models/${encodeURIComponent(version)}/plots/`;
    box.replaceChildren(
      el("h3", {}, "Training plots of ", el("code", { text: version })),
      el(
        "div",
        { className: "plot-row" },
        ...PLOTS.map(([name, title]) => {
          const figure = el("figure", { className: "plot", dataset: { plot: name } });
          const image = el("img", { src: `${base}${name}?t=${Date.now()}`, alt: title });
          image.addEventListener("load", () => figure.classList.add("loaded"));
          image.addEventListener("error", () =>
            image.replaceWith(el("p", { className: "muted missing", text: `No ${title.toLowerCase()} stored for this version.` })),
          );
          figure.append(image, el("figcaption", { text: title }));
          return figure;
        }),
      ),
    );
    box.hidden = false;
    box.scrollIntoView({ block: "nearest" });
  }

  async function loadJobs() {
    try {
      const params = queryString({ kind: byId("jobs-kind").value, status: byId("jobs-status").value, limit: 25 });
      const list = await api(`/v1/jobs${params}`);
      hide(jobsError);
      const text = JSON.stringify(list.items);
      if (text !== lastJobs) {
        lastJobs = text;
        const listed = new Set(list.items.map((job) => job.id));
        for (const id of pagers.keys()) if (!listed.has(id)) pagers.delete(id);
        byId("jobs-table").tBodies[0].replaceChildren(...list.items.map(jobRow));
        byId("jobs-empty").hidden = list.items.length > 0;
      }
      // A job that finished since the last look may have added or activated a model: reload the registry and
      // the status line (again a moment later: the server swaps to an activated model on its next poll).
      let finished = false;
      for (const job of list.items) {
        const before = statuses.get(job.id);
        if (jobsSeen && before !== job.status && FINISHED.has(job.status)) finished = true;
        statuses.set(job.id, job.status);
      }
      jobsSeen = true;
      if (finished) {
        loadModels();
        onChange();
        setTimeout(onChange, 1500);
      }
    } catch (error) {
      showError(jobsError, error);
    }
  }

  function jobRow(job) {
    const actions = [];
    if (!FINISHED.has(job.status) && !job.cancel_requested) {
      actions.push(el("button", { type: "button", className: "cancel", text: "Cancel", onclick: () => cancel(job.id) }));
    }
    if (job.kind === "train" && job.result && job.result.version) {
      actions.push(el("button", { type: "button", className: "plots-button", text: "Plots", onclick: () => showPlots(job.result.version) }));
    }
    if (!pagers.has(job.id)) pagers.set(job.id, errorPager());
    const pager = pagers.get(job.id);
    pager.update(job);
    return el(
      "tr",
      { className: "job", dataset: { jobId: job.id, kind: job.kind, status: job.status } },
      el("td", { text: `#${job.id}`, title: `created ${formatTime(job.created_at)}` }),
      el("td", { text: job.kind }),
      el("td", {}, statusBadge(job)),
      el("td", {}, progressBar(job)),
      el("td", {}, el("div", { className: "job-summary", text: jobSummary(job) }), pager.node),
      el("td", { className: "actions" }, ...actions),
    );
  }

  async function cancel(jobId) {
    try {
      await api(`/v1/jobs/${jobId}/cancel`, { method: "POST" });
      loadJobs();
    } catch (error) {
      showError(jobsError, error);
    }
  }

  byId("jobs-filter").addEventListener("change", loadJobs);
  byId("jobs-filter").addEventListener("submit", (event) => event.preventDefault());

  byId("train-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const errorBox = byId("train-error");
    const notice = byId("train-notice");
    hide(errorBox, notice);
    const body = {
      source_domain: byId("train-source").value.trim(),
      target_domain: byId("train-target").value.trim(),
      bits: Number(byId("train-bits").value),
      method: byId("train-method").value,
      backbone: byId("train-backbone").value,
      mode: byId("train-mode").value,
      iterations: byId("train-iterations").value ? Number(byId("train-iterations").value) : null,
      activate: byId("train-activate").checked,
    };
    try {
      const { job_id: jobId } = await api("/v1/training-jobs", { method: "POST", json: body });
      showMessage(notice, `Training job #${jobId} queued; its progress is under Jobs.`);
      loadJobs();
    } catch (error) {
      showError(errorBox, error);
    }
  });

  return {
    onShow() {
      loadModels();
      loadJobs();
      if (timer === null) timer = setInterval(loadJobs, POLL_MS);
    },
    onHide() {
      clearInterval(timer);
      timer = null;
    },
  };
}
