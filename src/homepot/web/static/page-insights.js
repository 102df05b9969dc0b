import { $, api, badge, canOperate, debounce, deviceLink, el, formatTime, pageStatus, queryParam, siteLink, startPage, syncQuery } from "/static/app.js";
import { sparkline } from "/static/charts.js";
import { METRICS, factorItem, metricName } from "/static/insights.js";

const LIMIT = 25;
const FLEET_LIMIT = 50;
const TOP_FACTORS = 3;
// Severity follows the score (see the README's "Reading a score").
const SEVERITY_SCORES = { warning: 45, critical: 75 };
const FILTERS = {
  status: "#anomaly-status",
  severity: "#anomaly-severity",
  min_score: "#anomaly-min-score",
  site_id: "#anomaly-site",
  device_id: "#anomaly-device",
  maintenance: "#anomaly-maintenance",
  period: "#anomaly-period",
};
// A sparkline shows an hour of the metric either side of the episode, within the hours the
// device endpoint serves (at most 72); a few widths, so that rows of one device share a request.
const CONTEXT_MS = 3600000;
const BAND_HOURS = [6, 24, 72];
const MAX_PARALLEL_BANDS = 2;
const ACTIONS = {
  active: [["acknowledged", "Acknowledge"], ["resolved", "Resolve"]],
  acknowledged: [["resolved", "Resolve"], ["active", "Reopen"]],
  resolved: [["active", "Reopen"]],
};
let cursor = null;

function duration(ms) {
  const minutes = Math.max(1, Math.round(ms / 60000));
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
}

// --- devices at risk ------------------------------------------------------------------------

function riskCell(device) {
  const risk = device.risk;
  if (!risk) return el("td", { class: "muted" }, "not scored yet");
  const horizon = duration(risk.horizon_minutes * 60000);
  const basis = risk.model === "anomalies" ? "from its anomalies" : `model ${risk.model}`;
  return el(
    "td",
    { class: "nowrap risk-cell" },
    el("meter", { min: 0, max: 1, low: 0.3, high: 0.6, optimum: 0, value: risk.risk, "aria-hidden": "true" }),
    " ",
    el("strong", { class: "risk-value", title: `${Math.round(risk.risk * 100)} % chance of a failure within ${horizon}` }, risk.risk.toFixed(2)),
    el("div", { class: "muted small-text" }, `within ${horizon}, ${basis}`),
  );
}

function factorList(factors) {
  if (!factors.length) return el("span", { class: "muted" }, "—");
  return el("ul", { class: "factor-list" }, factors.slice(0, TOP_FACTORS).map(factorItem));
}

function fleetRow(device, index) {
  const activeLink = el(
    "a",
    // Under way counts acknowledged episodes too: the link lists every status, newest first.
    { href: `/insights?${new URLSearchParams({ device_id: device.device_id, status: "any" })}`, title: `Every anomaly of ${device.device_id}` },
    String(device.active_anomalies.length),
  );
  return el(
    "tr",
    { id: `fleet-${device.device_id}`, dataset: { deviceId: device.device_id } },
    el("td", { class: "muted" }, String(index + 1)),
    el("td", { class: "nowrap" }, deviceLink(device.device_id), device.site_id ? el("div", { class: "muted small-text" }, "site ", siteLink(device.site_id)) : null),
    riskCell(device),
    el("td", { class: "factors" }, factorList(device.risk?.factors || [])),
    el("td", { class: "nowrap" }, device.worst_severity ? [badge(device.worst_severity), ` score ${device.top_score}`] : el("span", { class: "muted" }, "none")),
    el("td", {}, activeLink),
  );
}

async function loadFleet() {
  try {
    const ranking = await api("/api/v1/insights/fleet", { query: { limit: FLEET_LIMIT } });
    const fromAnomalies = ranking.risk_source === "anomalies";
    $("#fleet-risk-note").hidden = !fromAnomalies;
    $("#fleet-risk-source").textContent = fromAnomalies ? "Ranked by anomaly scores: no risk model loaded" : "Ranked by the failure-risk model";
    const rows = ranking.devices.map(fleetRow);
    $("#fleet-table").tBodies[0].replaceChildren(
      ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No device has an active anomaly or a risk of 0.05 or more."))]),
    );
  } catch (error) {
    pageStatus(`Could not load the devices at risk: ${error.message}`);
  }
}

// --- sparklines -----------------------------------------------------------------------------

const bandRequests = new Map();
const waiting = [];
let running = 0;

// A few requests at a time: each computes the baselines of the device's site.
function schedule(task) {
  waiting.push(task);
  startWaiting();
}

function startWaiting() {
  while (running < MAX_PARALLEL_BANDS && waiting.length) {
    running += 1;
    waiting.shift()().finally(() => {
      running -= 1;
      startWaiting();
    });
  }
}

function deviceBands(deviceId, hours) {
  const key = `${deviceId}|${hours}`;
  if (!bandRequests.has(key)) {
    bandRequests.set(key, api(`/api/v1/insights/devices/${encodeURIComponent(deviceId)}`, { query: { hours } }));
  }
  return bandRequests.get(key);
}

function noChart(text) {
  return el("span", { class: "muted small-text no-chart" }, text);
}

function noChartReason(anomaly) {
  if (anomaly.metric === "reporting") return "No chart: a silence has no samples.";
  if (!anomaly.device_id) return "No device chart for this episode.";
  return "No chart for this metric.";
}

// What a row's sparkline shows, or null when the episode has no device metric to draw.
function sparkPlan(anomaly, now) {
  const spec = METRICS[anomaly.metric];
  if (!spec || !anomaly.device_id) return null;
  const started = new Date(anomaly.started_at).getTime();
  const ended = anomaly.ended_at ? new Date(anomaly.ended_at).getTime() : now;
  const since = started - CONTEXT_MS;
  const until = Math.min(ended + CONTEXT_MS, now);
  const hours = BAND_HOURS.find((h) => h >= (now - since) / 3600000) ?? BAND_HOURS.at(-1);
  const oldest = now - hours * 3600000;
  if (until <= oldest) return { spec, tooOld: true };
  return { spec, hours, since: Math.max(since, oldest), until, highlight: [started, ended] };
}

function chartCell(anomaly) {
  const plan = sparkPlan(anomaly, Date.now());
  if (plan === null) return el("td", {}, noChart(noChartReason(anomaly)));
  if (plan.tooOld) return el("td", {}, noChart(`Older than ${BAND_HOURS.at(-1)} h: see the device's page.`));
  const holder = el("div", { class: "sparkline", dataset: { metric: anomaly.metric } }, noChart("Loading…"));
  schedule(async () => {
    try {
      const insights = await deviceBands(anomaly.device_id, plan.hours);
      const band = insights.bands.find((item) => item.metric === anomaly.metric);
      if (!band) {
        holder.replaceChildren(noChart("No series for this metric."));
        return;
      }
      sparkline(holder, band, {
        since: plan.since,
        until: plan.until,
        highlight: plan.highlight,
        unit: plan.spec.unit,
        label: `${plan.spec.label} of ${anomaly.device_id} against its expected range`,
      });
    } catch (error) {
      holder.replaceChildren(noChart(`No chart: ${error.message}`));
    }
  });
  return el("td", { class: "spark-cell" }, holder, el("div", { class: "muted small-text" }, "shaded: the episode; band: expected range"));
}

// --- anomalies ------------------------------------------------------------------------------

function statusCell(anomaly) {
  const cell = el("td", { class: "status-cell" }, badge(anomaly.status));
  if (canOperate()) {
    const buttons = (ACTIONS[anomaly.status] || []).map(([status, label]) =>
      el(
        "button",
        {
          type: "button",
          class: status === "acknowledged" ? "anomaly-action small" : "anomaly-action small secondary",
          dataset: { anomalyId: anomaly.id, status },
          "aria-label": `${label} anomaly ${anomaly.id}`,
        },
        label,
      ),
    );
    cell.append(el("div", { class: "row-actions" }, buttons));
  }
  return cell;
}

function whereCell(anomaly) {
  let subject;
  if (anomaly.device_id) subject = deviceLink(anomaly.device_id);
  else if (anomaly.site_id) subject = el("span", {}, "whole site");
  else subject = el("span", {}, "server API");
  return el(
    "td",
    { class: "nowrap" },
    subject,
    anomaly.site_id ? el("div", { class: "muted small-text" }, "site ", siteLink(anomaly.site_id)) : null,
    el("div", { class: "small-text" }, metricName(anomaly.metric), el("span", { class: "muted" }, ` · ${anomaly.detector}`)),
  );
}

function whatCell(anomaly) {
  const started = new Date(anomaly.started_at);
  const span = anomaly.ended_at
    ? `ended ${formatTime(anomaly.ended_at)}, after ${duration(new Date(anomaly.ended_at) - started)}`
    : `under way for ${duration(Date.now() - started)}`;
  return el(
    "td",
    { class: "message" },
    anomaly.expected_maintenance
      ? el("div", {}, el("span", { class: "badge badge-expected", title: "Began inside the site's maintenance window: stored, never alerts" }, "expected maintenance"))
      : null,
    el("p", { class: "explanation" }, anomaly.explanation),
    el("div", { class: "muted small-text" }, "started ", el("time", { datetime: anomaly.started_at, title: started.toLocaleString() }, formatTime(anomaly.started_at)), `, ${span}`),
  );
}

function anomalyRow(anomaly) {
  return el(
    "tr",
    { id: `anomaly-${anomaly.id}`, class: anomaly.expected_maintenance ? "expected-maintenance" : null, dataset: { severity: anomaly.severity } },
    el("td", { class: "nowrap" }, badge(anomaly.severity), el("div", { class: "score", title: "Score 0 to 100: how far from normal, or how soon the limit" }, String(anomaly.score))),
    whereCell(anomaly),
    whatCell(anomaly),
    chartCell(anomaly),
    statusCell(anomaly),
  );
}

function filterValues() {
  return Object.fromEntries(Object.entries(FILTERS).map(([name, selector]) => [name, $(selector).value.trim()]));
}

function anomalyQuery(values) {
  const scores = [SEVERITY_SCORES[values.severity], values.min_score === "" ? undefined : Number(values.min_score)];
  const known = scores.filter((score) => score !== undefined);
  const maintenance = { exclude: "false", only: "true" }[values.maintenance];
  return {
    status: values.status === "any" ? undefined : values.status,
    min_score: known.length ? Math.max(...known) : undefined,
    site_id: values.site_id,
    device_id: values.device_id,
    expected_maintenance: maintenance,
    start_date: values.period ? new Date(Date.now() - Number(values.period) * 3600000).toISOString() : undefined,
  };
}

async function loadAnomalies(more = false) {
  const values = filterValues();
  if (!more) syncQuery(values);
  try {
    const page = await api("/api/v1/insights/anomalies", { query: { ...anomalyQuery(values), limit: LIMIT, cursor: more ? cursor : null } });
    const tbody = $("#anomalies-table").tBodies[0];
    const rows = page.items.map(anomalyRow);
    if (more) tbody.append(...rows);
    else tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No anomaly matches these filters."))]));
    cursor = page.next_cursor;
    $("#anomalies-more").hidden = !cursor;
  } catch (error) {
    pageStatus(`Could not load the anomalies: ${error.message}`);
  }
}

async function changeStatus(button) {
  const { anomalyId, status } = button.dataset;
  const row = document.getElementById(`anomaly-${anomalyId}`);
  const buttons = [...row.querySelectorAll("button.anomaly-action")];
  for (const each of buttons) each.disabled = true;
  try {
    const updated = await api(`/api/v1/insights/anomalies/${anomalyId}`, { method: "PATCH", body: { status } });
    row.querySelector("td.status-cell").replaceWith(statusCell(updated));
    pageStatus(`Anomaly ${anomalyId} ${updated.status === "active" ? "reopened" : updated.status}.`, "ok");
    await loadFleet();
  } catch (failure) {
    for (const each of buttons) each.disabled = false;
    pageStatus(`Could not update anomaly ${anomalyId}: ${failure.message}`);
  }
}

// The site filter lists the first sites by id; a site further down is reachable by ?site_id=.
async function loadSites(selected) {
  const select = $("#anomaly-site");
  try {
    const page = await api("/api/v1/sites", { query: { limit: 500 } });
    for (const site of page.items) select.append(el("option", { value: site.site_id }, `${site.name} (${site.site_id})`));
  } catch (error) {
    pageStatus(`Could not load the sites: ${error.message}`);
  }
  if (selected && ![...select.options].some((option) => option.value === selected)) select.append(el("option", { value: selected }, selected));
  select.value = selected || "";
}

await startPage();
$("#anomalies-note").hidden = canOperate();
for (const [name, selector] of Object.entries(FILTERS)) {
  const value = queryParam(name);
  const field = $(selector);
  if (value === null || name === "site_id") continue;
  if (field.tagName === "SELECT" && ![...field.options].some((option) => option.value === value)) continue;
  field.value = value;
}
await loadSites(queryParam("site_id"));
for (const selector of ["#anomaly-status", "#anomaly-severity", "#anomaly-site", "#anomaly-maintenance", "#anomaly-period"]) {
  $(selector).addEventListener("change", () => loadAnomalies());
}
for (const selector of ["#anomaly-min-score", "#anomaly-device"]) $(selector).addEventListener("input", debounce(() => loadAnomalies()));
$("#anomaly-filters").addEventListener("submit", (event) => {
  event.preventDefault();
  loadAnomalies();
});
$("#anomalies-table").addEventListener("click", (event) => {
  const button = event.target.closest("button.anomaly-action");
  if (button) changeStatus(button);
});
$("#anomalies-more").addEventListener("click", () => loadAnomalies(true));
await Promise.all([loadFleet(), loadAnomalies()]);
