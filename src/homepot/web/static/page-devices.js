import { $, api, badge, debounce, deviceLink, el, fillTable, pageStatus, queryParam, renderPager, simulatedBadge, siteLink, startPage, syncQuery, timeCell } from "/static/app.js";

const LIMIT = 50;
const search = $("#device-search");
const statusFilter = $("#device-status-filter");
const siteFilter = $("#device-site-filter");

// The site filter lists the first sites by id; a site further down is reachable by ?site_id=.
async function loadSites(selected) {
  try {
    const page = await api("/api/v1/sites", { query: { limit: 500 } });
    for (const site of page.items) siteFilter.append(el("option", { value: site.site_id }, `${site.name} (${site.site_id})`));
    if (selected && !page.items.some((site) => site.site_id === selected)) siteFilter.append(el("option", { value: selected }, selected));
    siteFilter.value = selected || "";
  } catch (error) {
    pageStatus(`Could not load the sites: ${error.message}`);
  }
}

async function load(offset = 0) {
  const filters = { q: search.value.trim(), status: statusFilter.value, site_id: siteFilter.value };
  syncQuery({ ...filters, offset: offset || "" });
  try {
    const page = await api("/api/v1/devices", { query: { ...filters, limit: LIMIT, offset } });
    $("#devices-count").textContent = `${page.total} device(s) match.`;
    fillTable(
      $("#devices-table"),
      page.items.map((device) =>
        el(
          "tr",
          {},
          el("td", { class: "nowrap" }, deviceLink(device.device_id)),
          el("td", {}, device.name, device.simulated ? [" ", simulatedBadge()] : null),
          el("td", {}, siteLink(device.site_id)),
          el("td", {}, device.device_type),
          el("td", {}, badge(device.status)),
          el("td", {}, device.firmware_version || "—"),
          timeCell(device.last_seen_at),
        ),
      ),
      "No device matches these filters.",
    );
    renderPager($("#devices-pager"), page, load);
  } catch (error) {
    pageStatus(`Could not load devices: ${error.message}`);
  }
}

await startPage();
search.value = queryParam("q") || "";
statusFilter.value = queryParam("status") || "";
await loadSites(queryParam("site_id"));
search.addEventListener("input", debounce(() => load(0)));
statusFilter.addEventListener("change", () => load(0));
siteFilter.addEventListener("change", () => load(0));
$("#device-filters").addEventListener("submit", (event) => {
  event.preventDefault();
  load(0);
});
await load(Number(queryParam("offset")) || 0);
