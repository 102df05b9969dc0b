"""Faults during MQTT ingest, against a PostgreSQL of the test's own.

Terminals publish telemetry and heartbeats through a Mosquitto of the test's own while the
database is stopped, restarted and held in its start-up phase (every connection refused with
57P03), or stalled (a TCP proxy that stops passing bytes). Whatever happens, every sample and
heartbeat a device published is stored exactly once, in the order sent, and the bridge never
gives up on a message. (The cut connection is tests/fleet/test_mqtt_faults.py.)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import func, select

from homepot.agent.mqtt import DeviceMqttLink
from homepot.analytics.models import DeviceMetrics, ErrorLog
from homepot.device.models import HealthCheck
from homepot.main import create_app
from homepot.protocol.messages import Heartbeat
from tests.faults.servers import OwnPostgres, TcpProxy
from tests.faults.test_http_ingest import Fault, fault_settings, stalled, starting_up, stopped
from tests.fleet.brokers import HOST, Broker, open_broker
from tests.fleet.test_mqtt import _batch, _device_with_key, _eventually, mqtt_fleet
from tests.helpers import db_rows, flush

__all__ = ["open_broker"]  # fixture

pytestmark = pytest.mark.faults

ROUNDS_BEFORE, ROUNDS_DURING, ROUNDS_AFTER = 2, 4, 2
SAMPLES = 5


@pytest.fixture
async def app(
    postgres: OwnPostgres, proxy: TcpProxy, database: str, tmp_path: Path, open_broker: Broker
) -> AsyncIterator[FastAPI]:
    settings = fault_settings(postgres.url(proxy.port, database), tmp_path / "spool")
    fleet = mqtt_fleet(
        open_broker.url,
        orchestrator_interval_seconds=3600,
        watchdog_interval_seconds=3600,
        impact_evaluator_interval_seconds=3600,
    )
    application = create_app(settings.model_copy(update={"fleet": fleet}))
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=60):
        yield application


async def _samples(app: FastAPI, device_id: str) -> int:
    async with app.state.session_factory() as session:
        statement = select(func.count()).select_from(DeviceMetrics).filter_by(device_id=device_id)
        return int(await session.scalar(statement) or 0)


@pytest.mark.parametrize("fault", [stopped, starting_up, stalled], ids=lambda f: f.__name__)
async def test_mqtt_ingest_through_a_database_fault_stores_every_message_once(
    fault: Fault, postgres: OwnPostgres, proxy: TcpProxy, app: FastAPI, open_broker: Broker
) -> None:
    bridge = app.state.mqtt_bridge
    devices = [await _device_with_key(app) for _ in range(2)]
    sent = {device_id: 0 for device_id, _ in devices}
    async with contextlib.AsyncExitStack() as stack:
        links = {
            device_id: await stack.enter_async_context(
                DeviceMqttLink(HOST, open_broker.port, device_id, api_key)
            )
            for device_id, api_key in devices
        }

        async def send(rounds: int) -> None:
            for _ in range(rounds):
                for device_id, link in links.items():
                    await link.publish_telemetry(_batch(samples=SAMPLES))
                    sent[device_id] += 1
                    # Numbered, to see the order they are stored in.
                    await link.publish_heartbeat(Heartbeat(uptime_seconds=sent[device_id]))

        async def all_stored() -> bool:
            await flush(app)
            stored = {device_id: await _samples(app, device_id) for device_id in sent}
            return stored == {device_id: rounds * SAMPLES for device_id, rounds in sent.items()}

        await send(ROUNDS_BEFORE)
        await _eventually(all_stored, within=30)

        spooled_before = bridge.stats["spooled"]
        heal = await fault(postgres, proxy)
        try:
            await send(ROUNDS_DURING)

            async def everything_spooled() -> bool:
                # Telemetry and heartbeat of every round of every device.
                return bridge.stats["spooled"] - spooled_before >= 2 * ROUNDS_DURING * len(sent)

            await _eventually(everything_spooled, within=60)
        finally:
            await heal()
        await send(ROUNDS_AFTER)
        await _eventually(all_stored, within=90)

        async def drained() -> bool:
            return not bridge.spool.has_backlog()

        await _eventually(drained, within=30)

    for device_id, rounds in sent.items():
        assert await _samples(app, device_id) == rounds * SAMPLES
        heartbeats = await db_rows(app, HealthCheck, device_id=device_id)
        stored_order = [
            row.details["uptime_seconds"] for row in sorted(heartbeats, key=lambda row: row.id)
        ]
        # Every heartbeat once, in the order the device sent them, spool or not.
        assert stored_order == list(range(1, rounds + 1))
    await flush(app)
    assert await db_rows(app, ErrorLog, error_code="MQTT_HANDLER_FAILED") == []
