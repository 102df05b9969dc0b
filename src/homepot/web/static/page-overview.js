import { $, api, badge, deviceLink, el, fillTable, jobLink, pageStatus, queryParam, startPage, syncQuery, timeCell } from "/static/app.js";
import { lineChart } from "/static/charts.js";

const REFRESH_MS = 30000;

function renderStats(overview) {
  const devices = overview.devices;
  $("#stat-online").textContent = devices.online;
  $("#stat-offline").textContent = devices.offline;
  $("#stat-error").textContent = devices.error;
  $("#stat-maintenance").textContent = devices.maintenance + devices.updating;
  $("#stat-total").textContent = devices.total;
  const rate = overview.job_success_rate;
  const outcomes = overview.job_outcomes;
  const finished = outcomes.success + outcomes.failed + outcomes.timeout;
  $("#job-success-rate").textContent = rate === null ? "n/a" : `${Math.round(rate * 1000) / 10}%`;
  $("#job-success-label").textContent = finished
    ? `job success (${outcomes.success} of ${finished}, ${overview.hours} h)`
    : `job success (none finished in ${overview.hours} h)`;
  $("#unresolved-errors").textContent = overview.unresolved_errors;
  $("#stat-critical-anomalies").textContent = overview.critical_anomalies;
}

function targetLink(job) {
  const id = encodeURIComponent(job.target_id);
  if (job.target_type === "device") return el("a", { href: `/devices/${id}` }, job.target_id);
  if (job.target_type === "site") return el("a", { href: `/sites/${id}` }, `site ${job.target_id}`);
  return `type ${job.target_id}`;
}

function renderTables(overview) {
  fillTable(
    $("#recent-errors"),
    overview.recent_errors.map((error) =>
      el(
        "tr",
        { class: error.resolved ? "resolved" : "" },
        timeCell(error.timestamp),
        el("td", {}, badge(error.severity)),
        el("td", {}, el("span", { class: "muted" }, `${error.category} `), error.error_message),
        el("td", { class: "nowrap" }, deviceLink(error.device_id)),
      ),
    ),
    "No errors recorded.",
  );
  fillTable(
    $("#recent-jobs"),
    overview.recent_jobs.map((job) =>
      el(
        "tr",
        {},
        el("td", { class: "nowrap" }, jobLink(job.job_id), el("div", { class: "muted small-text" }, job.job_type)),
        el("td", { class: "nowrap" }, targetLink(job)),
        el("td", {}, badge(job.status)),
        timeCell(job.created_at),
      ),
    ),
    "No jobs yet.",
  );
}

function renderCharts(overview) {
  const { points, since, until, bucket_seconds: bucketSeconds } = overview.metrics;
  const series = (name, key) => ({ name, points: points.map((p) => [p.timestamp, p[key]]) });
  lineChart(
    $("#fleet-chart"),
    [series("CPU", "cpu_percent"), series("Memory", "memory_percent"), series("Disk", "disk_percent")],
    { since, until, unit: "%", max: 100, bucketSeconds, label: "Fleet CPU, memory and disk (%)" },
  );
  lineChart($("#fleet-transactions"), [series("Transactions", "transaction_count")], {
    since,
    until,
    bucketSeconds,
    label: "Fleet transactions per interval",
  });
}

async function load() {
  try {
    const overview = await api("/api/v1/overview", { query: { hours: $("#overview-hours").value } });
    renderStats(overview);
    renderTables(overview);
    renderCharts(overview);
    pageStatus(`Updated ${new Date(overview.generated_at).toLocaleTimeString()}`, "info");
  } catch (error) {
    pageStatus(`Could not load the overview: ${error.message}`);
  }
}

await startPage();
// ?hours= picks the period, so that a link can show the same charts.
const periodSelect = $("#overview-hours");
if ([...periodSelect.options].some((option) => option.value === queryParam("hours"))) periodSelect.value = queryParam("hours");
periodSelect.addEventListener("change", () => syncQuery({ hours: periodSelect.value }));
$("#overview-hours").addEventListener("change", load);
await load();
setInterval(() => {
  if (document.visibilityState === "visible") load();
}, REFRESH_MS);
