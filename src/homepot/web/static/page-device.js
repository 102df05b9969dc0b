import { $, api, badge, el, formatTime, notFound, pageStatus, queryParam, simulatedBadge, siteLink, startPage, syncQuery, timeCell, who } from "/static/app.js";
import { lineChart } from "/static/charts.js";

const deviceId = $("#device-root").dataset.deviceId;
const base = `/api/v1/devices/${encodeURIComponent(deviceId)}`;
const HISTORY_LIMIT = 20;
let statesCursor = null;
let configCursor = null;

const CHARTS = [
  ["#chart-cpu", "cpu_percent", "CPU", { unit: "%", max: 100 }],
  ["#chart-memory", "memory_percent", "Memory", { unit: "%", max: 100 }],
  ["#chart-disk", "disk_percent", "Disk", { unit: "%", max: 100 }],
  ["#chart-latency", "network_latency_ms", "Latency", { unit: " ms" }],
  ["#chart-transactions", "transaction_count", "Transactions", {}],
  ["#chart-error-rate", "error_rate", "Error rate", { unit: "%" }],
];

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

async function loadMetrics() {
  const hours = Number($("#device-hours").value);
  const until = new Date();
  const since = new Date(until.getTime() - hours * 3600000);
  try {
    const series = await api(`${base}/metrics`, {
      query: { since: since.toISOString(), until: until.toISOString(), limit: 120 },
    });
    for (const [selector, key, name, options] of CHARTS) {
      const points = series.points.map((p) => [p.timestamp, p[key]]);
      lineChart($(selector), [{ name, points }], {
        since: series.since,
        until: series.until,
        unit: options.unit,
        max: options.max,
        bucketSeconds: series.bucket_seconds,
        label: `${name} of ${deviceId}`,
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
if (await loadDevice()) {
  $("#device-hours").addEventListener("change", loadMetrics);
  $("#states-more").addEventListener("click", () => loadStates(true));
  $("#config-more").addEventListener("click", () => loadConfig(true));
  await Promise.all([loadMetrics(), loadStates(), loadConfig()]);
}
