"""No session of the uplink's share group is left without a reader (homepot.fleet.mqtt_orphans).

Mosquitto keeps giving a stopped process's persistent session its round-robin share of the
device messages, queued for nobody. These tests leave such a session behind — a worker that
stopped while the other runs on, a restart that got another slot while its predecessor still
held its own, a client id from an earlier configuration — and check that every device
message published afterwards is stored, once, within a bounded time.

Each test runs a Mosquitto of its own (tests/fleet/brokers.py): sessions outlive the test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import func, select, text

from homepot.agent.mqtt import DeviceMqttLink
from homepot.analytics.models import DeviceMetrics
from homepot.config import FleetSettings, Settings
from homepot.db import create_engine
from homepot.fleet.models import MqttSession
from homepot.fleet.mqtt_orphans import OrphanSessions, session_lock
from homepot.fleet.uplink_spool import SpooledMessage, UplinkSpool
from homepot.kit.singleton import HOMEPOT_NAMESPACE, lock_key
from homepot.main import create_app
from homepot.protocol.messages import MetricSample, TelemetryBatch, topics
from homepot.protocol.mqtt import SignedMessage, device_secret
from tests.fleet.brokers import HOST, Broker, open_broker
from tests.fleet.test_mqtt import _device_with_key
from tests.helpers import flush

__all__ = ["open_broker"]  # fixture

# Scans run every 5 s and a drain ends 1 s after the last message: far within this.
STORED_WITHIN_SECONDS = 30.0


def _server(settings: Settings, broker: Broker, tmp_path: Path, name: str, **fleet: str) -> FastAPI:
    """One server process of the deployment: its own spool, the test's database and broker."""
    analytics = settings.analytics.model_copy(update={"spool_dir": tmp_path / name})
    return create_app(
        settings.model_copy(
            update={
                "fleet": FleetSettings(mqtt_url=broker.url, **fleet),
                "analytics": analytics,
            }
        )
    )


@asynccontextmanager
async def _running(app: FastAPI) -> AsyncIterator[FastAPI]:
    async with LifespanManager(app, startup_timeout=30):
        bridge = app.state.mqtt_bridge
        await asyncio.wait_for(bridge.connected.wait(), 20)
        yield app


async def _devices(app: FastAPI, count: int) -> list[tuple[str, str]]:
    return [await _device_with_key(app) for _ in range(count)]


async def _publish(broker: Broker, devices: list[tuple[str, str]], per_device: int) -> None:
    async def send(device_id: str, api_key: str) -> None:
        async with DeviceMqttLink(HOST, broker.port, device_id, api_key) as link:
            for n in range(per_device):
                sample = MetricSample(
                    event_id=uuid.uuid4(),
                    timestamp=datetime.now(UTC),
                    collection_interval_seconds=30,
                    cpu_percent=float(n % 100),
                )
                await link.publish_telemetry(TelemetryBatch(samples=[sample]))

    await asyncio.gather(*(send(device_id, key) for device_id, key in devices))


async def _stored(app: FastAPI, devices: list[tuple[str, str]]) -> int:
    await flush(app)
    async with app.state.session_factory() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(DeviceMetrics)
            .where(DeviceMetrics.device_id.in_([device_id for device_id, _ in devices]))
        )
    return int(count or 0)


async def _all_stored_once(app: FastAPI, devices: list[tuple[str, str]], expected: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STORED_WITHIN_SECONDS
    while (stored := await _stored(app, devices)) != expected:
        assert stored < expected, f"{stored} samples stored, {expected} sent"
        assert loop.time() < deadline, (
            f"{stored} of {expected} samples stored after {STORED_WITHIN_SECONDS} s"
        )
        await asyncio.sleep(0.25)
    await asyncio.sleep(1.5)  # nothing arrives late, twice
    assert await _stored(app, devices) == expected


async def _recorded(app: FastAPI) -> set[str]:
    """The sessions recorded on the app's broker (earlier tests' brokers had other ports)."""
    async with app.state.session_factory() as session:
        return set(
            await session.scalars(
                select(MqttSession.client_id).where(
                    MqttSession.broker == app.state.mqtt_bridge.broker
                )
            )
        )


async def _wait_ended(app: FastAPI, client_id: str) -> None:
    """The survivor deleted the session's row: it drained and ended the session."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STORED_WITHIN_SECONDS
    while client_id in await _recorded(app):
        assert loop.time() < deadline, f"session {client_id} was not ended"
        await asyncio.sleep(0.25)


def _postgresql_only(backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("several server processes share PostgreSQL; SQLite is served by one")


async def test_a_stopped_workers_session_is_drained_and_ended_by_the_one_that_runs_on(
    backend: str, settings: Settings, open_broker: Broker, tmp_path: Path
) -> None:
    """Four workers scaled down, in small: the worker of slot 1 stops for good, slot 0 runs
    on. The stopped worker's session stays in the group; every message sent afterwards is
    stored all the same, once."""
    _postgresql_only(backend)
    async with _running(_server(settings, open_broker, tmp_path, "first")) as first:
        async with _running(_server(settings, open_broker, tmp_path, "second")) as second:
            stopped = second.state.mqtt_bridge.client_id
            assert first.state.mqtt_bridge.client_id.endswith("-0")
            assert stopped.endswith("-1")
        devices = await _devices(first, 4)
        await _publish(open_broker, devices, per_device=50)
        await _all_stored_once(first, devices, expected=200)
        await _wait_ended(first, stopped)
        assert first.state.mqtt_bridge.stats["orphaned_sessions_ended"] == 1
        # The group is the live worker alone now: the next messages are stored at once.
        await _publish(open_broker, devices, per_device=10)
        await _all_stored_once(first, devices, expected=240)


async def test_two_survivors_end_one_orphan_once_and_store_each_message_once(
    backend: str, settings: Settings, open_broker: Broker, tmp_path: Path
) -> None:
    """Both live workers find the stopped one's session; its lock lets one of them drain it."""
    _postgresql_only(backend)
    async with (
        _running(_server(settings, open_broker, tmp_path, "first")) as first,
        _running(_server(settings, open_broker, tmp_path, "second")) as second,
    ):
        async with _running(_server(settings, open_broker, tmp_path, "third")) as third:
            stopped = third.state.mqtt_bridge.client_id
            assert stopped.endswith("-2")
        devices = await _devices(first, 4)
        await _publish(open_broker, devices, per_device=60)
        await _all_stored_once(first, devices, expected=240)
        await _wait_ended(first, stopped)
        ended = [app.state.mqtt_bridge.stats["orphaned_sessions_ended"] for app in (first, second)]
        assert sorted(ended) == [0, 1]


async def test_what_a_stopped_worker_spooled_on_this_host_is_stored_by_its_drainer(
    backend: str, settings: Settings, open_broker: Broker, tmp_path: Path
) -> None:
    """Workers of one host share the spool directory: the stopped worker's spool (batches it
    acknowledged while the database was down) is replayed when its session is drained."""
    _postgresql_only(backend)
    async with _running(_server(settings, open_broker, tmp_path, "host")) as first:
        async with _running(_server(settings, open_broker, tmp_path, "host")) as second:
            stopped = second.state.mqtt_bridge
            devices = await _devices(first, 2)
            spooled = [
                SpooledMessage(topic, payload, verified=False)
                for device_id, api_key in devices
                for topic, payload in [_signed_telemetry(device_id, api_key) for _ in range(5)]
            ]
            spool_directory = stopped.spool_directory(stopped.client_id)
        # Written as the stopped worker left it (after its bridge stopped: nothing replays it).
        UplinkSpool(spool_directory).write(spooled)
        await _all_stored_once(first, devices, expected=10)
        await _wait_ended(first, stopped.client_id)
        assert not UplinkSpool(spool_directory).has_backlog()


def _signed_telemetry(device_id: str, api_key: str) -> tuple[str, bytes]:
    topic = topics.telemetry(device_id)
    sample = MetricSample(
        event_id=uuid.uuid4(),
        timestamp=datetime.now(UTC),
        collection_interval_seconds=30,
        cpu_percent=12.5,
    )
    signed = SignedMessage.of(device_secret(api_key), topic, TelemetryBatch(samples=[sample]))
    return topic, signed.model_dump_json().encode()


async def test_a_restart_that_raced_its_predecessors_lock_loses_nothing(
    backend: str, settings: Settings, open_broker: Broker, tmp_path: Path
) -> None:
    """The new process starts while its predecessor still holds slot 0: it gets slot 1, and
    the predecessor's session (slot 0) would keep half the uplink for a day."""
    _postgresql_only(backend)
    old = _server(settings, open_broker, tmp_path, "old")
    predecessor = LifespanManager(old, startup_timeout=30)
    await predecessor.__aenter__()
    stopped = False
    try:
        async with _running(_server(settings, open_broker, tmp_path, "new")) as new:
            old_session = old.state.mqtt_bridge.client_id
            assert old_session.endswith("-0")
            assert new.state.mqtt_bridge.client_id.endswith("-1")
            stopped = True
            await predecessor.__aexit__(None, None, None)
            devices = await _devices(new, 4)
            await _publish(open_broker, devices, per_device=50)
            await _all_stored_once(new, devices, expected=200)
            await _wait_ended(new, old_session)
    finally:
        if not stopped:
            await predecessor.__aexit__(None, None, None)


async def test_the_session_of_an_earlier_client_id_is_drained(
    settings: Settings, open_broker: Broker, tmp_path: Path
) -> None:
    """Another host name (a container recreated) or another configured client id: the old
    session is a member of the group still, and everything sent while no server ran is
    queued in it. The new server stores it all."""
    run = uuid.uuid4().hex[:8]
    earlier = f"homepot-earlier-{run}"
    async with _running(
        _server(settings, open_broker, tmp_path, "earlier", mqtt_client_id=earlier)
    ) as old:
        devices = await _devices(old, 4)
    await _publish(open_broker, devices, per_device=50)
    async with _running(
        _server(settings, open_broker, tmp_path, "later", mqtt_client_id=f"homepot-later-{run}")
    ) as new:
        await _all_stored_once(new, devices, expected=200)
        await _wait_ended(new, earlier)
        assert new.state.mqtt_bridge.stats["orphaned_messages"] == 200


async def test_a_restarted_worker_waits_while_its_predecessors_session_is_drained(
    backend: str, settings: Settings, open_broker: Broker, tmp_path: Path
) -> None:
    """Another process drains the session the restarted worker's slot names (it holds the
    session's lock): the worker waits for it instead of taking the session from under it,
    and nothing sent meanwhile is lost."""
    _postgresql_only(backend)
    async with _running(_server(settings, open_broker, tmp_path, "worker")) as worker:
        session_name = worker.state.mqtt_bridge.client_id
        devices = await _devices(worker, 4)
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            drainer = await connection.execution_options(isolation_level="AUTOCOMMIT")
            lock = {"namespace": HOMEPOT_NAMESPACE, "key": lock_key(session_lock(session_name))}
            assert await drainer.scalar(text("SELECT pg_try_advisory_lock(:namespace, :key)"), lock)
            restarted = _server(settings, open_broker, tmp_path, "worker")
            async with LifespanManager(restarted, startup_timeout=30):
                bridge = restarted.state.mqtt_bridge
                await _publish(open_broker, devices, per_device=50)
                await asyncio.sleep(2)
                assert not bridge.connected.is_set()
                await drainer.execute(text("SELECT pg_advisory_unlock(:namespace, :key)"), lock)
                await asyncio.wait_for(bridge.connected.wait(), 20)
                assert bridge.client_id == session_name
                await _all_stored_once(restarted, devices, expected=200)
    finally:
        await engine.dispose()


async def test_an_owner_whose_lock_connection_died_keeps_its_session_and_loses_nothing(
    backend: str, settings: Settings, open_broker: Broker, tmp_path: Path
) -> None:
    """The database ends a live worker's lock connection (a restart of PostgreSQL, an admin):
    its session's lock is free while the worker still reads the session. The other worker may
    adopt it and take the client id over; the owner takes it back (and its lock), and every
    message is stored once."""
    _postgresql_only(backend)
    async with (
        _running(_server(settings, open_broker, tmp_path, "owner")) as owner,
        _running(_server(settings, open_broker, tmp_path, "other")) as other,
    ):
        bridge = owner.state.mqtt_bridge
        devices = await _devices(owner, 4)
        leadership = owner.state.leadership
        pid = await leadership._connection.scalar(text("SELECT pg_backend_pid()"))
        engine = create_engine(settings.database_url)
        try:
            async with engine.connect() as admin:
                await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                # pg_terminate_backend only signals: wait for the backend (and its locks).
                while await admin.scalar(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                ):
                    await admin.rollback()
                    await asyncio.sleep(0.02)
            # The other worker's scan comes first (the owner has not noticed yet): it adopts
            # the owner's session while devices send.
            scan = asyncio.create_task(OrphanSessions(other.state.mqtt_bridge).scan())
            await _publish(open_broker, devices, per_device=50)
            await scan
            await _all_stored_once(owner, devices, expected=200)

            # The owner holds its session's lock again, and its session is recorded.
            async def owner_holds_its_lock() -> bool:
                async with engine.connect() as probe:
                    taken = await probe.scalar(
                        text("SELECT pg_try_advisory_lock(:namespace, :key)"),
                        {
                            "namespace": HOMEPOT_NAMESPACE,
                            "key": lock_key(session_lock(bridge.client_id)),
                        },
                    )
                    if taken:
                        await probe.execute(
                            text("SELECT pg_advisory_unlock(:namespace, :key)"),
                            {
                                "namespace": HOMEPOT_NAMESPACE,
                                "key": lock_key(session_lock(bridge.client_id)),
                            },
                        )
                    return not taken

            loop = asyncio.get_running_loop()
            deadline = loop.time() + STORED_WITHIN_SECONDS
            while not (await owner_holds_its_lock() and bridge.client_id in await _recorded(owner)):
                assert loop.time() < deadline, "the owner did not take its session's lock back"
                await asyncio.sleep(0.5)
            assert bridge.connected.is_set()
            await _publish(open_broker, devices, per_device=10)
            await _all_stored_once(owner, devices, expected=240)
        finally:
            await engine.dispose()
