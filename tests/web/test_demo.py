"""`homepot demo` as a newcomer sees it, on a timeline compressed six times.

The demo app is what `homepot demo` serves: the sample fleet's backfilled history, then the
same terminals reporting live in the server's process. Within 30 seconds of the start the
overview's and a device page's 24-hour charts have data across the whole window; and after
the equivalent of 10 minutes (100 s here, with the watchdog's 90 s as 15 s and the terminals
reporting six times as often) every terminal without an injected fault is still online and
has never been offline, and no push to it went unacknowledged.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page, Response
from sqlalchemy import select

from homepot.analytics.models import DeviceStateHistory, ErrorLog
from homepot.config import Settings
from homepot.db import create_engine
from homepot.device.models import Device
from homepot.simulation.demo import DEMO_SPEED, DemoFleet, create_demo_app
from homepot.simulation.faults import read_labels
from homepot.simulation.sample import DEMO_ADMIN_EMAIL, SampleFleet, load_sample_data
from tests.web.conftest import LiveServer, serve
from tests.web.test_browser import api_call, sign_in

pytestmark = pytest.mark.asyncio(loop_scope="session")

COMPRESSION = 10
FULL_CHARTS_WITHIN = 30.0  # seconds from the start of `homepot demo`
TEN_MINUTES = 600 / COMPRESSION
DEVICE = "pos-terminal-0001"


def assert_covers(series: dict[str, Any]) -> None:
    """The chart's points span its whole window, with no gap the chart would draw as one
    (more than three buckets, see charts.js)."""
    since = datetime.fromisoformat(series["since"])
    until = datetime.fromisoformat(series["until"])
    bucket = timedelta(seconds=series["bucket_seconds"])
    assert until - since >= timedelta(hours=23, minutes=59)
    stamps = sorted(datetime.fromisoformat(p["timestamp"]) for p in series["points"])
    assert stamps, "no points at all"
    edges = [since, *stamps, until]
    gaps = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    assert max(gaps) <= 3 * bucket, (max(gaps), bucket)


async def chart_data(page: Page, path: str, api_path: str, *, until: float) -> Any:
    """Open a page and return the data its charts got, waiting until ``until`` at most."""
    timeout = max(0.0, until - asyncio.get_running_loop().time()) * 1000

    # Only this page's request: the page before (the one signing in) may still be loading
    # its own overview, for the default 6 hours.
    def this_page(response: Response) -> bool:
        referer = response.request.headers.get("referer", "")
        return api_call(api_path)(response) and referer == path

    async with page.expect_response(this_page, timeout=timeout) as response:
        await page.goto(path, timeout=timeout)
    return await (await response.value).json()


async def test_the_demo_is_full_at_once_and_stays_healthy(
    backend: str, context: BrowserContext, settings: Settings, tmp_path: Path
) -> None:
    if backend != "sqlite":
        # Ten compressed minutes of a live fleet: run once, on what `homepot demo` runs on.
        pytest.skip("`homepot demo` runs on the embedded SQLite database")
    loop = asyncio.get_running_loop()
    started = loop.time()
    fleet = settings.fleet.model_copy(
        update={"offline_after_seconds": 90 / COMPRESSION, "watchdog_interval_seconds": 0.5}
    )
    settings = settings.model_copy(update={"fleet": fleet})
    labels = tmp_path / "faults.jsonl"
    demo = DemoFleet(
        admin_email=DEMO_ADMIN_EMAIL,
        speed=DEMO_SPEED * COMPRESSION,
        fault_rate=1,
        min_fault_silence_seconds=100 / COMPRESSION,
        labels=str(labels),
    )

    # What `homepot demo` does: the sample data first, then the app with its fleet.
    engine = create_engine(settings.database_url)
    loaded = await load_sample_data(engine, SampleFleet())
    await engine.dispose()
    (admin,) = [c for c in loaded.credentials if c.email == DEMO_ADMIN_EMAIL]
    live_since = datetime.now(UTC)
    async with serve(create_demo_app(settings, demo)) as live:
        page = await context.new_page()
        await sign_in(page, live, admin.email, admin.password)
        deadline = started + FULL_CHARTS_WITHIN
        overview = await chart_data(page, f"{live.base_url}/?hours=24", "/overview", until=deadline)
        assert_covers(overview["metrics"])
        device = await chart_data(
            page,
            f"{live.base_url}/devices/{DEVICE}?hours=24",
            f"/devices/{DEVICE}/metrics",
            until=deadline,
        )
        assert_covers(device)

        await asyncio.sleep(max(0.0, started + TEN_MINUTES - loop.time()))
        statuses, went_offline, unacknowledged = await fleet_state(live, since=live_since)
    # Faults, and the benign events that take a terminal down (a firmware reboot in its
    # maintenance window); a settlement or a log rotation leaves it online. Which benign
    # events fall in the run depends on the hour it starts.
    faulty = {
        label["device_id"]
        for label in read_labels(labels)
        if not label["fault"].startswith("benign_") or label["fault"] == "benign_firmware_reboot"
    }

    assert set(statuses) == {f"pos-terminal-{n:04d}" for n in range(1, 13)}
    healthy = set(statuses) - faulty
    assert len(healthy) >= 6, faulty
    assert {d: statuses[d] for d in healthy} == dict.fromkeys(healthy, "online")
    assert went_offline <= faulty
    # The error list shows the simulated faults, not the demo's own plumbing: a terminal
    # acknowledges its pushed jobs unless a fault has it down.
    assert unacknowledged <= faulty


async def fleet_state(
    live: LiveServer, *, since: datetime
) -> tuple[dict[str, str], set[str], set[str]]:
    """Each terminal's status now, and since ``since`` the terminals that went offline and
    those whose job pushes went unacknowledged."""
    await live.wait_for(lambda: asyncio.sleep(0, result=True))  # the recorder drained
    async with live.app.state.session_factory() as session:
        devices = await session.execute(select(Device.device_id, Device.status))
        offline = await session.scalars(
            select(DeviceStateHistory.device_id).where(
                DeviceStateHistory.new_state == "offline", DeviceStateHistory.timestamp >= since
            )
        )
        unacknowledged = await session.scalars(
            select(ErrorLog.device_id).where(
                ErrorLog.error_code.in_(("JOB_PUSH_UNACKNOWLEDGED", "JOB_PUSH_FAILED")),
                ErrorLog.timestamp >= since,
            )
        )
        return (
            {d: s.value for d, s in devices.all()},
            set(offline.all()),
            {d for d in unacknowledged.all() if d is not None},
        )
