"""The device protocol, unchanged, through a cluster of three NATS servers (MQTT 3.1.1 and
JetStream), with two server processes on one PostgreSQL database sharing the uplink.

NATS has no MQTT shared subscriptions, so the servers run with ``fleet.mqtt_protocol``
"3.1.1" and ``fleet.mqtt_shared_subscription`` false: one of them reads the uplink under one
persistent session, the other pushes jobs and stands by. Devices connect to any node. The
node the reading server is connected to is killed during ingest: the other server takes the
uplink (and the session's unacknowledged messages) over through another node, the devices
on the killed node reconnect to another one and send what was not acknowledged again (as the
agent's outbox does), and every message a broker acknowledged is stored, once.

Mosquitto with MQTT 5 shared subscriptions is tested in test_mqtt.py and
test_mqtt_faults.py; here it also runs with two server processes sharing the uplink.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import SimpleNamespace

import aiomqtt
import pytest
from sqlalchemy import func, select

from homepot.agent.mqtt import DeviceMqttLink
from homepot.analytics.models import DeviceMetrics
from homepot.config import Settings
from homepot.db import create_engine, create_session_factory
from homepot.fleet.mqtt import UPLINK_LEADERSHIP
from tests.conftest import TEST_SECRET
from tests.faults.servers import AppServer, stop_all
from tests.fleet.brokers import HOST, Broker, NatsCluster, nats_cluster, open_broker
from tests.fleet.test_mqtt import _batch, _device_with_key, _eventually

__all__ = ["nats_cluster", "open_broker"]  # fixtures

pytestmark = pytest.mark.servers

BATCHES = 12
SAMPLES = 5


def _env(settings: Settings, url: str, **fleet: str) -> dict[str, str]:
    return {
        "HOMEPOT_DATABASE_URL": settings.database_url,
        "HOMEPOT_AUTH__SECRET_KEY": TEST_SECRET,
        "HOMEPOT_FLEET__MQTT_URL": url,
        "HOMEPOT_FLEET__MQTT_SESSION_EXPIRY_SECONDS": "600",
        **{f"HOMEPOT_FLEET__{name.upper()}": value for name, value in fleet.items()},
    }


def _leads_uplink(samples: dict[str, float]) -> bool:
    return samples.get(f'homepot_singleton_leader{{task="{UPLINK_LEADERSHIP}"}}') == 1


async def _send_all(
    device_id: str, api_key: str, ports: list[int], pause: asyncio.Event | None = None
) -> int:
    """Publish BATCHES telemetry batches, starting on ``ports[0]``; a batch whose PUBACK did
    not come is sent again on the next node. Returns the batches acknowledged."""
    batches = [_batch(samples=SAMPLES) for _ in range(BATCHES)]
    sent = attempt = 0
    while sent < BATCHES:
        port = ports[attempt % len(ports)]
        attempt += 1
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            async with DeviceMqttLink(HOST, port, device_id, api_key) as link:
                while sent < BATCHES:
                    await link.publish_telemetry(batches[sent])
                    sent += 1
                    if pause is not None and sent == BATCHES // 3:
                        await pause.wait()
                    await asyncio.sleep(0.02)
        if attempt > 20:
            pytest.fail(f"{device_id} found no broker node to send to")
        await asyncio.sleep(0.2)
    return sent


async def test_nats_cluster_node_killed_during_ingest_loses_no_acknowledged_message(
    backend: str, settings: Settings, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("two server processes share PostgreSQL; SQLite is served by one process")
    engine = create_engine(settings.database_url)
    factory = create_session_factory(engine)
    stand_in = SimpleNamespace(state=SimpleNamespace(session_factory=factory))
    nodes = NatsCluster.NODES
    servers = [
        AppServer(
            _env(
                settings,
                nats_cluster.url(node),
                mqtt_protocol="3.1.1",
                mqtt_shared_subscription="false",
            ),
            tmp_path,
        )
        for node in range(2)
    ]
    try:
        devices = [await _device_with_key(stand_in) for _ in range(nodes * 2)]  # type: ignore[arg-type]
        for server in servers:
            server.start()
        await asyncio.gather(*(server.wait_until_up() for server in servers))

        async def reader() -> int | None:
            leading = [i for i, s in enumerate(servers) if _leads_uplink(await s.metrics())]
            return leading[0] if len(leading) == 1 else None

        async def one_reader() -> bool:
            # Not `reader` itself: the first server's index, 0, is falsy.
            return await reader() is not None

        await _eventually(one_reader, within=20)
        reading = await reader()
        assert reading is not None
        standby = 1 - reading

        async def stored() -> int:
            async with factory() as session:
                statement = select(func.count()).select_from(DeviceMetrics)
                ids = [device_id for device_id, _ in devices]
                return int(
                    await session.scalar(statement.where(DeviceMetrics.device_id.in_(ids))) or 0
                )

        # Every node has devices; the one the reading server uses is killed a third of the way.
        pause = asyncio.Event()
        ports = nats_cluster.mqtt_ports
        senders = [
            asyncio.create_task(
                _send_all(
                    device_id,
                    key,
                    [ports[(number + step) % nodes] for step in range(nodes)],
                    pause,
                )
            )
            for number, (device_id, key) in enumerate(devices)
        ]

        async def some_stored() -> bool:
            return await stored() > 0

        await _eventually(some_stored, within=30)
        nats_cluster.kill(reading)  # the reading server's node (servers[i] uses node i)
        pause.set()
        acknowledged = await asyncio.gather(*senders)
        assert acknowledged == [BATCHES] * len(devices)

        async def standby_reads() -> bool:
            return _leads_uplink(await servers[standby].metrics())

        # A liveness bound, not a speed: generous, for a loaded 2-core machine.
        await _eventually(standby_reads, within=90)
        total = len(devices) * BATCHES * SAMPLES

        async def all_stored() -> bool:
            return await stored() >= total

        await _eventually(all_stored, within=60)
        await asyncio.sleep(1)
        assert await stored() == total
    finally:
        stop_all(servers)
        await engine.dispose()


async def test_two_processes_share_the_uplink_through_mosquitto_with_mqtt_3_1_1(
    backend: str, settings: Settings, open_broker: Broker, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("two server processes share PostgreSQL; SQLite is served by one process")
    engine = create_engine(settings.database_url)
    factory = create_session_factory(engine)
    stand_in = SimpleNamespace(state=SimpleNamespace(session_factory=factory))
    servers = [
        AppServer(_env(settings, open_broker.url, mqtt_protocol="3.1.1"), tmp_path)
        for _ in range(2)
    ]
    try:
        devices = [await _device_with_key(stand_in) for _ in range(4)]  # type: ignore[arg-type]
        for server in servers:
            server.start()
        await asyncio.gather(*(server.wait_until_up() for server in servers))
        await asyncio.gather(
            *(_send_all(device_id, key, [open_broker.port]) for device_id, key in devices)
        )
        total = len(devices) * BATCHES * SAMPLES

        async def all_stored() -> bool:
            async with factory() as session:
                statement = select(func.count()).select_from(DeviceMetrics)
                ids = [device_id for device_id, _ in devices]
                count = await session.scalar(statement.where(DeviceMetrics.device_id.in_(ids)))
            return int(count or 0) >= total

        await _eventually(all_stored, within=30)
        # Both processes took their share (Mosquitto's shared subscription, round robin).
        received = [
            (await server.metrics()).get("homepot_mqtt_uplink_received_total", 0)
            for server in servers
        ]
        assert all(count > 0 for count in received), received
        assert sum(received) == len(devices) * BATCHES
    finally:
        stop_all(servers)
        await engine.dispose()
