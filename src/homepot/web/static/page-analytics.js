import { $, api, el, isAdmin, pageStatus, queryParam, startPage, syncQuery } from "/static/app.js";

const text = (name, label, placeholder = "") => ({ name, label, kind: "text", placeholder });
const number = (name, label) => ({ name, label, kind: "number" });
const choice = (name, label, options) => ({ name, label, kind: "select", options });
const YES_NO = ["true", "false"];

// Each table's filters, as GET /api/v1/analytics/<table> accepts them.
const TABLES = {
  requests: [
    text("endpoint", "Endpoint", "/api/v1/devices"),
    text("route", "Route", "/api/v1/devices/{device_id}"),
    choice("method", "Method", ["GET", "POST", "PUT", "PATCH", "DELETE"]),
    number("status_code", "Status code"),
    text("user_id", "User id"),
    number("min_response_time_ms", "Min. response time (ms)"),
  ],
  "device-states": [text("device_id", "Device id"), text("previous_state", "Previous state"), text("new_state", "New state"), text("changed_by", "Changed by")],
  jobs: [text("job_id", "Job id"), text("job_type", "Job type"), text("device_id", "Device id"), choice("status", "Status", ["success", "failed", "timeout", "cancelled"])],
  errors: [
    choice("category", "Category", ["api", "database", "external_service", "validation"]),
    choice("severity", "Severity", ["critical", "error", "warning", "info"]),
    text("error_code", "Error code"),
    text("device_id", "Device id"),
    choice("resolved", "Resolved", YES_NO),
  ],
  "user-activities": [text("user_id", "User id"), text("session_id", "Session id"), text("activity_type", "Activity type", "page_view"), text("page_url", "Page URL")],
  "device-metrics": [text("device_id", "Device id")],
  "config-history": [
    choice("entity_type", "Entity type", ["device", "site", "system"]),
    text("entity_id", "Entity id"),
    text("parameter_name", "Parameter"),
    choice("change_type", "Change type", ["manual", "automated", "ai_recommended"]),
  ],
  "site-schedules": [text("site_id", "Site id"), choice("day_of_week", "Day of week", ["0", "1", "2", "3", "4", "5", "6"])],
};
// Every table tells real rows from the simulation's.
for (const fields of Object.values(TABLES)) fields.push(choice("source", "Source", ["device", "simulated"]));

const state = { table: null, query: null, cursor: null, rows: [], columns: [] };

function renderFilters() {
  const box = $("#analytics-filters");
  box.replaceChildren(
    ...TABLES[$("#analytics-table").value].map((field) => {
      const id = `filter-${field.name}`;
      const control =
        field.kind === "select"
          ? el("select", { id, name: field.name }, el("option", { value: "" }, "any"), field.options.map((o) => el("option", { value: o }, o)))
          : el("input", { id, name: field.name, type: field.kind, placeholder: field.placeholder || null, min: field.kind === "number" ? 0 : null });
      return el("div", {}, el("label", { for: id }, field.label), control);
    }),
  );
}

function isoOrEmpty(value) {
  return value ? new Date(value).toISOString() : "";
}

function queryFromForm() {
  const query = {
    start_date: isoOrEmpty($("#analytics-start").value),
    end_date: isoOrEmpty($("#analytics-end").value),
    limit: $("#analytics-limit").value || 100,
  };
  for (const field of TABLES[$("#analytics-table").value]) query[field.name] = $(`#filter-${field.name}`).value.trim();
  return query;
}

function cellText(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function renderRows() {
  const columns = state.columns;
  const table = $("#analytics-results");
  table.tHead.replaceChildren(el("tr", {}, columns.map((name) => el("th", { scope: "col" }, name))));
  table.tBodies[0].replaceChildren(
    ...(state.rows.length
      ? state.rows.map((row) => el("tr", {}, columns.map((name) => el("td", {}, cellText(row[name])))))
      : [el("tr", {}, el("td", { class: "empty", colspan: Math.max(columns.length, 1) }, "No rows match."))]),
  );
  $("#analytics-count").textContent = `${state.rows.length} row(s) shown${state.cursor ? "; more available" : ""}.`;
  $("#analytics-more").hidden = !state.cursor;
  $("#analytics-csv").disabled = !state.rows.length;
}

async function load(more = false) {
  if (!more) {
    state.table = $("#analytics-table").value;
    state.query = queryFromForm();
    state.rows = [];
    state.cursor = null;
  }
  try {
    const page = await api(`/api/v1/analytics/${state.table}`, { query: { ...state.query, cursor: more ? state.cursor : null } });
    state.rows.push(...page.items);
    state.cursor = page.next_cursor;
    const seen = new Set(state.columns.length && more ? state.columns : []);
    for (const row of state.rows) for (const name of Object.keys(row)) seen.add(name);
    state.columns = [...seen];
    pageStatus("", "info");
    renderRows();
  } catch (error) {
    if (error.status === 403) showDenied();
    else pageStatus(`Could not load ${state.table}: ${error.message}`);
  }
}

function csvField(value) {
  const textValue = cellText(value);
  return /[",\n\r]/.test(textValue) ? `"${textValue.replace(/"/g, '""')}"` : textValue;
}

function downloadCsv() {
  const lines = [state.columns.map(csvField).join(",")];
  for (const row of state.rows) lines.push(state.columns.map((name) => csvField(row[name])).join(","));
  const blob = new Blob([`${lines.join("\r\n")}\r\n`], { type: "text/csv" });
  const link = el("a", { href: URL.createObjectURL(blob), download: `homepot-${state.table}-${new Date().toISOString().slice(0, 19).replace(/:/g, "")}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function showDenied() {
  $("#analytics-denied").hidden = false;
  $("#analytics-panel").hidden = true;
}

await startPage();
if (!isAdmin()) {
  showDenied();
} else {
  $("#analytics-panel").hidden = false;
  // ?table= opens that table, so that a link can point at one stream.
  if (queryParam("table") in TABLES) $("#analytics-table").value = queryParam("table");
  renderFilters();
  $("#analytics-table").addEventListener("change", () => {
    renderFilters();
    syncQuery({ table: $("#analytics-table").value });
  });
  $("#analytics-form").addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  $("#analytics-more").addEventListener("click", () => load(true));
  $("#analytics-csv").addEventListener("click", downloadCsv);
  await load();
}
