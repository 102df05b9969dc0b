import { $, api, debounce, el, fillTable, pageStatus, queryParam, renderPager, simulatedBadge, siteLink, startPage, syncQuery } from "/static/app.js";

const LIMIT = 25;
const search = $("#site-search");

async function load(offset = 0) {
  const q = search.value.trim();
  syncQuery({ q, offset: offset || "" });
  try {
    const page = await api("/api/v1/sites", { query: { q, limit: LIMIT, offset } });
    fillTable(
      $("#sites-table"),
      page.items.map((site) =>
        el(
          "tr",
          {},
          el("td", {}, siteLink(site.site_id)),
          el("td", {}, site.name, site.simulated ? [" ", simulatedBadge("store")] : null),
          el("td", {}, site.timezone),
          el("td", {}, site.address || "—"),
        ),
      ),
      q ? `No site name contains “${q}”.` : "No sites yet.",
    );
    renderPager($("#sites-pager"), page, load);
  } catch (error) {
    pageStatus(`Could not load sites: ${error.message}`);
  }
}

await startPage();
search.value = queryParam("q") || "";
search.addEventListener("input", debounce(() => load(0)));
$("#site-filters").addEventListener("submit", (event) => {
  event.preventDefault();
  load(0);
});
await load(Number(queryParam("offset")) || 0);
