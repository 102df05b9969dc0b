"""The Insights page, the device page's risk and bands, and the overview's count, in a browser.

Anomaly episodes and risk scores are written by hand (a few rows each); only the device page's
bands need metrics, 14 hours of one terminal. The server's own scanner is off, so that it
neither closes nor scores the hand-written episodes while a test looks at them.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from fastapi import FastAPI
from playwright.async_api import BrowserContext, Page, expect

from homepot.auth.models import Role
from homepot.config import Settings
from homepot.db import utcnow
from homepot.insights.models import Anomaly, DeviceRisk
from homepot.main import create_app
from tests.helpers import db_rows
from tests.insights.fleetdata import add_history, create_site_with_hours
from tests.web.conftest import LiveServer, serve
from tests.web.test_browser import api_call

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def quiet(settings: Settings) -> AsyncIterator[LiveServer]:
    """The live app without its insights scanner and risk scoring."""
    insights = settings.insights.model_copy(update={"enabled": False})
    async with serve(create_app(settings.model_copy(update={"insights": insights}))) as server:
        yield server


async def add_anomaly(
    app: FastAPI,
    *,
    device_id: str | None,
    site_id: str = "site-ins",
    metric: str = "memory",
    score: int = 60,
    minutes_ago: float = 40,
    explanation: str = "memory 90 % vs a usual 50 % ± 2.0 % over its previous 12 h",
    status: str = "active",
    expected_maintenance: bool = False,
) -> int:
    started = utcnow() - timedelta(minutes=minutes_ago)
    async with app.state.session_factory() as session:
        row = Anomaly(
            subject=device_id or f"site:{site_id}",
            device_id=device_id,
            site_id=site_id,
            metric=metric,
            detector="silence" if metric == "reporting" else "level",
            started_at=started,
            ended_at=None,
            last_seen_at=utcnow(),
            score=score,
            severity="critical" if score >= 75 else "warning" if score >= 45 else "info",
            observed=90.0,
            expected=50.0,
            explanation=explanation,
            status=status,
            expected_maintenance=expected_maintenance,
        )
        session.add(row)
        await session.commit()
        return row.id


async def add_risk(
    app: FastAPI, device_id: str, risk: float, factors: list[dict[str, str]], model: str
) -> None:
    async with app.state.session_factory() as session:
        session.add(
            DeviceRisk(
                device_id=device_id,
                site_id="site-ins",
                computed_at=utcnow(),
                horizon_minutes=120,
                risk=risk,
                factors=factors,
                model=model,
            )
        )
        await session.commit()


async def signed_in(context: BrowserContext, live: LiveServer, role: Role) -> Page:
    """A page whose browser holds a session of a new ``role`` user, as /login leaves it
    (the sign-in form itself is tested in test_browser.py)."""
    user = await live.user(role)
    me = await live.client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {user['token']}"}
    )
    session = {"homepot.token": user["token"], "homepot.user": me.text}
    await context.add_init_script(
        "for (const [k, v] of Object.entries(" + json.dumps(session) + ")) "
        "if (!localStorage.getItem(k)) localStorage.setItem(k, v);"
    )
    return await context.new_page()


@contextlib.asynccontextmanager
async def insights_loaded(page: Page) -> AsyncIterator[None]:
    """Wait for both lists of the Insights page while the block navigates."""
    async with (
        page.expect_response(api_call("/insights/fleet")),
        page.expect_response(api_call("/insights/anomalies")),
    ):
        yield


async def test_operators_see_the_ranking_explanations_and_acknowledge(
    context: BrowserContext, quiet: LiveServer
) -> None:
    app = quiet.app
    await create_site_with_hours(app.state.engine, "site-ins", ["pos-leak", "pos-cpu", "pos-calm"])
    leak = await add_anomaly(
        app,
        device_id="pos-leak",
        score=88,
        explanation="memory 91 % vs a usual 52 % ± 4.0 % for Tuesday 14:00; rising 6 points/h",
    )
    await add_anomaly(
        app,
        device_id="pos-cpu",
        metric="cpu",
        score=55,
        explanation="CPU 70 % vs a usual 20 % ± 5.0 % for Tuesday 14:00",
    )
    silent = await add_anomaly(
        app,
        device_id=None,
        metric="reporting",
        score=85,
        explanation="none of site site-ins's 3 reporting devices sent metrics for 25 min",
    )
    night = await add_anomaly(
        app,
        device_id="pos-calm",
        metric="cpu",
        score=80,
        explanation="CPU 95 % vs a usual 5 % during the firmware update",
        expected_maintenance=True,
    )
    await add_risk(
        app, "pos-leak", 0.92, [{"factor": "memory % trend", "value": "+6.0 per h"}], "gbm-test"
    )
    await add_risk(app, "pos-cpu", 0.35, [{"factor": "errors (6 h)", "value": "14"}], "gbm-test")
    page = await signed_in(context, quiet, Role.operator)

    async with insights_loaded(page):
        await page.goto(f"{quiet.base_url}/insights")

    ranked = page.locator("#fleet-table tbody tr")
    await expect(ranked).to_have_count(2)
    await expect(ranked.nth(0)).to_contain_text("pos-leak")
    await expect(ranked.nth(0)).to_contain_text("0.92")
    await expect(ranked.nth(0)).to_contain_text("memory % trend")
    await expect(ranked.nth(0)).to_contain_text("+6.0 per h")
    await expect(ranked.nth(1)).to_contain_text("pos-cpu")
    # A trained model scored these devices: no note about its absence.
    await expect(page.locator("#fleet-risk-note")).to_be_hidden()

    row = page.locator(f"#anomaly-{leak}")
    await expect(row).to_contain_text("rising 6 points/h")
    await expect(row).to_contain_text("critical")
    await expect(row).to_contain_text("88")
    await expect(page.locator(f"#anomaly-{silent}")).to_contain_text("whole site")
    await expect(page.locator(f"#anomaly-{silent} .no-chart")).to_contain_text("silence")
    maintenance = page.locator(f"#anomaly-{night}")
    await expect(maintenance).to_have_class(re.compile("expected-maintenance"))
    await expect(maintenance).to_contain_text("expected maintenance")

    async with page.expect_response(api_call(f"/insights/anomalies/{leak}", "PATCH")) as done:
        await row.get_by_role("button", name=f"Acknowledge anomaly {leak}").click()
    assert (await done.value).status == 200
    await expect(row.locator(".status-cell .badge")).to_have_text("acknowledged")
    await expect(page.locator("#page-status")).to_contain_text(f"Anomaly {leak} acknowledged")
    [stored] = await db_rows(app, Anomaly, id=leak)
    assert stored.status == "acknowledged"

    # It stays acknowledged after a reload, under the status filter that shows it.
    async with insights_loaded(page):
        await page.goto(f"{quiet.base_url}/insights?status=acknowledged")
    await expect(page.locator("#anomaly-status")).to_have_value("acknowledged")
    await expect(page.locator("#anomalies-table tbody tr")).to_have_count(1)
    await expect(page.locator(f"#anomaly-{leak} .status-cell .badge")).to_have_text("acknowledged")
    await expect(page.locator(f"#anomaly-{leak}")).to_contain_text("Resolve")

    # The severity filter asks the API for scores of 75 and more.
    async with page.expect_response(lambda r: "min_score=75" in r.url):
        await page.select_option("#anomaly-severity", "critical")
    assert "severity=critical" in page.url


async def test_the_device_page_draws_bands_and_shows_the_risk(
    context: BrowserContext, quiet: LiveServer
) -> None:
    app = quiet.app
    now = utcnow()
    await create_site_with_hours(app.state.engine, "site-ins", ["pos-band"])
    await add_history(app.state.engine, "pos-band", now - timedelta(hours=14), now)
    episode = await add_anomaly(app, device_id="pos-band", metric="memory", score=70)
    await add_risk(
        app,
        "pos-band",
        0.7,
        [{"factor": "memory", "value": "memory 90 % vs a usual 50 % ± 2.0 %"}],
        "anomalies",
    )
    page = await signed_in(context, quiet, Role.viewer)

    async with page.expect_response(api_call("/insights/devices/pos-band")) as answered:
        await page.goto(f"{quiet.base_url}/devices/pos-band")
    insights = await (await answered.value).json()
    memory = next(band for band in insights["bands"] if band["metric"] == "memory")
    assert any(value is not None for value in memory["upper"])

    await expect(page.locator("#device-risk-value")).to_contain_text("0.70")
    await expect(page.locator("#device-risk-factors")).to_contain_text("memory 90 %")
    await expect(page.locator("#device-risk")).to_contain_text("no failure-risk model")
    await expect(page.locator("#device-anomalies tbody tr")).to_have_count(1)
    await expect(page.locator("#device-anomalies")).to_contain_text("memory 90 %")
    for chart in ("#chart-cpu", "#chart-memory", "#chart-latency"):
        await expect(page.locator(f"{chart} svg path.band").first).to_be_attached()
        await expect(page.locator(f"{chart} .legend")).to_contain_text("expected range")

    # The same band behind the episode's sparkline on the Insights page.
    async with insights_loaded(page):
        await page.goto(f"{quiet.base_url}/insights")
    sparkline = page.locator(f"#anomaly-{episode} .sparkline svg")
    await expect(sparkline.locator("path.band").first).to_be_attached()
    await expect(sparkline.locator("rect.episode")).to_have_count(1)
    await expect(sparkline).to_have_attribute("aria-label", re.compile("memory of pos-band"))


async def test_viewers_follow_the_overviews_count_and_see_no_buttons(
    context: BrowserContext, quiet: LiveServer
) -> None:
    app = quiet.app
    await create_site_with_hours(app.state.engine, "site-ins", ["pos-a", "pos-b"])
    critical = await add_anomaly(app, device_id="pos-a", score=90)
    await add_anomaly(app, device_id="pos-b", metric="cpu", score=95, status="acknowledged")
    await add_anomaly(app, device_id="pos-b", metric="disk", score=60)
    await add_anomaly(app, device_id="pos-b", score=99, expected_maintenance=True)
    page = await signed_in(context, quiet, Role.viewer)

    async with page.expect_response(api_call("/overview")):
        await page.goto(f"{quiet.base_url}/")
    # Critical, active, outside maintenance: one (the acknowledged and the maintenance one
    # are not waiting for anybody, the disk one is a warning).
    await expect(page.locator("#stat-critical-anomalies")).to_have_text("1")
    async with insights_loaded(page):
        await page.click("#critical-anomalies-link")

    await expect(page.locator("#anomaly-severity")).to_have_value("critical")
    await expect(page.locator("#anomaly-status")).to_have_value("active")
    await expect(page.locator("#anomalies-table tbody tr")).to_have_count(1)
    await expect(page.locator(f"#anomaly-{critical}")).to_contain_text("memory 90 %")
    await expect(page.locator(f"#anomaly-{critical} .status-cell .badge")).to_have_text("active")
    await expect(page.locator("button.anomaly-action")).to_have_count(0)
    await expect(page.locator("#anomalies-note")).to_be_visible()
    # No model has scored anything: the ranking rests on the episodes, and says so.
    await expect(page.locator("#fleet-risk-note")).to_be_visible()
    await expect(page.locator("#fleet-table tbody tr").first).to_contain_text("pos-b")
