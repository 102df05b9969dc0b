"""The server scans the newest metrics on its own, every HOMEPOT_INSIGHTS__INTERVAL_SECONDS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

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
