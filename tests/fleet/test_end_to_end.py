"""End to end: simulated terminals register, report, get a job pushed, report its result,
and every analytics stream fills.

On PostgreSQL the fleet speaks MQTT through the real Mosquitto at 127.0.0.1:1883 (telemetry,
heartbeats, job push, acks and results); on SQLite jobs are pushed through the in-process
channel, as in ``homepot demo``. Either way the simulator runs in the test's process and
calls the app through an ASGI transport.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import func, select

from homepot.analytics.models import (
    APIRequestLog,
    ConfigurationHistory,
    DeviceMetrics,
    DeviceStateHistory,
    ErrorLog,
    JobOutcome,
    SiteOperatingSchedule,
    UserActivity,
)
from homepot.auth.models import Role
from homepot.config import FleetSettings, Settings
from homepot.device.models import Device
from homepot.job.models import JobExecution
from homepot.main import create_app
from homepot.models import ANALYTICS_MODELS
from homepot.protocol.channels import InProcessChannel
from homepot.simulation.embedded import embedded_simulator
from homepot.simulation.faults import FaultKind, read_labels
from homepot.simulation.fleet_config import SimulationConfig
from homepot.site.models import Site
from tests.helpers import create_user, db_rows, flush

BROKER = ("127.0.0.1", 1883)
T = TypeVar("T")


def _broker_answers() -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(BROKER) == 0


async def eventually(check: Callable[[], Awaitable[T]], *, within: float = 30.0) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            pytest.fail(f"not within {within} s: {check.__name__}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def fleet_app(backend: str, settings: Settings) -> AsyncIterator[FastAPI]:
    fleet = FleetSettings(orchestrator_interval_seconds=0.2, ack_timeout_seconds=5)
    if backend == "postgresql":
        if not _broker_answers():
            pytest.skip(
                "no MQTT broker at 127.0.0.1:1883; start it with scripts/ensure-services.sh"
            )
        # The shortest session expiry: a session this test leaves on the shared broker is
        # gone a minute later instead of queueing (and dropping) device messages for a day.
        fleet = fleet.model_copy(
            update={
                "mqtt_url": f"mqtt://{BROKER[0]}:{BROKER[1]}",
                "mqtt_session_expiry_seconds": 60,
            }
        )
    application = create_app(settings.model_copy(update={"fleet": fleet}))
    async with LifespanManager(application):
        yield application


def always_open_week(site_ids: list[str], path: Path) -> Path:
    """Shops open all day, busy all day: every tick sells, whatever the hour of the test."""
    day = {
        "open_time": "00:00", "close_time": "23:59", "is_closed": False,
        "peak_hours_start": "00:00", "peak_hours_end": "23:59",
        "expected_transaction_volume": 50_000,
    }  # fmt: skip
    weeks = [
        {"site_id": site_id, "timezone": "Europe/Berlin",
         "days": [{"day_of_week": n, **day} for n in range(7)]}
        for site_id in site_ids
    ]  # fmt: skip
    path.write_text(json.dumps(weeks))
    return path


async def count(app: FastAPI, model: type[Any], *conditions: Any) -> int:
    async with app.state.session_factory() as session:
        statement = select(func.count()).select_from(model).where(*conditions)
        return int(await session.scalar(statement) or 0)


async def test_simulated_terminals_register_report_run_a_pushed_job_and_fill_every_stream(
    fleet_app: FastAPI, backend: str, tmp_path: Path
) -> None:
    app = fleet_app
    admin = await create_user(app, role=Role.admin)
    run = uuid.uuid4().hex[:6]  # the broker is shared: topics must not meet other runs'
    site_ids = [f"e2e{run}-site-001", f"e2e{run}-site-002"]
    config = SimulationConfig(
        server_url="http://testserver",
        sites=2,
        devices=4,
        speed=30,  # a report a second
        fault_rate=0,
        opening_faults=(FaultKind.payment_gateway_timeout,),
        labels=tmp_path / "labels.jsonl",
        schedules=always_open_week(site_ids, tmp_path / "week.json"),
        seed=5,
        site_prefix=f"e2e{run}-site",
        device_prefix=f"e2e{run}-pos",
        operator=True,
        operator_interval_seconds=0.5,
    )
    device_ids = [f"e2e{run}-pos-{n:04d}" for n in range(1, 5)]
    pushed_in_process = isinstance(app.state.push_channel, InProcessChannel)
    assert pushed_in_process == (backend == "sqlite")

    async with embedded_simulator(app, config, admin_email=admin["email"]) as simulator:
        await simulator.setup()
        assert simulator.stats.registered == 4
        if backend == "postgresql":
            assert all(t.registration and t.registration.mqtt for t in simulator.terminals)
        stop = asyncio.Event()
        running = asyncio.create_task(simulator.run(stop))

        async def all_online() -> bool:
            await flush(app)
            rows = await db_rows(app, DeviceStateHistory, new_state="online")
            return {row.device_id for row in rows} >= set(device_ids)

        await eventually(all_online)
        if backend == "postgresql":
            assert all(t.mqtt is not None for t in simulator.terminals)
        headers = await simulator._admin_headers()
        created = await simulator.http.post(
            "/api/v1/jobs",
            headers=headers,
            json={
                "job_type": "restart",
                "target_type": "site",
                "target_id": site_ids[0],
                "description": "end-to-end restart",
            },
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]

        async def job_finished_on_both_terminals() -> list[JobOutcome]:
            await flush(app)
            outcomes = await db_rows(app, JobOutcome, job_id=job_id)
            return outcomes if len(outcomes) == 2 else []

        outcomes = await eventually(job_finished_on_both_terminals)

        async def every_stream_has_rows() -> bool:
            await flush(app)
            return all([await count(app, model) for model in ANALYTICS_MODELS])

        await eventually(every_stream_has_rows)
        stop.set()
        await asyncio.wait_for(running, timeout=30)

    # The job reached both terminals of the site by push and each reported a result.
    assert {o.device_id for o in outcomes} == set(device_ids[0::2])  # round-robin over sites
    assert {o.status for o in outcomes} <= {"success", "failed"}
    executions = await db_rows(app, JobExecution, job_id=job_id)
    assert {e.delivery for e in executions} == {"push"}

    # Every stream, from this fleet.
    assert await count(app, DeviceMetrics, DeviceMetrics.device_id.in_(device_ids)) >= 4
    assert (
        await count(app, SiteOperatingSchedule, SiteOperatingSchedule.site_id.in_(site_ids)) == 14
    )
    assert await count(app, APIRequestLog, APIRequestLog.route == "/api/v1/agent/register") == 4
    assert await count(app, UserActivity, UserActivity.user_id == admin["id"]) > 0
    assert await count(app, ConfigurationHistory) > 0
    # Benign events (a settlement at closing time, a firmware reboot) are labelled too, when
    # the run happens to cross one in some site's time zone; the injected fault is the one.
    labels = read_labels(tmp_path / "labels.jsonl")
    faulted = [label for label in labels if not label["fault"].startswith("benign_")]
    assert [label["fault"] for label in faulted] == ["payment_gateway_timeout"]
    timeouts = await db_rows(app, ErrorLog, error_code="EXT_SERVICE_TIMEOUT")
    assert {row.device_id for row in timeouts} == {faulted[0]["device_id"]}
    assert {(row.category, row.severity) for row in timeouts} == {("external_service", "critical")}
    # Nothing the simulation produced passes for real: its terminals, stores, operator and
    # every row of every stream (over MQTT too) are marked simulated.
    for model in ANALYTICS_MODELS:
        stored = await db_rows(app, model)
        if model is ErrorLog:
            # The broker is shared: other runs' messages are refused here, as real ones.
            stored = [row for row in stored if row.device_id in device_ids]
        sources = {row.source for row in stored}
        assert sources == {"simulated"}, f"{model.__tablename__}: {sources}"
    assert {device.simulated for device in await db_rows(app, Device)} == {True}
    assert {site.simulated for site in await db_rows(app, Site)} == {True}
    if backend == "postgresql":
        # Telemetry and heartbeats went over MQTT: no HTTP telemetry request was made.
        assert (
            await count(app, APIRequestLog, APIRequestLog.route == "/api/v1/agent/telemetry") == 0
        )
