import { $, api, badge, debounce, deviceLink, el, isAdmin, pageStatus, queryParam, startPage, syncQuery, timeCell } from "/static/app.js";

const LIMIT = 50;
const FILTERS = { category: "#error-category", severity: "#error-severity", resolved: "#error-resolved", device_id: "#error-search" };
let cursor = null;

function filters() {
  return Object.fromEntries(Object.entries(FILTERS).map(([name, selector]) => [name, $(selector).value.trim()]));
}

// Error codes such as JOB_PUSH_UNACKNOWLEDGED may wrap after an underscore, not mid-word.
function breakable(code) {
  return code.split("_").flatMap((part, index) => (index ? ["_", el("wbr"), part] : [part]));
}

function stateCell(error) {
  if (error.resolved) {
    return el("td", {}, badge("resolved"), el("span", { class: "muted" }, ` ${error.resolved_at ? new Date(error.resolved_at).toLocaleString() : ""}`));
  }
  if (!isAdmin()) return el("td", {}, badge("open"));
  return el(
    "td",
    {},
    el("button", { type: "button", class: "resolve-error small", "data-error-id": error.id, "aria-label": `Resolve error ${error.id}` }, "Resolve"),
  );
}

function row(error) {
  return el(
    "tr",
    { id: `error-${error.id}` },
    timeCell(error.timestamp),
    el("td", {}, badge(error.severity), el("div", { class: "muted small-text" }, error.category)),
    el("td", { class: "code" }, error.error_code ? el("code", {}, breakable(error.error_code)) : "—"),
    el("td", { class: "message" }, error.error_message),
    el("td", { class: "nowrap" }, deviceLink(error.device_id)),
    stateCell(error),
  );
}

async function load(more = false) {
  const current = filters();
  if (!more) syncQuery(current);
  try {
    const page = await api("/api/v1/errors", { query: { ...current, limit: LIMIT, cursor: more ? cursor : null } });
    const tbody = $("#errors-table").tBodies[0];
    const rows = page.items.map(row);
    if (more) tbody.append(...rows);
    else tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No errors match these filters."))]));
    cursor = page.next_cursor;
    $("#errors-more").hidden = !cursor;
  } catch (error) {
    pageStatus(`Could not load errors: ${error.message}`);
  }
}

async function resolve(button) {
  const id = button.dataset.errorId;
  button.disabled = true;
  try {
    const error = await api(`/api/v1/analytics/errors/${id}`, { method: "PATCH", body: { resolved: true } });
    const replacement = $("#error-resolved").value === "false" ? null : row(error);
    const current = document.getElementById(`error-${id}`);
    if (replacement) current.replaceWith(replacement);
    else current.remove();
    pageStatus(`Error ${id} resolved.`, "ok");
  } catch (failure) {
    button.disabled = false;
    pageStatus(`Could not resolve error ${id}: ${failure.message}`);
  }
}

await startPage();
$("#errors-note").hidden = isAdmin();
for (const [name, selector] of Object.entries(FILTERS)) {
  const value = queryParam(name);
  if (value !== null) $(selector).value = value;
}
for (const selector of ["#error-category", "#error-severity", "#error-resolved"]) $(selector).addEventListener("change", () => load());
$("#error-search").addEventListener("input", debounce(() => load()));
$("#error-filters").addEventListener("submit", (event) => {
  event.preventDefault();
  load();
});
$("#errors-table").addEventListener("click", (event) => {
  const button = event.target.closest("button.resolve-error");
  if (button) resolve(button);
});
$("#errors-more").addEventListener("click", () => load(true));
await load();
