"""The job form in a real browser: the expected success and the riskiest targets show before
the job is created, and follow the job type and the target as they change."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from playwright.async_api import BrowserContext, expect

from homepot.auth.models import Role
from tests.helpers import create_device, create_site, create_user
from tests.insights.test_job_success import create_job_outcomes
from tests.web.conftest import LiveServer
from tests.web.test_browser import api_call, sign_in, visit

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_job_form_shows_the_odds_and_the_riskiest_targets_before_creating(
    context: BrowserContext, live: LiveServer
) -> None:
    operator = await create_user(live.app, role=Role.operator)
    site_id = await create_site(live.app, name="Harbour Road")
    flaky = await create_device(live.app, site_id=site_id, device_id="pos-harbour-flaky")
    steady = await create_device(live.app, site_id=site_id, device_id="pos-harbour-steady")
    start = datetime.now(UTC) - timedelta(days=5)
    await create_job_outcomes(
        live.app,
        [
            (flaky, "firmware_update", status, start + timedelta(days=day))
            for day, status in enumerate(("timeout", "success", "timeout", "timeout"))
        ]
        + [
            (steady, "firmware_update", "success", start + timedelta(days=day, hours=1))
            for day in range(4)
        ],
    )
    page = await context.new_page()
    await sign_in(page, live, operator["email"], operator["password"])
    await visit(page, live, "/jobs", "/jobs")
    summary = page.locator("#job-odds-summary")
    risky = page.locator("#job-odds-risky li")
    await expect(summary).to_contain_text("Enter a device or a site")

    await page.select_option("#job-target-type", "site")
    await page.select_option("#job-type", "firmware_update")
    async with page.expect_response(api_call("/insights/job-success")) as answered:
        await page.fill("#job-target", site_id)
    assert (await answered.value).status == 200
    await expect(summary).to_contain_text(re.compile(r"Expected success: \d+ % across 2 devices"))
    await expect(risky).to_have_count(2)
    await expect(risky.first).to_have_attribute("data-device", flaky)
    await expect(risky.first).to_contain_text(
        "3 of the last 4 firmware updates on this terminal timed out"
    )
    await expect(risky.nth(1)).to_have_attribute("data-device", steady)

    # Another job type: the same terminals, no history of restarts anywhere.
    async with page.expect_response(api_call("/insights/job-success")):
        await page.select_option("#job-type", "restart")
    await expect(risky.first).to_contain_text(
        "No restart has run in the fleet yet; the estimate rests on every job type"
    )

    # One device, then a device type (which the estimate does not cover).
    await page.select_option("#job-target-type", "device")
    async with page.expect_response(api_call("/insights/job-success")):
        await page.fill("#job-target", "pos-nowhere")
    await expect(summary).to_contain_text("No estimate: no device pos-nowhere")
    async with page.expect_response(api_call("/insights/job-success")):
        await page.fill("#job-target", steady)
    await expect(summary).to_contain_text(re.compile(r"^Expected success: \d+ %"))
    await page.select_option("#job-target-type", "device_type")
    await expect(summary).to_contain_text("one device or a site's devices")
    await expect(risky).to_have_count(0)

    # The estimate never gets in the way of creating the job.
    await page.select_option("#job-target-type", "device")
    await page.fill("#job-target", steady)
    async with page.expect_response(api_call("/jobs", "POST")) as created:
        await page.click("#job-submit")
    assert (await created.value).status == 201, await (await created.value).text()
