import { $, api, badge, el, formatTime, notFound, pageStatus, queryParam, simulatedBadge, siteLink, startPage, syncQuery, timeCell, who } from "/static/app.js";
import { lineChart } from "/static/charts.js";
import { factorItem, metricName } from "/static/insights.js";

const deviceId = $("#device-root").dataset.deviceId;
const base = `/api/v1/devices/${encodeURIComponent(deviceId)}`;
const HISTORY_LIMIT = 20;
let statesCursor = null;
let configCursor = null;

// [chart, metrics field, name, options]; options.band names the metric of the insights' bands.
const CHARTS = [
  ["#chart-cpu", "cpu_percent", "CPU", { unit: "%", max: 100, band: "cpu" }],
  ["#chart-memory", "memory_percent", "Memory", { unit: "%", max: 100, band: "memory" }],
  ["#chart-disk", "disk_percent", "Disk", { unit: "%", max: 100, band: "disk" }],
  ["#chart-latency", "network_latency_ms", "Latency", { unit: " ms", band: "network_latency" }],
  ["#chart-transactions", "transaction_count", "Transactions", { band: "transactions", perMinute: true }],
  ["#chart-error-rate", "error_rate", "Error rate", { unit: "%", band: "error_rate" }],
];
// GET /insights/devices/{id} serves bands for 1 to 72 hours back.
const MAX_BAND_HOURS = 72;

async function loadDevice() {
  try {
    const device = await api(base);
    document.querySelector("h1").replaceChildren(`${device.name} (${device.device_id})`, ...(device.simulated ? [" ", simulatedBadge()] : []));
    $("#device-info").replaceChildren(
      el("dt", {}, "Status"), el("dd", {}, badge(device.status)),
      el("dt", {}, "Data"), el("dd", { id: "device-provenance" }, device.simulated ? simulatedBadge() : "real terminal"),
      el("dt", {}, "Site"), el("dd", {}, siteLink(device.site_id)),
      el("dt", {}, "Type"), el("dd", {}, device.device_type),
      el("dt", {}, "Firmware"), el("dd", {}, device.firmware_version || "—"),
      el("dt", {}, "IP address"), el("dd", {}, device.ip_address || "—"),
      el("dt", {}, "Last seen"), el("dd", {}, formatTime(device.last_seen_at)),
    );
    return true;
  } catch (error) {
    if (error.status === 404) notFound(`There is no device ${deviceId}.`);
    else pageStatus(`Could not load the device: ${error.message}`);
    return false;
  }
}

// The band in the chart's units: transactions come per minute, the chart counts per bucket.
function chartBand(band, options, bucketSeconds) {
  if (!band) return undefined;
  if (!options.perMinute) return band;
  const scale = (values) => values.map((value) => (value === null ? null : (value * bucketSeconds) / 60));
  return { ...band, lower: scale(band.lower), upper: scale(band.upper), expected: scale(band.expected) };
}

function riskFacts(insights) {
  const risk = insights.risk;
  if (!risk) {
    return [el("dt", {}, "Risk"), el("dd", { id: "device-risk-value", class: "muted" }, "Not scored yet: the server scores each device that reported in the last 6 h.")];
  }
  const horizon = risk.horizon_minutes % 60 ? `${risk.horizon_minutes} min` : `${risk.horizon_minutes / 60} h`;
  const factors = risk.factors.length
    ? el("ul", { class: "factor-list", id: "device-risk-factors" }, risk.factors.map(factorItem))
    : el("span", { class: "muted", id: "device-risk-factors" }, "none: nothing stands out");
  return [
    el("dt", {}, "Risk"),
    el(
      "dd",
      { id: "device-risk-value" },
      el("meter", { min: 0, max: 1, low: 0.3, high: 0.6, optimum: 0, value: risk.risk, "aria-hidden": "true" }),
      " ",
      el("strong", { class: "risk-value" }, risk.risk.toFixed(2)),
      el("span", { class: "muted" }, ` chance of a failure within ${horizon} (scored ${formatTime(risk.computed_at)})`),
    ),
    el("dt", {}, "Based on"),
    el(
      "dd",
      {},
      insights.risk_source === "anomalies" ? "its active anomaly scores: no failure-risk model is loaded" : `the failure-risk model ${risk.model}`,
    ),
    el("dt", {}, "Factors"),
    el("dd", {}, factors),
  ];
}

function renderInsights(insights) {
  $("#device-risk").replaceChildren(...riskFacts(insights));
  const rows = insights.anomalies.map((anomaly) =>
    el(
      "tr",
      { class: anomaly.expected_maintenance ? "expected-maintenance" : null },
      timeCell(anomaly.started_at),
      el("td", { class: "nowrap" }, badge(anomaly.severity), ` ${anomaly.score}`),
      el("td", {}, metricName(anomaly.metric)),
      el("td", { class: "message" }, anomaly.expected_maintenance ? [el("span", { class: "badge badge-expected" }, "expected maintenance"), " "] : null, anomaly.explanation),
      el("td", {}, badge(anomaly.status), anomaly.ended_at ? null : el("div", { class: "muted small-text" }, "under way")),
    ),
  );
  $("#device-anomalies").tBodies[0].replaceChildren(
    ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No anomaly in this period."))]),
  );
}

async function loadInsights(hours) {
  try {
    const insights = await api(`/api/v1/insights/devices/${encodeURIComponent(deviceId)}`, {
      // An hour more than the period: the band's bins start on 5-minute marks before it.
      query: { hours: Math.min(Math.ceil(hours) + 1, MAX_BAND_HOURS) },
    });
    renderInsights(insights);
    return insights;
  } catch (error) {
    $("#device-risk").replaceChildren(el("dt", {}, "Risk"), el("dd", { class: "muted" }, `Could not load: ${error.message}`));
    return null;
  }
}

async function loadMetrics() {
  const hours = Number($("#device-hours").value);
  const until = new Date();
  const since = new Date(until.getTime() - hours * 3600000);
  const insights = loadInsights(hours);
  try {
    const series = await api(`${base}/metrics`, {
      query: { since: since.toISOString(), until: until.toISOString(), limit: 120 },
    });
    const bands = Object.fromEntries(((await insights)?.bands || []).map((band) => [band.metric, band]));
    for (const [selector, key, name, options] of CHARTS) {
      const points = series.points.map((p) => [p.timestamp, p[key]]);
      lineChart($(selector), [{ name, points }], {
        since: series.since,
        until: series.until,
        unit: options.unit,
        max: options.max,
        bucketSeconds: series.bucket_seconds,
        label: `${name} of ${deviceId}`,
        band: chartBand(bands[options.band], options, series.bucket_seconds),
        bandLabel: "expected range",
      });
    }
  } catch (error) {
    pageStatus(`Could not load the metrics: ${error.message}`);
  }
}

async function loadStates(more = false) {
  try {
    const page = await api(`${base}/states`, { query: { limit: HISTORY_LIMIT, cursor: more ? statesCursor : null } });
    const items = page.items.map((change) =>
      el(
        "li",
        {},
        el("time", { datetime: change.timestamp }, formatTime(change.timestamp)),
        " ",
        change.previous_state ? badge(change.previous_state) : "",
        change.previous_state ? " → " : "",
        badge(change.new_state),
        el("span", { class: "muted" }, " by ", who(change.changed_by), change.reason ? `: ${change.reason}` : ""),
      ),
    );
    const list = $("#state-timeline");
    if (more) list.append(...items);
    else list.replaceChildren(...(items.length ? items : [el("li", { class: "empty" }, "No state changes recorded.")]));
    statesCursor = page.next_cursor;
    $("#states-more").hidden = !statesCursor;
  } catch (error) {
    pageStatus(`Could not load the state timeline: ${error.message}`);
  }
}

function jsonText(value) {
  if (value === null || value === undefined) return "—";
  const shown = value && typeof value === "object" && "value" in value && Object.keys(value).length === 1 ? value.value : value;
  return typeof shown === "string" ? shown : JSON.stringify(shown);
}

// Short values stay on one line; long ones wrap.
function valueCell(value) {
  const shown = jsonText(value);
  return el("td", { class: shown.length <= 32 ? "nowrap" : null }, el("code", {}, shown));
}

async function loadConfig(more = false) {
  try {
    const page = await api(`${base}/config-history`, { query: { limit: HISTORY_LIMIT, cursor: more ? configCursor : null } });
    const rows = page.items.map((change) =>
      el(
        "tr",
        {},
        timeCell(change.timestamp),
        el("td", {}, el("code", {}, change.parameter_name)),
        valueCell(change.old_value),
        valueCell(change.new_value),
        el("td", {}, who(change.changed_by)),
        el("td", {}, change.change_reason || "—"),
      ),
    );
    const tbody = $("#config-history").tBodies[0];
    if (more) tbody.append(...rows);
    else tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No configuration changes recorded."))]));
    configCursor = page.next_cursor;
    $("#config-more").hidden = !configCursor;
  } catch (error) {
    pageStatus(`Could not load the configuration history: ${error.message}`);
  }
}

await startPage();
// ?hours= picks the period, so that a link can show the same charts.
const periodSelect = $("#device-hours");
if ([...periodSelect.options].some((option) => option.value === queryParam("hours"))) periodSelect.value = queryParam("hours");
periodSelect.addEventListener("change", () => syncQuery({ hours: periodSelect.value }));
$("#device-insights-link").href = `/insights?${new URLSearchParams({ device_id: deviceId, status: "any" })}`;
if (await loadDevice()) {
  $("#device-hours").addEventListener("change", loadMetrics);
  $("#states-more").addEventListener("click", () => loadStates(true));
  $("#config-more").addEventListener("click", () => loadConfig(true));
  await Promise.all([loadMetrics(), loadStates(), loadConfig()]);
}
