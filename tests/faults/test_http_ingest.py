"""Faults during HTTP telemetry ingest, against a PostgreSQL of the test's own.

Real terminal agents (their outbox, their client) report through the real app while the
database is stopped, restarted through its start-up phase, cut off and stalled (a TCP proxy
in between). Whatever happens, every sample an agent made is stored exactly once, each
device's series has no gap, and the agents only ever see 2xx or 503 answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import func, select

from homepot.agent.agent import Agent, AgentConfig
from homepot.agent.client import DeviceClient
from homepot.analytics.models import DeviceMetrics, ErrorLog
from homepot.config import (
    AnalyticsSettings,
    AuthSettings,
    DatabaseSettings,
    FleetSettings,
    RetentionSettings,
    Settings,
)
from homepot.main import create_app
from tests.agent.test_agent import FixedHost, FixedSales
from tests.conftest import TEST_SECRET
from tests.faults.servers import OwnPostgres, TcpProxy
from tests.helpers import create_bootstrap_key, create_site

pytestmark = pytest.mark.faults

TICK = timedelta(seconds=30)
DEVICES = 3


def fault_settings(url: str, spool_dir: Path, **analytics: float) -> Settings:
    """Short database timeouts, so that a stall is noticed in about two seconds."""
    return Settings(
        database_url=url,
        auth=AuthSettings(secret_key=TEST_SECRET),
        database=DatabaseSettings(
            connect_timeout_seconds=2, command_timeout_seconds=2, pool_timeout_seconds=2
        ),
        analytics=AnalyticsSettings.model_validate(
            {
                "spool_dir": spool_dir,
                "flush_interval_seconds": 0.05,
                "retry_backoff_seconds": 0.05,
                "retry_max_seconds": 0.5,
                "spool_replay_interval_seconds": 0.2,
                **analytics,
            }
        ),
        # Nothing else in the background: the agents' traffic is the test.
        fleet=FleetSettings(
            orchestrator_interval_seconds=3600,
            watchdog_interval_seconds=3600,
            impact_evaluator_interval_seconds=3600,
        ),
        retention=RetentionSettings(enabled=False),
    )


@pytest.fixture
async def app(
    postgres: OwnPostgres, proxy: TcpProxy, database: str, tmp_path: Path
) -> AsyncIterator[FastAPI]:
    settings = fault_settings(postgres.url(proxy.port, database), tmp_path / "spool")
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=60):
        yield application


class CountingTransport(httpx.AsyncBaseTransport):
    """The app over ASGI; counts every status the agents were answered."""

    def __init__(self, app: FastAPI) -> None:
        self.inner = httpx.ASGITransport(app=app, client=("198.51.100.41", 41000))
        self.statuses: Counter[int] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.statuses[response.status_code] += 1
        return response


class Fleet:
    """Terminal agents on one clock: each tick, every agent reports once."""

    def __init__(self, app: FastAPI, state_root: Path) -> None:
        self.app = app
        self.transport = CountingTransport(app)
        self.now = datetime.now(UTC) - timedelta(hours=2)
        self.agents: list[Agent] = []
        self.state_root = state_root

    async def register(self, count: int) -> None:
        site_id = await create_site(self.app)
        key = await create_bootstrap_key(self.app, site_id)
        for number in range(count):
            http = httpx.AsyncClient(transport=self.transport, base_url="http://testserver")
            config = AgentConfig(
                server_url="http://testserver",
                site_id=site_id,
                device_id=f"till-{number:02d}-{uuid.uuid4().hex[:6]}",
                bootstrap_key=key,
                state_dir=self.state_root / str(number),
            )
            agent = Agent(
                config,
                DeviceClient(http),
                source=FixedSales(),
                host=FixedHost(),
                clock=lambda: self.now,
            )
            await agent.ensure_registered()
            self.agents.append(agent)

    async def ticks(self, count: int) -> None:
        for _ in range(count):
            self.now += TICK
            await asyncio.gather(*(agent.report_once() for agent in self.agents))

    def made(self, agent: Agent) -> int:
        return agent.stats.reports

    async def deliver_everything(self) -> None:
        """What a terminal does at its next reports: send until the outbox is empty."""
        for _ in range(100):
            if all(agent.outbox.stats().pending == 0 for agent in self.agents):
                return
            await asyncio.gather(*(agent.deliver() for agent in self.agents))
            await asyncio.sleep(0.25)
        raise AssertionError("the agents could not deliver their outboxes")

    async def close(self) -> None:
        for agent in self.agents:
            agent.outbox.close()
            await agent.client.aclose()


@contextlib.asynccontextmanager
async def registered_fleet(app: FastAPI, state_root: Path) -> AsyncIterator[Fleet]:
    fleet = Fleet(app, state_root)
    await fleet.register(DEVICES)
    try:
        yield fleet
    finally:
        await fleet.close()


@pytest.fixture
async def fleet(app: FastAPI, tmp_path: Path) -> AsyncIterator[Fleet]:
    async with registered_fleet(app, tmp_path / "agents") as fleet:
        yield fleet


async def stored_series(app: FastAPI) -> dict[str, list[datetime]]:
    async with app.state.session_factory() as session:
        result = await session.execute(
            select(DeviceMetrics.device_id, DeviceMetrics.timestamp).order_by(
                DeviceMetrics.device_id, DeviceMetrics.timestamp
            )
        )
        series: dict[str, list[datetime]] = {}
        for device_id, moment in result:
            series.setdefault(device_id, []).append(moment)
        return series


Fault = Callable[[OwnPostgres, TcpProxy], Awaitable[Callable[[], Awaitable[None]]]]


async def stopped(postgres: OwnPostgres, proxy: TcpProxy) -> Callable[[], Awaitable[None]]:
    await asyncio.to_thread(postgres.stop)

    async def heal() -> None:
        await asyncio.to_thread(postgres.start)

    return heal


async def starting_up(postgres: OwnPostgres, proxy: TcpProxy) -> Callable[[], Awaitable[None]]:
    """Restarted, and held in the start-up phase: every connection gets 57P03."""
    await asyncio.to_thread(postgres.stop)
    await asyncio.to_thread(postgres.start_in_startup_phase)

    async def heal() -> None:
        await asyncio.to_thread(postgres.promote)

    return heal


async def cut(postgres: OwnPostgres, proxy: TcpProxy) -> Callable[[], Awaitable[None]]:
    await proxy.cut()
    return proxy.start


async def stalled(postgres: OwnPostgres, proxy: TcpProxy) -> Callable[[], Awaitable[None]]:
    proxy.stall()

    async def heal() -> None:
        proxy.flow()

    return heal


@pytest.mark.parametrize("fault", [stopped, starting_up, cut, stalled], ids=lambda f: f.__name__)
async def test_telemetry_sent_over_http_is_stored_once_and_whole_through_a_database_fault(
    fault: Fault, postgres: OwnPostgres, proxy: TcpProxy, app: FastAPI, fleet: Fleet
) -> None:
    await fleet.ticks(2)
    heal = await fault(postgres, proxy)
    try:
        await fleet.ticks(3)
    finally:
        await heal()
    await fleet.ticks(2)
    await fleet.deliver_everything()
    await app.state.recorder.flush()

    # The agents were told "later" (503), never "no" (4xx) or "broken" (500).
    answered = set(fleet.transport.statuses)
    assert 503 in answered
    assert answered <= {200, 202, 503}, fleet.transport.statuses
    # Every sample made is stored once, and each device's series runs without a gap.
    series = await stored_series(app)
    assert sorted(series) == sorted(agent.config.device_id for agent in fleet.agents)
    for agent in fleet.agents:
        moments = series[agent.config.device_id]
        assert len(moments) == fleet.made(agent) == 7
        assert all(
            later - earlier == TICK for earlier, later in zip(moments, moments[1:], strict=False)
        )
        assert agent.outbox.stats().rejected == 0
    snapshot = app.state.recorder.snapshot()
    assert (snapshot["rejected"], snapshot["dropped"]) == (0, 0)


@pytest.fixture
async def held_app(
    postgres: OwnPostgres, proxy: TcpProxy, database: str, tmp_path: Path
) -> AsyncIterator[FastAPI]:
    """The recorder writes only when told to (flush), so the test decides when it tries."""
    settings = fault_settings(
        postgres.url(proxy.port, database),
        tmp_path / "spool",
        flush_interval_seconds=60,
        batch_size=10_000,
    )
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=60):
        yield application


@pytest.fixture
async def held_fleet(held_app: FastAPI, tmp_path: Path) -> AsyncIterator[Fleet]:
    async with registered_fleet(held_app, tmp_path / "agents") as fleet:
        yield fleet


async def metric_rows(app: FastAPI) -> int:
    async with app.state.session_factory() as session:
        return int(await session.scalar(select(func.count()).select_from(DeviceMetrics)) or 0)


async def test_accepted_samples_are_spooled_while_the_database_is_down_then_replayed(
    postgres: OwnPostgres, proxy: TcpProxy, held_app: FastAPI, held_fleet: Fleet
) -> None:
    recorder = held_app.state.recorder
    await held_fleet.ticks(4)  # accepted (202) and waiting in the recorder
    waiting = recorder.queued
    assert waiting >= 4 * DEVICES

    proxy.stall()  # black-holed: the write hangs until the command timeout
    await asyncio.wait_for(recorder.flush(), timeout=25)
    snapshot = recorder.snapshot()
    assert snapshot["spilled"] == waiting
    assert snapshot["queued"] == 0
    assert snapshot["spool_pending_batches"] >= 1
    assert snapshot["rejected"] == 0  # an outage is never bad data
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=held_app), base_url="http://testserver"
    ) as client:  # health does not hang with the database
        health = await asyncio.wait_for(client.get("/api/v1/health"), timeout=20)
    assert health.json()["status"] == "degraded"

    proxy.flow()
    await recorder.flush()
    assert recorder.snapshot()["replayed"] == waiting
    assert recorder.snapshot()["spool_pending_batches"] == 0
    assert await metric_rows(held_app) == 4 * DEVICES


async def test_an_unwritable_spool_is_counted_reported_and_its_events_wait_in_memory(
    postgres: OwnPostgres, proxy: TcpProxy, held_app: FastAPI, held_fleet: Fleet
) -> None:
    recorder = held_app.state.recorder
    spool_dir: Path = recorder.spool.directory
    await asyncio.to_thread(spool_dir.parent.mkdir, parents=True, exist_ok=True)
    # A file where the spool directory should be: the spool cannot be written.
    await asyncio.to_thread(spool_dir.write_text, "not a directory")

    await held_fleet.ticks(3)
    waiting = recorder.queued
    await proxy.cut()
    await recorder.flush()

    snapshot = recorder.snapshot()
    assert snapshot["spool_failures"] >= 1
    assert snapshot["spool_writable"] is False
    assert snapshot["queued"] >= waiting  # nothing silently dropped: still in memory
    assert (snapshot["dropped"], snapshot["rejected"], snapshot["spilled"]) == (0, 0, 0)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=held_app), base_url="http://testserver"
    ) as client:
        health = (await client.get("/api/v1/health")).json()
    # The public answer says degraded (the details are an admin's, whose token cannot be
    # checked while the database is cut); the recorder's own report says why.
    assert health == {"status": "degraded"}
    assert recorder.snapshot()["last_spool_error"]

    await asyncio.to_thread(spool_dir.unlink)  # the disk is freed: the spool takes the events
    await recorder.flush()
    assert recorder.snapshot()["spilled"] >= waiting
    assert recorder.snapshot()["spool_writable"] is True

    await proxy.start()
    await recorder.flush()
    assert await metric_rows(held_app) == 3 * DEVICES
    async with held_app.state.session_factory() as session:
        codes = list(await session.scalars(select(ErrorLog.error_code)))
    assert "ANALYTICS_SPOOL_UNWRITABLE" in codes
