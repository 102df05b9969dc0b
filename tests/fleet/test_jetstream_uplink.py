"""The uplink read through NATS JetStream (``fleet.uplink`` "jetstream"): two server processes
on one PostgreSQL share one durable consumer on a three-node NATS cluster.

Devices publish over MQTT (3.1.1, QoS 1) to every node; NATS stores each message in its
``$MQTT_msgs`` stream before the PUBACK, and the servers fetch from it. Each process takes a
share, together they store everything, nothing is delivered twice; and killing the node
that leads the stream during ingest loses no message a device got a PUBACK for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiomqtt
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select

from homepot.agent.mqtt import DeviceMqttLink
from homepot.analytics.models import DeviceMetrics
from homepot.config import FleetSettings, Settings
from homepot.db import create_engine, create_session_factory
from homepot.fleet.jetstream import MQTT_STREAM, topic_of
from homepot.main import create_app
from tests.conftest import TEST_SECRET
from tests.faults.servers import AppServer, stop_all
from tests.fleet.brokers import HOST, NatsCluster, nats_cluster
from tests.fleet.tcp_proxy import TcpProxy
from tests.fleet.test_broker_cluster import BATCHES, SAMPLES, _send_all
from tests.fleet.test_mqtt import _batch, _device_with_key, _eventually
from tests.fleet.test_mqtt_faults import proxied
from tests.helpers import flush

__all__ = ["nats_cluster", "proxied"]  # fixtures

pytestmark = pytest.mark.servers

CONSUMER = "homepot-uplink"


def _env(settings: Settings, mqtt_url: str, nats_urls: list[str]) -> dict[str, str]:
    return {
        "HOMEPOT_DATABASE_URL": settings.database_url,
        "HOMEPOT_AUTH__SECRET_KEY": TEST_SECRET,
        # Job pushes stay on MQTT (3.1.1 on NATS); the uplink comes from JetStream.
        "HOMEPOT_FLEET__MQTT_URL": mqtt_url,
        "HOMEPOT_FLEET__MQTT_PROTOCOL": "3.1.1",
        "HOMEPOT_FLEET__UPLINK": "jetstream",
        "HOMEPOT_FLEET__NATS_URLS": ",".join(nats_urls),
        "HOMEPOT_FLEET__JETSTREAM_CONSUMER": CONSUMER,
        # A message whose reader (or its node) died comes back to another within 2 s.
        "HOMEPOT_FLEET__JETSTREAM_ACK_WAIT_SECONDS": "2",
    }


@contextlib.asynccontextmanager
async def _nats(cluster: NatsCluster) -> AsyncIterator[Any]:
    """The test's own NATS connection, to every node."""
    import nats

    client = await nats.connect(
        servers=[cluster.nats_url(node) for node in range(cluster.NODES)],
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
    )
    try:
        yield client
    finally:
        await client.close()


async def _stream_led_by_one_of(nc: Any, nodes: set[int]) -> int:
    """The node leading ``$MQTT_msgs``; while it is not one of ``nodes``, the leader is asked
    to step down (a new one is elected among the others)."""
    js = nc.jetstream()

    async def leader() -> str | None:
        # The node's name, not its number: _eventually wants a truthy answer, and 0 is not.
        with contextlib.suppress(Exception):
            cluster = (await js.stream_info(MQTT_STREAM)).cluster
            if cluster is not None and cluster.leader:
                return str(cluster.leader)
        return None

    for _ in range(10):
        current = int((await _eventually(leader, within=15)).removeprefix("node"))
        if current in nodes:
            return current

        async def moved(previous: str = f"node{current}") -> bool:
            return await leader() not in (None, previous)

        with contextlib.suppress(Exception):
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{MQTT_STREAM}", b"", timeout=5)
        await _eventually(moved, within=15)
    pytest.fail(f"{MQTT_STREAM} stayed led by a node outside {sorted(nodes)}")


async def _mqtt_ready(cluster: NatsCluster) -> None:
    """Wait until every node takes MQTT connections (JetStream's meta leader is elected);
    the first one also makes NATS create its MQTT streams."""
    for port in cluster.mqtt_ports:

        async def connects(port: int = port) -> bool:
            with contextlib.suppress(aiomqtt.MqttError):
                async with aiomqtt.Client(
                    HOST, port, protocol=aiomqtt.ProtocolVersion.V311, timeout=2
                ):
                    return True
            return False

        await _eventually(connects, within=25)


async def _readers_bound(servers: list[AppServer]) -> None:
    async def bound() -> bool:
        samples = [await server.metrics() for server in servers]
        return all(s.get("homepot_jetstream_connected") == 1 for s in samples)

    await _eventually(bound, within=20)


async def _uplink_counts(servers: list[AppServer], name: str) -> list[float]:
    return [
        (await server.metrics()).get(f"homepot_jetstream_uplink_{name}_total", 0)
        for server in servers
    ]


async def test_two_processes_share_the_jetstream_consumer(
    backend: str, settings: Settings, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("two server processes share PostgreSQL; SQLite is served by one process")
    engine = create_engine(settings.database_url)
    factory = create_session_factory(engine)
    stand_in = SimpleNamespace(state=SimpleNamespace(session_factory=factory))
    nodes = NatsCluster.NODES
    # Each process on a node of its own; the third node has devices only.
    servers = [
        AppServer(
            _env(settings, nats_cluster.url(node), [nats_cluster.nats_url(node)]),
            tmp_path,
        )
        for node in range(2)
    ]
    try:
        for server in servers:
            server.start()
        devices = [await _device_with_key(stand_in) for _ in range(nodes * 2)]  # type: ignore[arg-type]
        await asyncio.gather(
            _mqtt_ready(nats_cluster), *(server.wait_until_up() for server in servers)
        )
        await _readers_bound(servers)
        ports = nats_cluster.mqtt_ports
        acknowledged = await asyncio.gather(
            *(
                _send_all(device_id, key, [ports[number % nodes]])
                for number, (device_id, key) in enumerate(devices)
            )
        )
        assert acknowledged == [BATCHES] * len(devices)
        total = len(devices) * BATCHES * SAMPLES

        async def stored() -> int:
            async with factory() as session:
                statement = select(func.count()).select_from(DeviceMetrics)
                ids = [device_id for device_id, _ in devices]
                return int(
                    await session.scalar(statement.where(DeviceMetrics.device_id.in_(ids))) or 0
                )

        async def all_stored() -> bool:
            return await stored() >= total

        await _eventually(all_stored, within=20)
        messages = len(devices) * BATCHES

        async def all_acknowledged() -> bool:
            return sum(await _uplink_counts(servers, "acknowledged")) >= messages

        await _eventually(all_acknowledged, within=10)
        received = await _uplink_counts(servers, "received")
        # Each took a share; together every message, none twice.
        assert all(count > 0 for count in received), received
        assert sum(received) == messages
        assert sum(await _uplink_counts(servers, "redelivered")) == 0
        assert sum(await _uplink_counts(servers, "acknowledged")) == messages
        assert await stored() == total
        async with _nats(nats_cluster) as nc:
            consumer = await nc.jetstream().consumer_info(MQTT_STREAM, CONSUMER)
        assert consumer.num_ack_pending == 0
        assert consumer.num_pending == 0
    finally:
        stop_all(servers)
        await engine.dispose()


async def test_stream_leader_killed_during_ingest_loses_no_acknowledged_message(
    backend: str, settings: Settings, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("two server processes share PostgreSQL; SQLite is served by one process")
    engine = create_engine(settings.database_url)
    factory = create_session_factory(engine)
    stand_in = SimpleNamespace(state=SimpleNamespace(session_factory=factory))
    nodes = NatsCluster.NODES
    # Each process reads through one node only (it learns the others from the cluster when
    # it connects); the third node has devices only.
    servers = [
        AppServer(
            _env(settings, nats_cluster.url(node), [nats_cluster.nats_url(node)]),
            tmp_path,
        )
        for node in range(2)
    ]
    try:
        for server in servers:
            server.start()
        devices = [await _device_with_key(stand_in) for _ in range(nodes * 2)]  # type: ignore[arg-type]
        await asyncio.gather(
            _mqtt_ready(nats_cluster), *(server.wait_until_up() for server in servers)
        )
        # The node to kill leads the stream (every store goes through it) and serves a reader.
        async with _nats(nats_cluster) as nc:
            leader = await _stream_led_by_one_of(nc, {0, 1})
        await _readers_bound(servers)

        async def stored() -> int:
            async with factory() as session:
                statement = select(func.count()).select_from(DeviceMetrics)
                ids = [device_id for device_id, _ in devices]
                return int(
                    await session.scalar(statement.where(DeviceMetrics.device_id.in_(ids))) or 0
                )

        # Devices on every node; each sends again, on the next node, what got no PUBACK.
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

        await _eventually(some_stored, within=20)
        nats_cluster.kill(leader)
        pause.set()
        acknowledged = await asyncio.gather(*senders)
        assert acknowledged == [BATCHES] * len(devices)
        total = len(devices) * BATCHES * SAMPLES

        async def all_stored() -> bool:
            return await stored() >= total

        await _eventually(all_stored, within=30)
        # Every acknowledged sample is stored, once (no more rows arrive late).
        async with _nats(nats_cluster) as nc:
            js = nc.jetstream()

            async def consumer_drained() -> bool:
                with contextlib.suppress(Exception):
                    info = await js.consumer_info(MQTT_STREAM, CONSUMER)
                    return bool(info.num_ack_pending == 0 and info.num_pending == 0)
                return False

            await _eventually(consumer_drained, within=15)
        assert await stored() == total
        # Both processes survived the node and kept reading.
        assert all(
            server.process is not None and server.process.poll() is None for server in servers
        )
    finally:
        stop_all(servers)
        await engine.dispose()


async def test_a_reader_that_dies_holding_messages_leaves_them_to_the_other(
    backend: str, settings: Settings, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """One process freezes (SIGSTOP) while messages keep coming, so that what NATS hands it
    stays unacknowledged, and is then killed: the other process gets those messages after
    the ack wait, and every acknowledged sample is stored once."""
    if backend != "postgresql":
        pytest.skip("two server processes share PostgreSQL; SQLite is served by one process")
    engine = create_engine(settings.database_url)
    factory = create_session_factory(engine)
    stand_in = SimpleNamespace(state=SimpleNamespace(session_factory=factory))
    nodes = NatsCluster.NODES
    servers = [
        AppServer(
            _env(settings, nats_cluster.url(node), [nats_cluster.nats_url(node)]),
            tmp_path,
        )
        for node in range(2)
    ]
    try:
        for server in servers:
            server.start()
        devices = [await _device_with_key(stand_in) for _ in range(nodes * 2)]  # type: ignore[arg-type]
        await asyncio.gather(
            _mqtt_ready(nats_cluster), *(server.wait_until_up() for server in servers)
        )
        await _readers_bound(servers)
        ports = nats_cluster.mqtt_ports
        pause = asyncio.Event()
        senders = [
            asyncio.create_task(_send_all(device_id, key, [ports[number % nodes]], pause))
            for number, (device_id, key) in enumerate(devices)
        ]

        async def first_reads() -> bool:
            return (await _uplink_counts(servers[:1], "received"))[0] > 0

        await _eventually(first_reads, within=20)
        survivor = servers[1]
        doomed = servers[0].process
        assert doomed is not None
        doomed.send_signal(signal.SIGSTOP)
        pause.set()
        acknowledged = await asyncio.gather(*senders)
        assert acknowledged == [BATCHES] * len(devices)
        doomed.kill()
        doomed.wait(timeout=10)
        total = len(devices) * BATCHES * SAMPLES

        async def stored() -> int:
            async with factory() as session:
                statement = select(func.count()).select_from(DeviceMetrics)
                ids = [device_id for device_id, _ in devices]
                return int(
                    await session.scalar(statement.where(DeviceMetrics.device_id.in_(ids))) or 0
                )

        async def all_stored() -> bool:
            return await stored() >= total

        await _eventually(all_stored, within=20)
        async with _nats(nats_cluster) as nc:
            js = nc.jetstream()

            async def consumer_drained() -> bool:
                info = await js.consumer_info(MQTT_STREAM, CONSUMER)
                return bool(info.num_ack_pending == 0 and info.num_pending == 0)

            await _eventually(consumer_drained, within=15)
        assert await stored() == total
        assert (await survivor.metrics()).get("homepot_jetstream_connected") == 1
    finally:
        stop_all(servers)
        await engine.dispose()


async def test_a_database_outage_leaves_the_messages_unacknowledged_in_the_stream(
    proxied: tuple[Settings, TcpProxy], nats_cluster: NatsCluster
) -> None:
    """While PostgreSQL is cut off nothing is acknowledged (there is no spool: the stream
    keeps the messages); once it is back, every message is stored, once."""
    settings, proxy = proxied
    fleet = settings.fleet.model_copy(
        update={
            "mqtt_url": nats_cluster.url(0),
            "mqtt_protocol": "3.1.1",
            "uplink": "jetstream",
            "nats_urls": [nats_cluster.nats_url(1)],
            "jetstream_consumer": CONSUMER,
            # Marked in progress every 2 s: a stall of up to 4 s (a loaded machine) is
            # no redelivery.
            "jetstream_ack_wait_seconds": 6,
        }
    )
    await _mqtt_ready(nats_cluster)
    application = create_app(settings.model_copy(update={"fleet": fleet}))
    async with LifespanManager(application):
        reader = application.state.jetstream_uplink
        devices = [await _device_with_key(application) for _ in range(3)]
        await _eventually(_is_set(reader.connected), within=20)
        expected = {device_id: 0 for device_id, _ in devices}

        async def send(batches: int) -> None:
            for number, (device_id, key) in enumerate(devices):
                port = nats_cluster.mqtt_ports[number % NatsCluster.NODES]
                async with DeviceMqttLink(HOST, port, device_id, key) as link:
                    for _ in range(batches):
                        await link.publish_telemetry(_batch(samples=5))
                        expected[device_id] += 5

        async def all_stored() -> bool:
            await flush(application)
            async with application.state.session_factory() as session:
                rows = await session.execute(
                    select(DeviceMetrics.device_id, func.count()).group_by(DeviceMetrics.device_id)
                )
                return {device_id: count for device_id, count in rows} == expected

        await send(2)
        await _eventually(all_stored, within=20)
        acknowledged = reader.stats["acknowledged"]

        proxy.cut_connections()
        await send(4)  # every PUBACK came: NATS has them

        async def all_held() -> bool:
            return bool(reader.snapshot()["held"] == 3 * 4)

        await _eventually(all_held, within=20)

        async def held_beyond_the_ack_wait() -> bool:
            # Marked in progress every 2 s: four rounds outlast the 6 s ack wait.
            return bool(reader.stats["kept_in_progress"] >= 3 * 4 * 4)

        await _eventually(held_beyond_the_ack_wait, within=40)
        async with _nats(nats_cluster) as nc:
            info = await nc.jetstream().consumer_info(MQTT_STREAM, CONSUMER)
        assert info.num_ack_pending == 3 * 4
        assert info.num_redelivered == 0
        assert reader.stats["acknowledged"] == acknowledged

        proxy.restore()
        await _eventually(all_stored, within=30)
        async with _nats(nats_cluster) as nc:
            js = nc.jetstream()

            async def consumer_drained() -> bool:
                info = await js.consumer_info(MQTT_STREAM, CONSUMER)
                return bool(info.num_ack_pending == 0 and info.num_pending == 0)

            await _eventually(consumer_drained, within=15)
        assert await all_stored()
        # Held in progress through the outage: no message went back to the stream meanwhile.
        assert reader.stats["redelivered"] == 0


def _is_set(event: asyncio.Event) -> Callable[[], Awaitable[bool]]:
    async def is_set() -> bool:
        return event.is_set()

    return is_set


def test_servers_without_jetstream_do_not_load_nats() -> None:
    """nats-py is imported only by servers whose uplink is JetStream."""
    program = (
        "import sys; from homepot.main import create_app; create_app(); "
        "print('nats' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.stdout.strip() == "False"


def test_the_jetstream_uplink_needs_nats_urls() -> None:
    with pytest.raises(ValueError, match="HOMEPOT_FLEET__NATS_URLS"):
        FleetSettings(uplink="jetstream")
    fleet = FleetSettings(uplink="jetstream", nats_urls="nats://a:4222, nats://b:4222")
    assert fleet.nats_urls == ["nats://a:4222", "nats://b:4222"]


def test_a_stored_mqtt_message_keeps_its_topic() -> None:
    assert topic_of("$MQTT.msgs.homepot.v1.devices.pos-1.jobs.ack") == (
        "homepot/v1/devices/pos-1/jobs/ack"
    )


def _uplink_with_fakes(ack_wait: int = 6) -> Any:
    from homepot.fleet.jetstream import JetStreamUplink

    fleet = FleetSettings(
        uplink="jetstream", nats_urls="nats://127.0.0.1:4222", jetstream_ack_wait_seconds=ack_wait
    )
    settings = Settings(fleet=fleet, secret_key=TEST_SECRET)
    app = SimpleNamespace(state=SimpleNamespace(settings=settings, session_factory=None))
    return JetStreamUplink(app)  # type: ignore[arg-type]


async def test_a_fetch_that_times_out_with_the_builtin_timeout_keeps_the_connection() -> None:
    """nats-py ends an empty fetch with its own TimeoutError, or on some paths (its answer
    late on a loaded machine) with the builtin one. Neither is an outage: the reader fetches
    again on the same connection. Before, the builtin one closed the client, and the held
    messages, no longer marked in progress, were given again after the ack wait (CI)."""
    import nats.errors

    uplink = _uplink_with_fakes()
    fetches = 0

    class Subscription:
        async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 (nats-py's)
            nonlocal fetches
            fetches += 1
            if fetches == 1:
                raise TimeoutError
            if fetches == 2:
                raise nats.errors.TimeoutError
            raise nats.errors.ConnectionClosedError

    with pytest.raises(nats.errors.ConnectionClosedError):
        await uplink._fetch(Subscription())
    assert fetches == 3


async def test_a_held_message_is_marked_in_progress_within_half_the_ack_wait() -> None:
    """Fetched just after the keeper looked, a message is still marked before half the ack
    wait has passed (looked at every sixth of it), then every third of it."""
    from homepot.fleet.jetstream import Delivery
    from homepot.fleet.uplink_store import IncomingMessage

    uplink = _uplink_with_fakes(ack_wait=3)  # marks due every 1 s, looked at every 0.5 s
    loop = asyncio.get_running_loop()
    marks: list[float] = []

    class Message:
        async def in_progress(self) -> None:
            marks.append(loop.time())

    keeper = asyncio.create_task(uplink._keep_in_progress())
    try:
        await asyncio.sleep(0.05)  # just after the keeper's first look
        fetched = loop.time()
        uplink._held.add(Delivery(IncomingMessage("t", b"", qos=1), Message(), fetched))  # type: ignore[arg-type]
        await asyncio.sleep(3.2)
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
    assert marks, "never marked in progress"
    assert marks[0] - fetched <= 1.5 + 0.2
    assert all(later - earlier >= 0.9 for earlier, later in zip(marks, marks[1:], strict=False))
