import { $, api, badge, deviceLink, el, fillTable, isAdmin, notFound, pageStatus, renderPager, showStatus, simulatedBadge, startPage, timeCell } from "/static/app.js";

const siteId = $("#site-root").dataset.siteId;
const form = $("#schedule-form");
const status = $("#schedule-status");
const DEVICE_LIMIT = 25;
const DAY_NAMES = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
const FIELDS = ["open_time", "close_time", "peak_hours_start", "peak_hours_end"];

function input(name, day) {
  return form.elements[`${name}-${day}`];
}

// "08:00:00" from the API fits an <input type="time"> as "08:00".
function hhmm(value) {
  return value ? value.slice(0, 5) : "";
}

function fillSchedule(week) {
  const byDay = new Map(week.days.map((day) => [day.day_of_week, day]));
  for (let day = 0; day < 7; day += 1) {
    const entry = byDay.get(day);
    for (const name of FIELDS) input(name, day).value = hhmm(entry?.[name]);
    input("is_closed", day).checked = entry ? entry.is_closed : false;
    input("is_maintenance_window", day).checked = entry ? entry.is_maintenance_window : false;
  }
  syncClosedRows();
}

function syncClosedRows() {
  for (let day = 0; day < 7; day += 1) {
    const closed = input("is_closed", day).checked;
    for (const name of FIELDS) input(name, day).disabled = closed || !isAdmin();
  }
}

// Days with nothing filled in and not closed are left out: the API deletes them.
function weekFromForm() {
  const days = [];
  for (let day = 0; day < 7; day += 1) {
    const closed = input("is_closed", day).checked;
    const value = (name) => (closed ? null : input(name, day).value || null);
    const entry = {
      day_of_week: day,
      is_closed: closed,
      is_maintenance_window: input("is_maintenance_window", day).checked,
      open_time: value("open_time"),
      close_time: value("close_time"),
      peak_hours_start: value("peak_hours_start"),
      peak_hours_end: value("peak_hours_end"),
    };
    const empty = !closed && !entry.open_time && !entry.close_time && !entry.is_maintenance_window;
    if (!empty) days.push(entry);
  }
  return days;
}

async function loadSite() {
  try {
    const site = await api(`/api/v1/sites/${encodeURIComponent(siteId)}`);
    document.querySelector("h1").replaceChildren(`${site.name} (${site.site_id})`, ...(site.simulated ? [" ", simulatedBadge("store")] : []));
    $("#site-timezone").textContent = site.timezone;
    $("#site-info").replaceChildren(
      el("dt", {}, "Time zone"), el("dd", {}, site.timezone),
      el("dt", {}, "Address"), el("dd", {}, site.address || "—"),
      el("dt", {}, "Created"), el("dd", {}, new Date(site.created_at).toLocaleString()),
    );
  } catch (error) {
    if (error.status === 404) notFound(`There is no site ${siteId}.`);
    else pageStatus(`Could not load the site: ${error.message}`);
  }
}

async function loadDevices(offset = 0) {
  try {
    const page = await api("/api/v1/devices", { query: { site_id: siteId, limit: DEVICE_LIMIT, offset } });
    fillTable(
      $("#site-devices"),
      page.items.map((device) =>
        el(
          "tr",
          {},
          el("td", { class: "nowrap" }, deviceLink(device.device_id)),
          el("td", {}, device.name, device.simulated ? [" ", simulatedBadge()] : null),
          el("td", {}, device.device_type),
          el("td", {}, badge(device.status)),
          timeCell(device.last_seen_at),
        ),
      ),
      "No terminals at this site.",
    );
    renderPager($("#site-devices-pager"), page, loadDevices);
  } catch (error) {
    pageStatus(`Could not load the terminals: ${error.message}`);
  }
}

async function loadSchedule() {
  try {
    fillSchedule(await api(`/api/v1/sites/${encodeURIComponent(siteId)}/hours`));
  } catch (error) {
    showStatus(status, `Could not load the schedule: ${error.message}`, "error");
  }
}

await startPage();
if (!isAdmin()) {
  const note = $("#schedule-note");
  note.textContent = "Read-only: only admins can change a site's schedule.";
  note.hidden = false;
  for (const field of form.elements) field.disabled = true;
  $("#schedule-save").hidden = true;
}
form.addEventListener("change", (event) => {
  if (event.target.name?.startsWith("is_closed-")) syncClosedRows();
});
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!isAdmin()) return;
  showStatus(status, "Saving…");
  $("#schedule-save").disabled = true;
  const sent = weekFromForm();
  try {
    const week = await api(`/api/v1/sites/${encodeURIComponent(siteId)}/schedules`, {
      method: "PUT",
      body: sent,
    });
    fillSchedule(week);
    showStatus(status, `Saved ${week.days.length} day(s) at ${new Date().toLocaleTimeString()}.`, "ok");
  } catch (error) {
    // The API names a day by its position in the list sent; people know it by its name.
    const message = error.message.replace(/(^|; )(\d)(\.\w+)?: /g, (whole, sep, index) =>
      sent[Number(index)] ? `${sep}${DAY_NAMES[sent[Number(index)].day_of_week]}: ` : whole,
    );
    showStatus(status, `Not saved: ${message}`, "error");
  } finally {
    $("#schedule-save").disabled = false;
  }
});
await Promise.all([loadSite(), loadDevices(0), loadSchedule()]);
