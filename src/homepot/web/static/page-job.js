import { $, api, badge, canOperate, deviceLink, el, fillTable, formatTime, notFound, pageStatus, startPage, timeCell, who } from "/static/app.js";

const jobId = $("#job-root").dataset.jobId;
const base = `/api/v1/jobs/${encodeURIComponent(jobId)}`;
const FINISHED = new Set(["completed", "failed", "cancelled"]);
const REFRESH_MS = 5000;
let timer = null;

function outcome(execution) {
  if (execution.error_code || execution.error_message) {
    return el("span", { class: "error-text" }, [execution.error_code, execution.error_message].filter(Boolean).join(": "));
  }
  if (execution.result) return el("code", {}, JSON.stringify(execution.result));
  return "—";
}

async function load() {
  try {
    const job = await api(base);
    document.querySelector("h1").textContent = `Job ${job.job_id}: ${job.job_type}`;
    $("#job-info").replaceChildren(
      el("dt", {}, "Status"), el("dd", {}, badge(job.status)),
      el("dt", {}, "Target"), el("dd", {}, `${job.target_type} ${job.target_id}`),
      el("dt", {}, "Schedule"), el("dd", {}, job.schedule + (job.scheduled_for ? ` (${formatTime(job.scheduled_for)})` : "")),
      el("dt", {}, "Payload"), el("dd", {}, el("code", {}, JSON.stringify(job.payload))),
      el("dt", {}, "Created"), el("dd", {}, `${formatTime(job.created_at)} by `, who(job.created_by)),
      el("dt", {}, "Completed"), el("dd", {}, formatTime(job.completed_at)),
    );
    const counts = {};
    for (const execution of job.executions) counts[execution.status] = (counts[execution.status] || 0) + 1;
    $("#job-summary").textContent = job.executions.length
      ? `${job.executions.length} device(s): ${Object.entries(counts).map(([name, n]) => `${n} ${name}`).join(", ")}`
      : "No device executions (yet).";
    fillTable(
      $("#job-executions"),
      job.executions.map((execution) =>
        el(
          "tr",
          {},
          el("td", {}, deviceLink(execution.device_id)),
          el("td", {}, badge(execution.status)),
          el("td", {}, execution.attempt),
          el("td", {}, execution.delivery || "—"),
          timeCell(execution.dispatched_at),
          timeCell(execution.finished_at),
          el("td", {}, outcome(execution)),
        ),
      ),
      "No device executions (yet).",
    );
    const cancel = $("#job-cancel");
    cancel.hidden = !canOperate() || FINISHED.has(job.status);
    if (FINISHED.has(job.status) && timer) {
      clearInterval(timer);
      timer = null;
    }
  } catch (error) {
    if (error.status === 404) notFound(`There is no job ${jobId}.`);
    else pageStatus(`Could not load the job: ${error.message}`);
    if (timer) clearInterval(timer);
    timer = null;
  }
}

await startPage();
$("#job-cancel").addEventListener("click", async () => {
  try {
    await api(`${base}/cancel`, { method: "POST" });
    await load();
  } catch (error) {
    pageStatus(`Could not cancel: ${error.message}`);
  }
});
await load();
timer = setInterval(() => {
  if (document.visibilityState === "visible") load();
}, REFRESH_MS);
