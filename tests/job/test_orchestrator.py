"""The orchestrator: deadlines, retries, timeouts, push failures, several processes, restarts,
maintenance windows, and what a successful job changes on the device."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from homepot.analytics.models import (
    ConfigurationHistory,
    ErrorLog,
    JobOutcome,
    SiteOperatingSchedule,
)
from homepot.auth.models import Role
from homepot.config import FleetSettings, Settings
from homepot.db import create_engine, create_session_factory, utcnow
from homepot.device.models import Device
from homepot.job.models import ExecutionStatus
from homepot.job.orchestrator import Orchestrator, PassReport, run_pass
from homepot.main import create_app
from homepot.protocol.messages import JobCommand
from homepot.site.windows import next_maintenance_window
from tests.helpers import (
    auth_headers,
    create_device,
    create_registered_device,
    create_site,
    create_user,
    db_rows,
    flush,
    login,
)
from tests.job.orchestration import (
    BACKOFF,
    RecordingChannel,
    create_job,
    executions_of,
    manual_orchestrator,
    read_job,
    report,
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return manual_orchestrator(settings)


async def test_a_device_that_never_answers_is_retried_then_times_out(
    app: FastAPI, client: AsyncClient
) -> None:
    channel = RecordingChannel()
    app.state.push_channel = channel
    device_id, device = await create_registered_device(app, client)
    operator_user = await create_user(app, role=Role.operator)
    operator = await login(client, operator_user["email"], operator_user["password"])
    job = await create_job(client, operator, target_id=device_id, timeout_seconds=1, max_retries=2)
    start = utcnow()

    async def at(seconds: float) -> PassReport:
        return await run_pass(app, now=start + timedelta(seconds=seconds))

    assert (await at(0)).pushed == 1
    assert (await at(0.5)).retried == 0  # deadline not reached yet
    assert (await at(2)).retried == 1  # retry 1 waits BACKOFF seconds
    (execution,) = await executions_of(app, job["job_id"])
    assert (execution.status, execution.attempt) == (ExecutionStatus.pending, 1)
    assert execution.not_before == start + timedelta(seconds=2 + BACKOFF)
    assert (await at(2 + BACKOFF - 1)).dispatched == 0
    assert (await at(2 + BACKOFF)).pushed == 1
    assert (await at(4 + BACKOFF)).retried == 1  # retry 2 waits 2 * BACKOFF
    assert (await at(4 + 3 * BACKOFF)).pushed == 1
    final = await at(6 + 3 * BACKOFF)
    assert final.timed_out == 1

    assert [command.attempt for _, command in channel.pushed] == [0, 1, 2]
    done = await read_job(client, operator, job["job_id"])
    assert done["status"] == "failed"
    (execution_read,) = done["executions"]
    assert (execution_read["status"], execution_read["attempt"]) == ("timeout", 2)
    assert execution_read["error_code"] == "JOB_TIMEOUT"
    await flush(app)
    (outcome,) = await db_rows(app, JobOutcome, job_id=job["job_id"])
    assert (outcome.status, outcome.retry_count, outcome.error_code) == (
        "timeout",
        2,
        "JOB_TIMEOUT",
    )
    assert outcome.duration_ms == (6 + 3 * BACKOFF) * 1000
    assert outcome.initiated_by == operator_user["id"]
    assert outcome.extra_data["attempts"] == 3
    assert "reported no result within 1 s" in (outcome.error_message or "")
    codes = Counter(e.error_code for e in await db_rows(app, ErrorLog, device_id=device_id))
    assert codes["JOB_DEADLINE_MISSED"] == 2
    assert codes["JOB_TIMEOUT"] == 1
    (timeout_error,) = await db_rows(app, ErrorLog, error_code="JOB_TIMEOUT")
    assert (timeout_error.category, timeout_error.severity) == ("external_service", "error")

    # A result after the timeout is answered, ignored, and adds no second outcome.
    late = await report(client, device, execution.id)
    assert late.json()["accepted"] is False
    await flush(app)
    assert len(await db_rows(app, JobOutcome, job_id=job["job_id"])) == 1


async def test_a_failed_push_leaves_the_job_for_polling_and_is_logged(
    app: FastAPI, client: AsyncClient
) -> None:
    app.state.push_channel = RecordingChannel(fail=True)
    device_id, device = await create_registered_device(app, client)
    operator = await auth_headers(app, client, Role.operator)
    job = await create_job(client, operator, target_id=device_id)

    passed = await run_pass(app)

    assert (passed.dispatched, passed.pushed, passed.push_failed) == (1, 0, 1)
    (execution,) = await executions_of(app, job["job_id"])
    assert (execution.status, execution.delivery) == (ExecutionStatus.dispatched, "poll")
    polled = await client.get("/api/v1/agent/jobs", headers=device)
    assert [c["execution_id"] for c in polled.json()] == [execution.id]
    await flush(app)
    (error,) = await db_rows(app, ErrorLog, error_code="JOB_PUSH_FAILED")
    assert (error.category, error.severity, error.device_id) == (
        "external_service",
        "warning",
        device_id,
    )
    assert "broker 127.0.0.1:1883 refused the connection" in error.error_message


async def test_what_the_orchestrator_records_about_a_simulated_terminal_is_simulated(
    app: FastAPI, client: AsyncClient
) -> None:
    app.state.push_channel = RecordingChannel(fail=True)
    simulated_id, _ = await create_registered_device(app, client, simulated=True)
    real_id, _ = await create_registered_device(app, client)
    operator = await auth_headers(app, client, Role.operator)
    for device_id in (simulated_id, real_id):
        await create_job(client, operator, target_id=device_id, timeout_seconds=1, max_retries=0)
    start = utcnow()

    await run_pass(app, now=start)
    await run_pass(app, now=start + timedelta(seconds=2))

    await flush(app)
    errors = {(e.error_code, e.device_id): e.source for e in await db_rows(app, ErrorLog)}
    assert errors == {
        ("JOB_PUSH_FAILED", simulated_id): "simulated",
        ("JOB_PUSH_FAILED", real_id): "device",
        ("JOB_TIMEOUT", simulated_id): "simulated",
        ("JOB_TIMEOUT", real_id): "device",
    }
    outcomes = {o.device_id: (o.status, o.source) for o in await db_rows(app, JobOutcome)}
    assert outcomes == {simulated_id: ("timeout", "simulated"), real_id: ("timeout", "device")}


class OneSilentDevice(RecordingChannel):
    """The first device's push hangs until every other device has been pushed: pushed one
    after the other, that push would wait out its acknowledgement timeout and fail."""

    def __init__(self, silent: str, others: int) -> None:
        super().__init__()
        self.silent = silent
        self.others = others
        self.others_pushed = asyncio.Event()

    async def push(self, device_id: str, command: JobCommand) -> None:
        if device_id == self.silent:
            await self.others_pushed.wait()
        await super().push(device_id, command)
        if len(self.pushed) == self.others:
            self.others_pushed.set()


async def test_one_slow_device_does_not_hold_back_the_pushes_to_the_others(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    devices = [(await create_registered_device(app, client, site_id=site_id))[0] for _ in range(4)]
    operator = await auth_headers(app, client, Role.operator)
    for device_id in devices:  # the silent device's job is first in dispatch order
        await create_job(client, operator, target_id=device_id)
    channel = OneSilentDevice(devices[0], others=len(devices) - 1)
    app.state.push_channel = channel

    passed = await run_pass(app)

    assert (passed.dispatched, passed.pushed, passed.push_failed) == (4, 4, 0)
    assert [device_id for device_id, _ in channel.pushed] == [*devices[1:], devices[0]]


@pytest.fixture
def postgresql_only(backend: str) -> None:
    """Skips before the app starts (listed first, so it is set up first)."""
    if backend != "postgresql":
        pytest.skip("SKIP LOCKED claims are PostgreSQL's; SQLite runs a single process")


@pytest.mark.usefixtures("postgresql_only")
async def test_two_orchestrators_on_one_postgresql_dispatch_and_expire_each_execution_once(
    app: FastAPI, client: AsyncClient, database_url: str
) -> None:
    site_id = await create_site(app)
    for _ in range(30):
        await create_device(app, site_id=site_id)
    operator = await auth_headers(app, client, Role.operator)
    jobs = [
        await create_job(
            client,
            operator,
            target_type="site",
            target_id=site_id,
            max_retries=0,
            timeout_seconds=60,
        )
        for _ in range(3)
    ]
    engines = [create_engine(database_url), create_engine(database_url)]
    channels = [RecordingChannel(), RecordingChannel()]
    orchestrators = [
        Orchestrator(
            create_session_factory(engine),
            app.state.recorder,
            app.state.settings.fleet,
            lambda channel=channel: channel,  # type: ignore[misc]
            claimed_by=name,
            batch_size=7,
        )
        for engine, channel, name in zip(engines, channels, ("first", "second"), strict=True)
    ]
    try:
        now = utcnow()
        await asyncio.gather(*(o.run_pass(now) for _ in range(8) for o in orchestrators))
        later = now + timedelta(seconds=61)
        for _ in range(20):  # passes repeat, as the service's loop does, until nothing is left
            reports = await asyncio.gather(*(o.run_pass(later) for o in orchestrators * 4))
            if not any(r.timed_out for r in reports):
                break
    finally:
        for engine in engines:
            await engine.dispose()

    pushed = [command.execution_id for channel in channels for _, command in channel.pushed]
    assert len(pushed) == 90
    assert len(set(pushed)) == 90  # every execution pushed exactly once
    assert all(channel.pushed for channel in channels)  # both did a share of the work
    for job in jobs:
        executions = await executions_of(app, job["job_id"])
        assert {e.status for e in executions} == {ExecutionStatus.timeout}
        assert {e.claimed_by for e in executions} <= {"first", "second"}
    await flush(app)
    outcomes = await db_rows(app, JobOutcome, status="timeout")
    assert len(outcomes) == 90  # and timed out exactly once
    assert len({o.extra_data["execution_id"] for o in outcomes}) == 90
    for job in jobs:
        assert (await read_job(client, operator, job["job_id"]))["status"] == "failed"


async def test_jobs_survive_a_restart(
    app: FastAPI, client: AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    app.state.push_channel = RecordingChannel()
    site_id = await create_site(app)
    running_id, running_key = await create_registered_device(app, client, site_id=site_id)
    waiting_id, _ = await create_registered_device(app, client, site_id=site_id)
    operator = await auth_headers(app, client, Role.operator)
    dispatched = await create_job(client, operator, target_id=running_id)
    await run_pass(app)
    waiting = await create_job(client, operator, target_id=waiting_id)
    (in_flight,) = await executions_of(app, dispatched["job_id"])

    # A second server process starts on the same database, its orchestrator running.
    restarted_settings = settings.model_copy(
        update={
            "fleet": FleetSettings(orchestrator_interval_seconds=0.05),
            "analytics": settings.analytics.model_copy(update={"spool_dir": tmp_path / "spool2"}),
        }
    )
    restarted = create_app(restarted_settings)
    async with LifespanManager(restarted):
        transport = ASGITransport(app=restarted, client=("203.0.113.8", 50000))
        async with AsyncClient(transport=transport, base_url="http://testserver") as client2:
            answer = await report(client2, running_key, in_flight.id)
            assert answer.json()["accepted"] is True
            for _ in range(100):
                (picked_up,) = await executions_of(app, waiting["job_id"])
                if picked_up.status is ExecutionStatus.dispatched:
                    break
                await asyncio.sleep(0.05)
            assert picked_up.status is ExecutionStatus.dispatched
            assert picked_up.claimed_by == restarted.state.orchestrator.claimed_by
            assert (await read_job(client2, operator, dispatched["job_id"]))["status"] == (
                "completed"
            )


async def test_maintenance_window_jobs_wait_for_each_sites_own_window(
    app: FastAPI, client: AsyncClient
) -> None:
    now = utcnow()
    sites = {
        "America/New_York": await create_site(app, timezone="America/New_York"),
        "Australia/Sydney": await create_site(app, timezone="Australia/Sydney"),
    }
    schedules: dict[str, list[SiteOperatingSchedule]] = {}
    devices: dict[str, str] = {}
    async with app.state.session_factory() as session:
        for zone, site_id in sites.items():
            # The marked day is two local days ahead, so its window is always in the future.
            marked = (now.astimezone(ZoneInfo(zone)).weekday() + 2) % 7
            schedules[site_id] = [
                SiteOperatingSchedule(
                    site_id=site_id,
                    day_of_week=day,
                    open_time=time(8),
                    close_time=time(20),
                    is_maintenance_window=day == marked,
                )
                for day in range(7)
            ]
            session.add_all(schedules[site_id])
        await session.commit()
    for site_id in sites.values():
        devices[site_id] = await create_device(app, site_id=site_id, device_type="pos_terminal")
    operator = await auth_headers(app, client, Role.operator)

    job = await create_job(
        client,
        operator,
        target_type="device_type",
        target_id="pos_terminal",
        schedule="maintenance_window",
    )

    created = datetime.fromisoformat(job["created_at"])
    expected = {
        devices[site_id]: next_maintenance_window(schedules[site_id], zone, created)
        for zone, site_id in sites.items()
    }
    assert len(set(expected.values())) == 2
    assert all(window > created for window in expected.values())
    assert job["status"] == "scheduled"
    assert datetime.fromisoformat(job["scheduled_for"]) == min(expected.values())
    for execution in job["executions"]:
        window = datetime.fromisoformat(execution["not_before"])
        assert window == expected[execution["device_id"]]

    assert (await run_pass(app)).dispatched == 0
    first_device = min(expected, key=lambda d: expected[d])
    assert (await run_pass(app, now=expected[first_device])).dispatched == 1
    statuses = {e.device_id: e.status for e in await executions_of(app, job["job_id"])}
    assert statuses[first_device] is ExecutionStatus.dispatched
    assert set(statuses.values()) == {ExecutionStatus.dispatched, ExecutionStatus.pending}


async def test_a_successful_config_change_job_applies_the_config_to_the_device(
    app: FastAPI, client: AsyncClient
) -> None:
    app.state.push_channel = RecordingChannel()
    device_id, device = await create_registered_device(app, client)
    operator_user = await create_user(app, role=Role.operator)
    operator = await login(client, operator_user["email"], operator_user["password"])
    job = await create_job(
        client,
        operator,
        job_type="config_change",
        target_id=device_id,
        payload={"config": {"volume": 7}},
        description="louder",
    )
    await run_pass(app)
    (execution,) = await executions_of(app, job["job_id"])
    assert (await report(client, device, execution.id)).json()["accepted"] is True

    (stored,) = await db_rows(app, Device, device_id=device_id)
    assert stored.config["volume"] == 7
    await flush(app)
    (change,) = await db_rows(app, ConfigurationHistory, entity_id=device_id)
    assert (change.parameter_name, change.new_value) == ("volume", {"value": 7})
    assert (change.change_type, change.changed_by) == ("automated", operator_user["id"])
    assert job["job_id"] in (change.change_reason or "")


async def test_a_failed_config_change_job_changes_nothing(
    app: FastAPI, client: AsyncClient
) -> None:
    app.state.push_channel = RecordingChannel()
    device_id, device = await create_registered_device(app, client)
    operator = await auth_headers(app, client, Role.operator)
    job = await create_job(
        client,
        operator,
        job_type="config_change",
        target_id=device_id,
        payload={"config": {"volume": 7}},
    )
    await run_pass(app)
    (execution,) = await executions_of(app, job["job_id"])
    await report(client, device, execution.id, "failed", error_code="E_REFUSED")

    (stored,) = await db_rows(app, Device, device_id=device_id)
    assert "volume" not in stored.config
    await flush(app)
    assert await db_rows(app, ConfigurationHistory, entity_id=device_id) == []


async def test_a_successful_firmware_update_sets_the_devices_version(
    app: FastAPI, client: AsyncClient
) -> None:
    app.state.push_channel = RecordingChannel()
    device_id, device = await create_registered_device(app, client, firmware_version="2.5.1")
    operator = await auth_headers(app, client, Role.operator)
    job = await create_job(
        client,
        operator,
        job_type="firmware_update",
        target_id=device_id,
        payload={"version": "2.6.0"},
    )
    await run_pass(app)
    (execution,) = await executions_of(app, job["job_id"])
    await report(client, device, execution.id)

    (stored,) = await db_rows(app, Device, device_id=device_id)
    assert stored.firmware_version == "2.6.0"
