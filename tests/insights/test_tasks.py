"""The server scans the newest metrics on its own, every HOMEPOT_INSIGHTS__INTERVAL_SECONDS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from homepot.config import InsightsSettings, Settings
from homepot.db import utcnow
from homepot.insights.models import Anomaly
from homepot.main import create_app
from tests.helpers import db_rows
from tests.insights.fleetdata import add_history


@pytest.fixture
async def fast_app(settings: Settings) -> AsyncIterator[FastAPI]:
    fast = settings.model_copy(update={"insights": InsightsSettings(interval_seconds=0.1)})
    application = create_app(fast)
    async with LifespanManager(application):
        yield application


async def test_server_finds_a_site_that_went_silent_while_open(fast_app: FastAPI) -> None:
    engine = fast_app.state.engine
    now = utcnow()
    devices = ["pos-live-1", "pos-live-2"]
    # A site without a schedule is open all day: nobody can say when it trades.
    from homepot.device.models import Device, DeviceStatus
    from homepot.site.models import Site

    async with fast_app.state.session_factory() as session:
        session.add(Site(site_id="site-live", name="Live", timezone="UTC"))
        await session.flush()
        for device_id in devices:
            session.add(
                Device(
                    device_id=device_id,
                    site_id="site-live",
                    name=device_id,
                    status=DeviceStatus.online,
                )
            )
        await session.commit()
    for device_id in devices:
        await add_history(engine, device_id, now - timedelta(hours=3), now - timedelta(minutes=40))

    for _ in range(100):
        found = await db_rows(fast_app, Anomaly, metric="reporting")
        if found:
            break
        await asyncio.sleep(0.1)

    assert [(row.site_id, row.device_id, row.ended_at) for row in found] == [
        ("site-live", None, None)
    ]


def test_a_server_pass_reaches_back_no_further_than_its_window() -> None:
    from homepot.insights.tasks import RESCAN_SECONDS, pass_since

    now = utcnow()
    hour = 3600
    # A fresh server: the window, not the history the database holds.
    assert pass_since(now, None, 6 * hour) == now - timedelta(hours=6)
    # The next passes: from shortly before the previous one's end.
    last = now - timedelta(minutes=1)
    assert pass_since(now, last, 6 * hour) == last - timedelta(seconds=RESCAN_SECONDS)
    # After a long outage: no further back than the window.
    assert pass_since(now, now - timedelta(days=3), 6 * hour) == now - timedelta(hours=6)


async def test_a_fresh_server_scans_only_its_window_of_a_long_history(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from homepot.device.models import Device, DeviceStatus
    from homepot.insights import service
    from homepot.site.models import Site

    reports: list[service.ScanReport] = []
    scan = service.scan

    async def recorded_scan(*args: Any, **kwargs: Any) -> service.ScanReport:
        report = await scan(*args, **kwargs)
        reports.append(report)
        return report

    monkeypatch.setattr(service, "scan", recorded_scan)
    insights = InsightsSettings(interval_seconds=0.1, server_window_seconds=3600)
    application = create_app(settings.model_copy(update={"insights": insights}))
    now = utcnow()
    month_ago = now - timedelta(days=30)
    devices = ["pos-old-1", "pos-old-2"]
    async with LifespanManager(application):
        engine = application.state.engine
        async with application.state.session_factory() as session:
            session.add(Site(site_id="site-old", name="Old", timezone="UTC"))
            await session.flush()
            for device_id in devices:
                session.add(
                    Device(
                        device_id=device_id,
                        site_id="site-old",
                        name=device_id,
                        status=DeviceStatus.online,
                    )
                )
            await session.commit()
        # A month ago the site reported for three hours, then went silent while open.
        for device_id in devices:
            await add_history(engine, device_id, month_ago - timedelta(hours=3), month_ago)
        for _ in range(200):
            if any(report.skipped is None and report.bins for report in reports):
                break
            await asyncio.sleep(0.05)
        done = [report for report in reports if report.skipped is None and report.bins]
        assert done, "the server never completed a pass"
        assert min(report.since for report in done) >= now - timedelta(hours=1)
        assert await db_rows(application, Anomaly) == []

        # The command line's scan over the old range finds what the server left alone.
        found = await scan(engine, month_ago - timedelta(hours=4), month_ago + timedelta(hours=2))
        assert found.inserted >= 1
        rows = await db_rows(application, Anomaly, metric="reporting")
        assert [(row.site_id, row.device_id) for row in rows] == [("site-old", None)]
        assert all(row.started_at < now - timedelta(days=29) for row in rows)


async def test_a_pass_is_due_only_for_a_new_bin_or_rows_that_came_late(database_url: str) -> None:
    from homepot.analytics.models import APIRequestLog, DeviceMetrics
    from homepot.db import create_engine, create_session_factory
    from homepot.insights.bins import bin_of, bin_start
    from homepot.insights.tasks import NewRows

    engine = create_engine(database_url)
    factory = create_session_factory(engine)
    now = utcnow()
    current_bin = bin_start(bin_of(now))  # rows before it fall in bins a pass judged

    async def add(model: type[Any], **values: Any) -> None:
        async with factory() as session:
            session.add(model(**values))
            await session.commit()

    seen = NewRows()
    assert await seen.late_rows(engine, current_bin)  # nothing known yet: scan
    assert not await seen.late_rows(engine, current_bin)
    await add(DeviceMetrics, device_id="pos-t", timestamp=now, cpu_percent=5.0)
    assert not await seen.late_rows(engine, current_bin)  # the current bin's: not judged yet
    await add(DeviceMetrics, device_id="pos-t", timestamp=now - timedelta(minutes=7))
    assert await seen.late_rows(engine, current_bin)  # a replayed outbox: judge again
    assert not await seen.late_rows(engine, current_bin)
    await add(
        APIRequestLog,
        timestamp=now - timedelta(minutes=6),
        endpoint="/api/v1/sites",
        method="GET",
        status_code=200,
        response_time_ms=3.0,
    )
    assert await seen.late_rows(engine, current_bin)  # a spooled request row replayed
    await engine.dispose()
