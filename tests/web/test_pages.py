"""The dashboard's pages as the server sends them: structure, accessibility, assets."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

PAGES = {
    "/login": ["login-form", "email", "password", "login-submit", "login-error"],
    "/": [
        "stat-online",
        "stat-offline",
        "stat-error",
        "recent-errors",
        "recent-jobs",
        "job-success-rate",
        "stat-critical-anomalies",
        "critical-anomalies-link",
        "fleet-chart",
    ],
    "/sites": ["site-search", "sites-table"],
    "/sites/site-001": ["site-devices", "schedule-form", "schedule-save", "schedule-status"],
    "/devices": ["device-search", "device-status-filter", "device-site-filter", "devices-table"],
    "/devices/pos-terminal-001": [
        "chart-cpu",
        "chart-memory",
        "chart-disk",
        "chart-latency",
        "chart-transactions",
        "chart-error-rate",
        "device-risk",
        "device-anomalies",
        "device-insights-link",
        "state-timeline",
        "config-history",
    ],
    "/jobs": [
        "job-form",
        "job-target-type",
        "job-target",
        "job-type",
        "job-schedule",
        "job-payload",
        "job-submit",
        "job-status",
        "jobs-table",
    ],
    "/jobs/job-0001": ["job-executions"],
    "/errors": [
        "error-category",
        "error-severity",
        "error-resolved",
        "error-search",
        "errors-table",
    ],
    "/insights": [
        "fleet-table",
        "fleet-risk-note",
        "fleet-risk-source",
        "anomaly-filters",
        "anomaly-status",
        "anomaly-severity",
        "anomaly-min-score",
        "anomaly-site",
        "anomaly-device",
        "anomaly-maintenance",
        "anomaly-period",
        "anomalies-note",
        "anomalies-table",
        "anomalies-more",
    ],
    "/analytics": [
        "analytics-table",
        "analytics-apply",
        "analytics-results",
        "analytics-more",
        "analytics-csv",
    ],
}
APP_PAGES = [path for path in PAGES if path != "/login"]


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    inside_label: bool


@dataclass
class Page(HTMLParser):
    elements: list[Element] = field(default_factory=list)
    open_labels: int = 0

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {k: v or "" for k, v in attrs}, self.open_labels > 0))
        if tag == "label":
            self.open_labels += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.open_labels -= 1

    def by_id(self, element_id: str) -> Element:
        [element] = [e for e in self.elements if e.attrs.get("id") == element_id]
        return element

    def all(self, tag: str) -> list[Element]:
        return [e for e in self.elements if e.tag == tag]


async def fetch(client: AsyncClient, path: str) -> Page:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    page = Page()
    page.feed(response.text)
    return page


@pytest.mark.parametrize("path", list(PAGES))
async def test_each_page_has_the_elements_its_script_and_tests_use(
    client: AsyncClient, path: str
) -> None:
    page = await fetch(client, path)

    for element_id in PAGES[path]:
        page.by_id(element_id)
    assert page.by_id("content").tag == "main"
    scripts = [e.attrs["src"] for e in page.all("script")]
    assert scripts[0] == "/static/analytics.js"
    assert "defer" in page.all("script")[0].attrs
    assert scripts[1].startswith("/static/page-")


@pytest.mark.parametrize("path", APP_PAGES)
async def test_every_app_page_has_the_header(client: AsyncClient, path: str) -> None:
    page = await fetch(client, path)

    [nav] = [e for e in page.all("nav") if e.attrs.get("aria-label") == "Main"]
    links = {e.attrs["href"] for e in page.all("a")}
    assert {"/", "/sites", "/devices", "/jobs", "/errors", "/insights", "/analytics"} <= links
    # The Analytics link is shown to admins only, once the page knows who is signed in.
    assert "hidden" in page.by_id("nav-analytics").attrs
    assert page.by_id("analytics-optout").attrs["type"] == "checkbox"
    assert page.by_id("logout").tag == "button"
    assert nav.tag == "nav"


@pytest.mark.parametrize("path", list(PAGES))
async def test_every_form_field_has_a_label(client: AsyncClient, path: str) -> None:
    page = await fetch(client, path)
    labelled = {e.attrs["for"] for e in page.all("label") if "for" in e.attrs}

    fields = [e for e in page.elements if e.tag in ("input", "select", "textarea")]
    assert fields
    for element in fields:
        assert element.inside_label or element.attrs.get("id") in labelled, element.attrs


async def test_search_and_login_fields_have_the_right_types(client: AsyncClient) -> None:
    for path, search_id in [("/sites", "site-search"), ("/devices", "device-search")]:
        page = await fetch(client, path)
        assert page.by_id(search_id).attrs["type"] == "search"
    login = await fetch(client, "/login")
    assert login.by_id("email").attrs["type"] == "email"
    assert login.by_id("password").attrs["type"] == "password"


async def test_the_schedule_form_has_every_weekday(client: AsyncClient) -> None:
    page = await fetch(client, "/sites/site-001")

    for day in range(7):
        for name in ("open_time", "close_time", "peak_hours_start", "peak_hours_end"):
            assert page.by_id(f"{name}-{day}").attrs["type"] == "time"
        for name in ("is_closed", "is_maintenance_window"):
            assert page.by_id(f"{name}-{day}").attrs["type"] == "checkbox"


async def test_job_form_offers_the_apis_choices(client: AsyncClient) -> None:
    page = await fetch(client, "/jobs")
    options = [e for e in page.all("option")]

    values = {e.attrs.get("value") for e in options}
    assert {"device", "site", "device_type"} <= values
    assert {"restart", "health_check", "config_change", "firmware_update"} <= values
    assert {"now", "maintenance_window"} <= values


@pytest.mark.parametrize("path", list(PAGES))
async def test_every_asset_a_page_loads_is_served(client: AsyncClient, path: str) -> None:
    page = await fetch(client, path)
    assets = [e.attrs["src"] for e in page.all("script")] + [
        e.attrs["href"] for e in page.all("link") if e.attrs.get("rel") == "stylesheet"
    ]

    for asset in assets:
        response = await client.get(asset)
        assert response.status_code == 200, asset


async def test_page_scripts_import_only_served_modules(client: AsyncClient) -> None:
    for module in ("app.js", "charts.js", "insights.js"):
        assert (await client.get(f"/static/{module}")).status_code == 200
    assert (await client.get("/static/nothing-here.js")).status_code == 404


async def test_ids_in_the_url_are_escaped(client: AsyncClient) -> None:
    response = await client.get("/devices/%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")

    assert response.status_code == 200
    assert "<img src=x" not in response.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in response.text


async def test_the_insights_filters_offer_what_the_api_takes(client: AsyncClient) -> None:
    page = await fetch(client, "/insights")

    def choices(select_id: str) -> list[str]:
        select = page.elements.index(page.by_id(select_id))
        values = []
        for element in page.elements[select + 1 :]:
            if element.tag != "option":
                break
            values.append(element.attrs.get("value", ""))
        return values

    # "any" (not empty) for every status: an empty value would fall back to the default.
    assert choices("anomaly-status") == ["active", "acknowledged", "resolved", "any"]
    assert choices("anomaly-severity") == ["", "warning", "critical"]
    assert choices("anomaly-maintenance") == ["", "exclude", "only"]
    score = page.by_id("anomaly-min-score").attrs
    assert (score["type"], score["min"], score["max"]) == ("number", "0", "100")
    assert page.by_id("anomaly-device").attrs["type"] == "search"
    # Shown to viewers only, once the page knows the role.
    assert "hidden" in page.by_id("anomalies-note").attrs
    assert "hidden" in page.by_id("fleet-risk-note").attrs


async def test_the_overview_links_its_count_to_the_same_anomalies(client: AsyncClient) -> None:
    page = await fetch(client, "/")

    link = page.by_id("critical-anomalies-link")
    assert link.attrs["href"] == "/insights?status=active&severity=critical&maintenance=exclude"


async def test_api_routes_win_over_pages(app: FastAPI, client: AsyncClient) -> None:
    unknown_api = await client.get("/api/v1/no-such-thing")
    protected = await client.get("/api/v1/sites")
    unknown_page = await client.get("/no-such-page")

    assert unknown_api.status_code == 404
    assert unknown_api.headers["content-type"].startswith("application/json")
    assert protected.status_code == 401
    assert unknown_page.status_code == 404
