"""The device state machine and the watchdog that takes silent devices offline."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from homepot.analytics.models import DeviceStateHistory, ErrorLog
from homepot.config import FleetSettings, Settings
from homepot.device import states
from homepot.device.models import Device, DeviceStatus
from homepot.device.states import describe_duration, mark_silent_devices_offline, transition
from homepot.main import create_app
from tests.helpers import create_device, create_registered_device, db_rows, flush

HEARTBEAT = "/api/v1/agent/heartbeat"


async def history(app: FastAPI, device_id: str) -> list[DeviceStateHistory]:
    await flush(app)
    found = await db_rows(app, DeviceStateHistory, device_id=device_id)
    return sorted(found, key=lambda row: row.id)


async def status_of(app: FastAPI, device_id: str) -> DeviceStatus:
    (device,) = await db_rows(app, Device, device_id=device_id)
    return device.status


async def set_last_seen(app: FastAPI, device_id: str, seconds_ago: float) -> None:
    async with app.state.session_factory() as session:
        device = await session.get(Device, device_id)
        assert device is not None
        device.last_seen_at = datetime.now(UTC) - timedelta(seconds=seconds_ago)
        await session.commit()


async def online_device(app: FastAPI, client: AsyncClient) -> tuple[str, dict[str, str]]:
    device_id, headers = await create_registered_device(app, client)
    assert (await client.post(HEARTBEAT, json={}, headers=headers)).status_code == 200
    return device_id, headers


def test_durations_read_like_a_person_says_them() -> None:
    assert describe_duration(0.4) == "0.4 s"
    assert describe_duration(5) == "5 s"
    assert describe_duration(95.2) == "95 s"
    assert describe_duration(180) == "3 min"
    assert describe_duration(2 * 3600 + 5 * 60) == "2 h 5 min"
    assert describe_duration(5 * 3600) == "5 h"
    assert describe_duration(3 * 86400) == "3 days"


async def test_transition_records_only_a_real_change_and_only_when_committed(
    app: FastAPI,
) -> None:
    device_id = await create_device(app, status="online")
    recorder = app.state.recorder

    async with app.state.session_factory() as session:
        device = await session.get(Device, device_id)
        assert device is not None
        same = await transition(
            session, recorder, device, DeviceStatus.online, changed_by="system", reason="same"
        )
        changed = await transition(
            session,
            recorder,
            device,
            DeviceStatus.updating,
            changed_by="user-1",
            reason="firmware 2.7.0 is being installed",
            extra_data={"job_id": "job-1"},
        )
        await session.commit()
    async with app.state.session_factory() as session:
        device = await session.get(Device, device_id)
        assert device is not None
        await transition(
            session, recorder, device, DeviceStatus.error, changed_by="system", reason="undone"
        )
        await session.rollback()

    assert (same, changed) == (False, True)
    assert await status_of(app, device_id) == DeviceStatus.updating
    (row,) = await history(app, device_id)
    assert (row.previous_state, row.new_state, row.changed_by) == ("online", "updating", "user-1")
    assert row.reason == "firmware 2.7.0 is being installed"
    (device,) = await db_rows(app, Device, device_id=device_id)
    assert row.extra_data == {"job_id": "job-1", "site_id": device.site_id}


async def test_watchdog_takes_a_silent_device_offline_and_a_heartbeat_brings_it_back(
    app: FastAPI, client: AsyncClient, settings: Settings
) -> None:
    device_id, headers = await online_device(app, client)
    await set_last_seen(app, device_id, 95)
    factory, recorder = app.state.session_factory, app.state.recorder

    marked = await mark_silent_devices_offline(factory, recorder, settings)
    again = await mark_silent_devices_offline(factory, recorder, settings)

    assert (marked, again) == ([device_id], [])
    assert await status_of(app, device_id) == DeviceStatus.offline
    back = await client.post(HEARTBEAT, json={}, headers=headers)
    assert back.json()["status"] == "online"
    assert await mark_silent_devices_offline(factory, recorder, settings) == []

    rows = await history(app, device_id)
    assert [(r.previous_state, r.new_state, r.changed_by) for r in rows] == [
        ("offline", "online", "system"),
        ("online", "offline", "system"),
        ("offline", "online", "system"),
    ]
    assert rows[1].reason == "no heartbeat for 95 s (limit 90 s)"
    assert rows[1].extra_data["source"] == "watchdog"
    assert rows[1].extra_data["offline_after_seconds"] == 90
    assert rows[2].reason == "heartbeat received after 95 s of silence"


async def test_watchdog_watches_only_devices_that_should_be_talking(
    app: FastAPI, client: AsyncClient, settings: Settings
) -> None:
    failing, failing_headers = await online_device(app, client)
    await client.post(HEARTBEAT, json={"status": "error"}, headers=failing_headers)
    in_maintenance = await create_device(app, status="maintenance")
    never_heard = await create_device(app, status="online")
    recent, _ = await online_device(app, client)
    for device_id in (failing, in_maintenance):
        await set_last_seen(app, device_id, 600)
    await set_last_seen(app, recent, 30)

    marked = await mark_silent_devices_offline(
        app.state.session_factory, app.state.recorder, settings
    )

    assert marked == [failing]
    assert await status_of(app, in_maintenance) == DeviceStatus.maintenance
    assert await status_of(app, never_heard) == DeviceStatus.online
    assert await status_of(app, recent) == DeviceStatus.online
    assert (await history(app, failing))[-1].reason == "no heartbeat for 10 min (limit 90 s)"


@pytest.fixture
async def fast_watchdog_app(settings: Settings) -> AsyncIterator[FastAPI]:
    fast = settings.model_copy(
        update={"fleet": FleetSettings(offline_after_seconds=0.5, watchdog_interval_seconds=0.05)}
    )
    application = create_app(fast)
    async with LifespanManager(application):
        yield application


async def wait_for_status(app: FastAPI, device_id: str, wanted: DeviceStatus) -> None:
    for _ in range(200):
        if await status_of(app, device_id) == wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{device_id} never became {wanted}")


async def test_the_watchdog_runs_in_the_server(fast_watchdog_app: FastAPI) -> None:
    app = fast_watchdog_app
    transport = ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with AsyncClient(transport=transport, base_url="http://testserver") as client:
        device_id, headers = await online_device(app, client)

        await wait_for_status(app, device_id, DeviceStatus.offline)
        assert (await client.post(HEARTBEAT, json={}, headers=headers)).json()["status"] == (
            "online"
        )

    rows = await history(app, device_id)
    assert [r.new_state for r in rows] == ["online", "offline", "online"]
    assert re.fullmatch(r"no heartbeat for [0-9.]+ s \(limit 0\.5 s\)", str(rows[1].reason))


async def test_a_failed_watchdog_pass_is_logged_and_the_next_one_runs(
    fast_watchdog_app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = fast_watchdog_app
    real_pass = states.mark_silent_devices_offline
    calls = 0

    async def flaky_pass(*args: Any, **kwargs: Any) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionRefusedError("database went away")
        return await real_pass(*args, **kwargs)

    monkeypatch.setattr(states, "mark_silent_devices_offline", flaky_pass)
    device_id = await create_device(app, status="online")
    await set_last_seen(app, device_id, 60)

    await wait_for_status(app, device_id, DeviceStatus.offline)

    assert calls >= 2
    await flush(app)
    (error,) = await db_rows(app, ErrorLog, error_code="DEVICE_WATCHDOG_FAILED")
    assert (error.category, error.severity) == ("database", "error")
    assert "database went away" in error.error_message
    assert error.stack_trace is not None
