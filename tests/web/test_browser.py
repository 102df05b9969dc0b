"""The dashboard in a real browser: a whole working session lands in the analytics tables.

An admin logs in (after a failed attempt whose password is a canary), visits every page,
clicks, searches, edits a site's schedule, creates a job, raises a JavaScript error and
closes the tab. The API then shows the page views with their durations, the clicks,
searches and form submissions in one session, and the error; the schedule edit is in
site_operating_schedules; and the canary is in no column of any table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import time
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page, Response, expect
from sqlalchemy import select

from homepot.analytics.models import SiteOperatingSchedule
from homepot.auth.models import Role
from homepot.models import ALL_MODELS
from tests.helpers import create_device, create_site, create_user, db_rows, login
from tests.web.conftest import API, LiveServer

pytestmark = pytest.mark.asyncio(loop_scope="session")

CANARY = "CANARY-7f3a"


def api_call(path: str, method: str = "GET") -> Callable[[Response], bool]:
    """Matches the response to ``method`` on the API path ``path`` (query string ignored)."""
    return lambda r: r.request.method == method and r.url.split("?")[0].endswith(API + path)


async def visit(page: Page, live: LiveServer, path: str, api_path: str) -> None:
    """Open a dashboard page and wait until its script has asked the API for its data."""
    async with page.expect_response(api_call(api_path)):
        await page.goto(live.base_url + path)


async def sign_in(page: Page, live: LiveServer, email: str, password: str) -> None:
    await page.goto(f"{live.base_url}/login")
    await page.fill("#email", email)
    await page.fill("#password", password)
    async with page.expect_response(api_call("/users/me")):
        await page.click("#login-submit")
    await page.wait_for_url(f"{live.base_url}/")


async def stored_activities(live: LiveServer, headers: dict[str, str], user_id: str) -> Any:
    response = await live.client.get(
        f"{API}/analytics/user-activities",
        params={"user_id": user_id, "limit": 1000},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def canary_cells(live: LiveServer) -> list[str]:
    """Every table.column whose stored text contains the canary, over every table."""
    found: list[str] = []
    async with live.app.state.session_factory() as session:
        for model in ALL_MODELS:
            table = model.__table__
            for row in await session.execute(select(table)):
                for column, value in zip(table.columns, row, strict=True):
                    if CANARY.lower() in str(value).lower():
                        found.append(f"{model.__tablename__}.{column.name}")
    return found


async def test_a_dashboard_session_is_recorded_and_keeps_no_typed_value(
    context: BrowserContext, live: LiveServer
) -> None:
    admin = await create_user(live.app, role=Role.admin)
    site_id = await create_site(live.app, name="Camden Market")
    device_id = await create_device(live.app, site_id=site_id)
    page = await context.new_page()

    # A wrong password, typed as the canary: refused, and the form submission is tracked
    # by its id alone.
    await page.goto(f"{live.base_url}/login")
    await page.fill("#email", admin["email"])
    await page.fill("#password", CANARY)
    async with page.expect_response(api_call("/auth/token", "POST")) as refused:
        await page.click("#login-submit")
    assert (await refused.value).status == 401
    await expect(page.locator("#login-error")).not_to_be_empty()
    await page.fill("#password", admin["password"])
    async with page.expect_response(api_call("/users/me")):
        await page.click("#login-submit")
    await page.wait_for_url(f"{live.base_url}/")

    await visit(page, live, "/sites", "/sites")
    async with page.expect_response(lambda r: "q=Camden" in r.url):
        await page.fill("#site-search", "Camden")
    await page.press("#site-search", "Enter")

    await visit(page, live, f"/sites/{site_id}", f"/sites/{site_id}/hours")
    await page.fill("#open_time-0", "08:00")
    await page.fill("#close_time-0", "20:00")
    await page.fill("#peak_hours_start-0", "12:00")
    await page.fill("#peak_hours_end-0", "14:00")
    async with page.expect_response(api_call(f"/sites/{site_id}/schedules", "PUT")) as saved:
        await page.click("#schedule-save")
    assert (await saved.value).status == 200, await (await saved.value).text()
    await expect(page.locator("#schedule-status")).to_contain_text("Saved")

    await visit(page, live, "/devices", "/devices")
    async with page.expect_response(lambda r: f"q={device_id[-8:]}" in r.url):
        await page.fill("#device-search", device_id[-8:])
    await visit(page, live, f"/devices/{device_id}", f"/devices/{device_id}")

    await visit(page, live, "/jobs", "/jobs")
    await page.select_option("#job-target-type", "device")
    await page.fill("#job-target", device_id)
    await page.select_option("#job-type", "restart")
    async with page.expect_response(api_call("/jobs", "POST")) as created:
        await page.click("#job-submit")
    assert (await created.value).status == 201, await (await created.value).text()
    job_id = (await (await created.value).json())["job_id"]
    await visit(page, live, f"/jobs/{job_id}", f"/jobs/{job_id}")

    await visit(page, live, "/errors", "/errors")
    await visit(page, live, "/analytics", "/analytics/requests")
    await page.select_option("#analytics-table", "user-activities")
    async with page.expect_response(api_call("/analytics/user-activities")):
        await page.click("#analytics-apply")
    await visit(page, live, "/", "/users/me")

    async with page.expect_response(api_call("/analytics/errors", "POST")) as reported:
        await page.evaluate("setTimeout(() => { throw new Error('boom-canary-free') })")
    assert (await reported.value).status == 202
    await page.close(run_before_unload=True)

    headers = await login(live.client, admin["email"], admin["password"])
    pages = ["/login", "/", "/sites", f"/sites/{site_id}", "/devices", f"/devices/{device_id}"]
    pages += ["/jobs", f"/jobs/{job_id}", "/errors", "/analytics"]

    async def complete() -> Any:
        items = await stored_activities(live, headers, admin["id"])
        viewed = {item["page_url"] for item in items if item["activity_type"] == "page_view"}
        return items if viewed >= set(pages) else None

    items = await live.wait_for(complete) or await stored_activities(live, headers, admin["id"])
    views = [item for item in items if item["activity_type"] == "page_view"]
    assert {item["page_url"] for item in views} >= set(pages)
    assert all(item["duration_ms"] is not None and item["duration_ms"] > 0 for item in views)

    def named(kind: str) -> set[str]:
        return {item["element_id"] for item in items if item["activity_type"] == kind}

    assert {"login-submit", "schedule-save", "job-submit", "analytics-apply"} <= named("click")
    assert {"login-form", "schedule-form", "job-form", "site-filters"} <= named("form_submit")
    searches = {(i["element_id"], i["search_query"]) for i in items if i["search_query"]}
    assert ("site-search", "Camden") in searches
    assert ("device-search", device_id[-8:]) in searches
    assert len({item["session_id"] for item in items}) == 1

    errors = await live.client.get(
        f"{API}/analytics/errors", params={"error_code": "FRONTEND_ERROR"}, headers=headers
    )
    (error,) = [e for e in errors.json()["items"] if e["error_message"] == "boom-canary-free"]
    assert error["user_id"] == admin["id"]
    assert error["context"]["page_url"] == "/"
    assert "Chrome" in error["context"]["user_agent"]
    assert error["stack_trace"]

    (monday,) = await db_rows(live.app, SiteOperatingSchedule, site_id=site_id, day_of_week=0)
    assert (monday.open_time, monday.close_time) == (time(8), time(20))
    assert (monday.peak_hours_start, monday.peak_hours_end) == (time(12), time(14))

    assert await canary_cells(live) == []


async def test_a_viewer_never_sees_the_analytics_page(
    context: BrowserContext, live: LiveServer
) -> None:
    viewer = await create_user(live.app, role=Role.viewer)
    page = await context.new_page()
    await sign_in(page, live, viewer["email"], viewer["password"])
    await expect(page.locator("#user-email")).to_have_text(viewer["email"])
    await expect(page.locator("#nav-analytics")).to_have_count(0)

    await page.goto(f"{live.base_url}/analytics")
    denied = page.locator("#analytics-denied")
    await expect(denied).to_be_visible()
    await expect(denied).to_contain_text(re.compile("Admins only"))
    await expect(page.locator("#analytics-results")).to_be_hidden()

    headers = await login(live.client, viewer["email"], viewer["password"])
    response = await live.client.get(f"{API}/analytics/user-activities", headers=headers)
    assert response.status_code == 403


async def test_an_admin_sees_the_analytics_link(context: BrowserContext, live: LiveServer) -> None:
    admin = await create_user(live.app, role=Role.admin)
    page = await context.new_page()
    await sign_in(page, live, admin["email"], admin["password"])
    await expect(page.locator("#nav-analytics")).to_be_visible()


async def test_no_page_breaks_the_content_security_policy(
    context: BrowserContext, live: LiveServer
) -> None:
    admin = await create_user(live.app, role=Role.admin)
    site_id = await create_site(live.app)
    device_id = await create_device(live.app, site_id=site_id)
    page = await context.new_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    await page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "console.error('Content Security Policy violation: ' + e.violatedDirective + "
        "' ' + e.blockedURI))"
    )
    await sign_in(page, live, admin["email"], admin["password"])
    for path in (
        "/",
        "/sites",
        f"/sites/{site_id}",
        "/devices",
        f"/devices/{device_id}",
        "/jobs",
        "/errors",
        "/insights",
        "/analytics",
    ):
        response = await page.goto(f"{live.base_url}{path}")
        assert response is not None
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        await page.wait_for_load_state("networkidle")
    assert violations == []
