"""The device protocol over MQTT, through the broker (Mosquitto; ``aiomqtt``, QoS 1).

Server side, :func:`run_push_channel` (a background service of the app) keeps one broker
connection that does two things:

- pushes jobs: ``app.state.push_channel`` is a :class:`MqttChannel` publishing each
  :class:`~homepot.protocol.messages.JobCommand`, signed with the device's secret, to
  ``topics.jobs(device_id)`` (the channels are in :mod:`homepot.fleet.push`);
- bridges the uplink: every device message (telemetry, heartbeat, job ack, job result,
  error report) is authenticated and handed to the same transport-independent services the
  HTTP endpoints call. Messages are stored in batches (:class:`UplinkBridge`): one query loads
  a batch's devices, one transaction stores its telemetry, heartbeats and error reports.

Nothing is acknowledged before it is safe. The bridge acknowledges a message to the broker
(PUBACK, paho's manual acknowledgement) only once it is committed to the database, its
analytics rows written or spooled by the recorder, or once it is written to the bridge's own
spool (:mod:`homepot.fleet.uplink_spool`) with fsync. It holds at most
``fleet.mqtt_max_unacknowledged`` messages (the MQTT 5 Receive Maximum it announces); beyond
that the broker holds them, in the server's persistent session (``clean_start`` false, a
session expiry), which also keeps them while the server restarts or after it was killed.

While the database is unavailable, messages are checked against the cached device keys
(:mod:`homepot.fleet.device_keys`) and spooled as received; the spool is replayed in order
when the database answers again, and a message that could not be checked is checked then.

The broker is not trusted: devices sign every message with their secret (see
:mod:`homepot.protocol.mqtt`), and a message is dropped (and logged in ``error_logs``) unless
the signature is that of the device named by its topic. A bad message never stops the bridge.
When the broker goes away the bridge reconnects with backoff, and meanwhile
``app.state.push_channel`` raises :class:`PushUnavailableError`, so the orchestrator leaves
jobs for the device to poll.

Several server processes sharing one database share the uplink through an MQTT shared
subscription: each device message is handled by exactly one of them. Each process has a
client id of its own that a restarted process takes over (``-<slot>``, see
:meth:`homepot.kit.singleton.Leadership.slot`), so the session and the spool of a killed
worker are picked up by its successor. For brokers without shared subscriptions (NATS:
``fleet.mqtt_shared_subscription`` false, ``fleet.mqtt_protocol`` "3.1.1"), one process at a
time reads the uplink, under one persistent session (``-uplink``) that the next holder of the
uplink's lock takes over with whatever was not yet acknowledged; every process pushes jobs.
With ``fleet.uplink`` "jetstream" the bridge only pushes jobs, and the processes share the
uplink through a JetStream consumer on the NATS cluster instead (:mod:`homepot.fleet.jetstream`,
imported only then, with nats-py).

The device side of the same protocol is :class:`homepot.agent.mqtt.DeviceMqttLink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import os
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
from fastapi import FastAPI
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from homepot.analytics.recorder import Recorder
from homepot.config import Settings
from homepot.error_logger import record_error
from homepot.fleet.broker_accounts import (
    DeviceAccountKeeper,
    account_files,
    sync_device_accounts,
)
from homepot.fleet.device_keys import DeviceKeyCache
from homepot.fleet.mqtt_orphans import OrphanSessions, session_lock
from homepot.fleet.push import PUBLISH_TIMEOUT_SECONDS, MqttChannel, UnavailableChannel
from homepot.fleet.uplink_spool import SpooledMessage, UplinkSpool
from homepot.fleet.uplink_store import (
    DATABASE_PROBE_SECONDS,
    DatabaseUnavailable,
    IncomingMessage,
    NotDurable,
    UplinkStore,
)
from homepot.fleet.uplinks import parse_uplink_topic
from homepot.kit.keycache import add_committed_key_listener
from homepot.kit.retry import BROKER_RECONNECT, Backoff
from homepot.kit.singleton import Leadership
from homepot.protocol.channels import InProcessChannel, PushChannel
from homepot.protocol.messages import (
    topics,
)
from homepot.protocol.mqtt import (
    QOS,
    BrokerAddress,
    parse_broker_url,
    secret_from_key_hash,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Uplink messages are handled by this many workers (one on SQLite, which has one writer); one
# device's messages always go to the same worker, so they keep the order the device sent them.
BRIDGE_WORKERS = 8
# A worker stores the messages waiting in its queue together, in one transaction: up to this
# many, gathered for at most this long after the first one arrived.
BATCH_MAX_MESSAGES = 200
BATCH_WAIT_SECONDS = 0.05
# When neither the database nor the spool takes a batch, it is tried again after this long
# (doubling up to the reconnect maximum), unacknowledged: the broker keeps everything behind it.
SETTLE_RETRY = Backoff(initial=0.5, maximum=30.0)
# How often the spool is tried while the database stays unavailable.
SPOOL_REPLAY_INTERVAL_SECONDS = 2.0
# On shutdown, messages already received get this long to be stored (the broker redelivers
# whatever is left unacknowledged).
DRAIN_SECONDS = 5.0
# Start-up waits at most this long for the first connection attempt.
STARTUP_WAIT_SECONDS = 3.0
# Without shared subscriptions: the lock of the one process that reads the uplink, and how
# often the others check whether it is free (the holder's own check proves it still holds it).
UPLINK_LEADERSHIP = "homepot-mqtt-uplink"
UPLINK_LEADERSHIP_CHECK_SECONDS = 2.0
# While another process drains this process's session (its predecessor's), the bridge asks
# for the session's lock this often.
SESSION_LOCK_RETRY_SECONDS = 1.0


# -- the uplink bridge ---------------------------------------------------------------------


def share_group(database_url: str, server_password: str | None = None) -> str:
    """Servers sharing a database URL share the uplink: each device message is handled once.

    With a server account, the group's name is a secret derived from its password: Mosquitto's
    ACL refuses a device the messages of the group, not a place in it, and a member that may
    not read them still takes its turn, so a device that guessed the name would make the
    server miss a share of the messages.
    """
    if server_password:
        digest = hmac.new(server_password.encode(), database_url.encode(), hashlib.sha256)
        return "homepot-" + digest.hexdigest()[:24]
    return "homepot-" + hashlib.sha256(database_url.encode()).hexdigest()[:12]


def server_client_id(settings: Settings, server_password: str | None = None) -> str:
    """The server's MQTT client id, stable across restarts so the broker keeps its session.

    Derived from the server's password too when it has one: a client connecting with the
    same id would take the session over (and the messages waiting in it).
    """
    if settings.fleet.mqtt_client_id:
        return settings.fleet.mqtt_client_id
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())
    return f"{share_group(settings.database_url + '/' + host, server_password)}-{host}"[:128]


class UplinkBridge:
    """Reads device messages from the broker and stores them; keeps the push channel current.

    Messages are stored in batches: each worker takes what is waiting in its queue (up to
    ``BATCH_MAX_MESSAGES``, gathering for at most ``BATCH_WAIT_SECONDS``), loads the batch's
    devices with one query, checks every message's signature against its device's key, and
    stores telemetry, heartbeats and error reports in one transaction. Job acknowledgements
    and results take the job's row lock, so each has a transaction of their own, in arrival
    order. A batch is acknowledged to the broker once stored (or spooled).
    """

    def __init__(self, app: FastAPI, address: BrokerAddress) -> None:
        self._app = app
        self._address = address
        self._host = address.host
        self._port = address.port
        self._settings: Settings = app.state.settings
        self._group = share_group(self._settings.database_url, address.password)
        self._base_client_id = server_client_id(self._settings, address.password)
        self.client_id = self._base_client_id
        # Whether this process reads the uplink (always, with shared subscriptions; never when
        # the uplink is read through JetStream: then the bridge only pushes jobs).
        self._uplink_here = self._settings.fleet.uplink == "mqtt"
        self._shared = self._uplink_here and self._settings.fleet.mqtt_shared_subscription
        self.reads_uplink = self._shared
        self._switching_role = False
        # After a broker failure, a process without shared subscriptions connects as a mere
        # pusher first, and reads the uplink only when the lock is still free once connected
        # (a process connected to another broker node may have taken it meanwhile).
        self._last_attempt_failed = False
        self._session_factory: async_sessionmaker[AsyncSession] = app.state.session_factory
        workers = 1 if self._settings.is_sqlite else BRIDGE_WORKERS
        # Unbounded queues, bounded by the broker: it never has more than the Receive Maximum
        # we announce (fleet.mqtt_max_unacknowledged) unacknowledged with us.
        self._queues: list[asyncio.Queue[IncomingMessage]] = [
            asyncio.Queue() for _ in range(workers)
        ]
        self.keys = DeviceKeyCache()
        self._uplinks = UplinkStore(app, self.keys)
        self.spool = UplinkSpool(self.spool_directory(self.client_id))
        self._spool_wake = asyncio.Event()
        self._accounts = account_files(self._settings.fleet)
        # Which connection is current: acknowledgements are for that connection's messages.
        self._generation = 0
        self._client_now: aiomqtt.Client | None = None
        # Connections to sessions nobody else reads (homepot.fleet.mqtt_orphans), by the
        # generation their messages carry: negative, apart from this bridge's own.
        self._adopted: dict[int, _Adoption] = {}
        self._adoptions = itertools.count(-2, -1)
        # Set once the first connection attempt has finished, whatever its outcome.
        self.first_attempt_done = asyncio.Event()
        self.connected = asyncio.Event()
        self.stats = {
            "received": 0,
            "acknowledged": 0,
            "spooled": 0,
            "replayed": 0,
            "spool_failures": 0,
            "orphaned_sessions_ended": 0,
            "orphaned_messages": 0,
        }

    def snapshot(self) -> dict[str, Any]:
        """For /api/v1/health: the connection, the backlog and the spool."""
        return {
            "connected": self.connected.is_set(),
            "waiting": sum(queue.qsize() for queue in self._queues),
            **self.stats,
            "spool_backlog_files": self.spool.pending_files,
        }

    @property
    def _recorder(self) -> Recorder:
        recorder: Recorder = self._app.state.recorder
        return recorder

    def _set_channel(self, channel: PushChannel) -> None:
        self._app.state.push_channel = channel

    @property
    def group(self) -> str:
        return self._group

    @property
    def broker(self) -> str:
        """The broker as the server names it (its sessions live there)."""
        return f"{self._host}:{self._port}"

    @property
    def session_factory(self) -> async_sessionmaker[AsyncSession]:
        return self._session_factory

    @property
    def leadership(self) -> Leadership | None:
        return self._leadership()

    def spool_directory(self, client_id: str) -> Path:
        return self._settings.analytics.spool_dir / "mqtt" / client_id

    def session_client(self, client_id: str, *, ending: bool = False) -> aiomqtt.Client:
        """A connection to another session of the group, to drain it (or, ``ending``, a
        clean start with session expiry 0 that ends it)."""
        return self._client(client_id, ending=ending)

    def open_adoption(self, client: aiomqtt.Client) -> int:
        """Messages from ``client`` go through the bridge's workers, acknowledged on it."""
        generation = next(self._adoptions)
        self._adopted[generation] = _Adoption(client)
        return generation

    def receive_adopted(self, message: aiomqtt.Message, generation: int) -> None:
        self._adopted[generation].unsettled += 1
        self._enqueue(IncomingMessage.of(message, generation))

    def unsettled(self, generation: int) -> int:
        """How many of the adopted connection's messages are not yet stored (or spooled)."""
        return self._adopted[generation].unsettled

    def close_adoption(self, generation: int) -> None:
        self._adopted.pop(generation, None)

    async def replay_spool_of(self, client_id: str) -> bool:
        """Store what an adopted session's process spooled on this host and left; True once
        nothing of it is left (the database may not answer)."""
        spool = UplinkSpool(self.spool_directory(client_id))
        await self._replay_backlog(spool)
        return not spool.has_backlog()

    def _client(self, identifier: str | None = None, *, ending: bool = False) -> aiomqtt.Client:
        fleet = self._settings.fleet
        tls = None
        if self._address.tls:
            tls = ssl.create_default_context(
                cafile=str(fleet.mqtt_ca_file) if fleet.mqtt_ca_file else None
            )
        # A persistent session: the broker keeps the subscriptions and every message not yet
        # acknowledged while the server is away (up to the session expiry with MQTT 5).
        session: dict[str, Any]
        if fleet.mqtt_protocol == "5":
            connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            connect.ReceiveMaximum = fleet.mqtt_max_unacknowledged
            # Ending a session: a clean start, and no expiry (0) once this connection closes.
            if not ending:
                connect.SessionExpiryInterval = fleet.mqtt_session_expiry_seconds
            session = {
                "protocol": aiomqtt.ProtocolVersion.V5,
                "clean_start": ending,
                "properties": connect,
            }
        else:
            # 3.1.1 has no Receive Maximum: the broker's own in-flight limit bounds what it
            # sends unacknowledged (NATS: mqtt.max_ack_pending; Mosquitto: max_inflight).
            session = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": ending}
        if identifier is None:
            identifier = self.client_id
            if not self._shared and self.reads_uplink:
                identifier = f"{self._base_client_id[:120]}-uplink"
        client = aiomqtt.Client(
            self._host,
            self._port,
            username=self._address.username,
            password=self._address.password,
            identifier=identifier,
            **session,
            keepalive=30,
            timeout=PUBLISH_TIMEOUT_SECONDS,
            tls_context=tls,
        )
        # aiomqtt does not expose paho's manual acknowledgement; the paho client is its
        # documented engine. Acknowledged in _acknowledge, once a message is safe.
        client._client.manual_ack_set(True)
        return client

    async def secret_for(self, device_id: str) -> bytes | None:
        """The device's secret, to sign its jobs: from the cache, else the database."""
        if not self.keys.knows(device_id):
            async with self._session_factory() as session:
                await self.keys.load(session, {device_id})
        key_hash = self.keys.get(device_id)
        return secret_from_key_hash(key_hash) if key_hash is not None else None

    async def _take_slot(self) -> None:
        """On PostgreSQL without a configured client id: this process's own, ``-<slot>``;
        with shared subscriptions, then the lock of the session named after it."""
        leadership = self._leadership()
        if leadership is None or not leadership.distributed:
            return
        if not self._settings.fleet.mqtt_client_id:
            await self._take_numbered_client_id(leadership)
        if self._shared:
            await self._hold_session_lock(leadership)
            # Read now: a process that drained this session meanwhile replayed its spool.
            self.spool = UplinkSpool(self.spool_directory(self.client_id))

    async def _hold_session_lock(self, leadership: Leadership) -> None:
        """Hold the lock of this process's session for its life: no other process adopts it
        (homepot.fleet.mqtt_orphans). While another process drains it (this process's
        predecessor's session, found orphaned), wait: it ends the session, then lets go."""
        lock = session_lock(self.client_id)
        waiting_logged = False
        while not await leadership.holds(lock):
            if not waiting_logged:
                waiting_logged = True
                logger.warning(
                    "MQTT bridge: waiting for the lock of session %s (another process is"
                    " draining it, or uses the same client id, or the database does not"
                    " answer)",
                    self.client_id,
                )
            await asyncio.sleep(SESSION_LOCK_RETRY_SECONDS)

    async def _take_numbered_client_id(self, leadership: Leadership) -> None:
        delays = BROKER_RECONNECT.delays()
        while True:
            try:
                slot = await leadership.slot()
                break
            except Exception as exc:
                delay = next(delays)
                logger.warning(
                    "MQTT bridge: no process slot yet (%s); retrying in %.1f s", exc, delay
                )
                await asyncio.sleep(delay)
        self.client_id = f"{self._base_client_id[:120]}-{slot}"
        self.spool = UplinkSpool(self.spool_directory(self.client_id))

    def _leadership(self) -> Leadership | None:
        leadership: Leadership | None = getattr(self._app.state, "leadership", None)
        return leadership

    async def _leads_uplink(self) -> bool:
        if self._shared:
            return True
        leadership = self._leadership()
        return leadership is None or await leadership.holds(UPLINK_LEADERSHIP)

    async def _watch_uplink_role(self, client: aiomqtt.Client) -> None:
        """Without shared subscriptions: reconnect as soon as this process's role changes."""
        leadership = self._leadership()
        while (leads := await self._leads_uplink()) == self.reads_uplink:
            if leadership is not None:
                leadership.count(UPLINK_LEADERSHIP, ran=leads)
            await asyncio.sleep(UPLINK_LEADERSHIP_CHECK_SECONDS)
        logger.info(
            "MQTT bridge: this process %s the uplink",
            "now reads" if not self.reads_uplink else "no longer reads",
        )
        self._switching_role = True
        client._client.disconnect()

    async def run(self) -> None:
        """Connect, subscribe, read; on any broker failure, reconnect with backoff. Forever."""
        await self._take_slot()
        await self._prepare()
        workers = [asyncio.create_task(self._work(queue)) for queue in self._queues]
        workers.append(asyncio.create_task(self._replay_spool()))
        if self._shared:
            orphans = OrphanSessions(self)
            # Recorded before the broker ever holds it, so that it cannot be left unknown.
            await orphans.record_own_session()
            workers.append(asyncio.create_task(orphans.run()))
        stop_keeping_accounts: Callable[[], None] | None = None
        if self._accounts is not None:
            # A device deleted or given a new key anywhere in this process loses or changes
            # its broker account.
            keeper = DeviceAccountKeeper(self._accounts, self._session_factory)
            stop_keeping_accounts = add_committed_key_listener(keeper.changed)
            workers.append(asyncio.create_task(keeper.run()))
        delays = BROKER_RECONNECT.delays()
        outage_logged = False
        try:
            while True:
                watcher: asyncio.Task[None] | None = None
                self._switching_role = False
                try:
                    self.reads_uplink = self._shared or (
                        self._uplink_here
                        and not self._last_attempt_failed
                        and await self._leads_uplink()
                    )
                    async with self._client() as client:
                        self._generation += 1
                        self._client_now = client
                        if self._shared:
                            await client.subscribe(
                                [(f"$share/{self._group}/{topic}", QOS) for topic in topics.UPLINK]
                            )
                        elif self._uplink_here:
                            watcher = asyncio.create_task(self._watch_uplink_role(client))
                            if self.reads_uplink:
                                await client.subscribe([(topic, QOS) for topic in topics.UPLINK])
                        self._set_channel(MqttChannel(client, self.secret_for))
                        self.connected.set()
                        self.first_attempt_done.set()
                        logger.info("MQTT bridge connected to %s:%s", self._host, self._port)
                        self._last_attempt_failed = False
                        delays = BROKER_RECONNECT.delays()
                        outage_logged = False
                        generation = self._generation
                        try:
                            async for message in client.messages:
                                self._enqueue(IncomingMessage.of(message, generation))
                        except asyncio.CancelledError:
                            # Shutting down: store what came and acknowledge it while still
                            # connected, so that the broker does not send it again.
                            self._set_channel(UnavailableChannel("the server is shutting down"))
                            await self._drain(workers)
                            raise
                except Exception as exc:  # the broker's failures, and anything unforeseen
                    self.connected.clear()
                    self._client_now = None
                    if watcher is not None:
                        # Before anything else: left running through the resignation and the
                        # backoff below, it would take the uplink's lock straight back, and
                        # no other process would ever read the uplink.
                        watcher.cancel()
                        with contextlib.suppress(BaseException):
                            await watcher
                        watcher = None
                    if self._switching_role:
                        self._switching_role = False
                        continue
                    self._last_attempt_failed = True
                    leadership = self._leadership()
                    if not self._shared and self.reads_uplink and leadership is not None:
                        # Unreachable from here: let a process that reaches the broker read.
                        await leadership.resign(UPLINK_LEADERSHIP)
                        self.reads_uplink = False
                    reason = f"the MQTT broker at {self._host}:{self._port} is unreachable ({exc})"
                    self._set_channel(UnavailableChannel(reason))
                    if not outage_logged:
                        # Once per outage: a broker down for an hour is one row, not hundreds.
                        outage_logged = True
                        record_error(
                            category="external_service",
                            severity="error",
                            error_code="MQTT_DISCONNECTED",
                            error_message=(
                                f"{reason}; reconnecting with backoff, jobs fall back to polling"
                            ),
                            exception=None if isinstance(exc, aiomqtt.MqttError) else exc,
                            context={"host": self._host, "port": self._port},
                            recorder=self._recorder,
                        )
                    delay = next(delays)
                    logger.warning("%s; retrying in %.1f s", reason, delay)
                    self.first_attempt_done.set()
                    await asyncio.sleep(delay)
                finally:
                    if watcher is not None:
                        watcher.cancel()
                        with contextlib.suppress(BaseException):
                            await watcher
        finally:
            if stop_keeping_accounts is not None:
                stop_keeping_accounts()
            self.connected.clear()
            self._set_channel(UnavailableChannel("the server is shutting down"))
            await self._drain(workers)
            self._client_now = None
            with contextlib.suppress(OSError):  # a clean stop: no "unclean stop" at next start
                self._running_marker().unlink(missing_ok=True)

    def _running_marker(self) -> Path:
        return self.spool.directory / "running.pid"

    async def _prepare(self) -> None:
        """Note a previous process that died without draining; load the device keys and,
        when HOMEPOT manages the broker's accounts, bring them in step with the database."""
        marker = self._running_marker()
        try:
            previous = marker.read_text().strip() if marker.exists() else None
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(os.getpid()))
        except OSError as exc:
            previous = None
            logger.warning("cannot write the MQTT bridge's marker %s: %s", marker, exc)
        if previous is not None:
            record_error(
                category="external_service",
                severity="warning",
                error_code="MQTT_BRIDGE_UNCLEAN_STOP",
                error_message=(
                    f"the previous server process (pid {previous}) stopped without shutting"
                    " down (killed or crashed); the broker redelivers the device messages it"
                    f" had not acknowledged, and {self.spool.pending_files} spooled batches are"
                    " replayed"
                ),
                context={"client_id": self.client_id},
                recorder=self._recorder,
            )
        try:
            async with (
                asyncio.timeout(DATABASE_PROBE_SECONDS),
                self._session_factory() as session,
            ):
                await self.keys.load(session)
                if self._accounts is not None:
                    await sync_device_accounts(session, self._accounts)
        except Exception as exc:
            # The database may be down or slow at start-up: the bridge connects all the same,
            # and the cache fills as batches load their devices.
            logger.warning("MQTT bridge start-up could not load the device keys: %s", exc)

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        """Store what was already received (bounded), then stop the workers."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                for queue in self._queues:
                    await queue.join()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    def _enqueue(self, incoming: IncomingMessage) -> None:
        self.stats["received"] += 1
        # One device always maps to the same worker: its messages keep their order.
        key = incoming.topic.encode()
        parsed = parse_uplink_topic(incoming.topic)
        if parsed is not None:
            key = parsed[0].encode()
        self._queues[zlib.crc32(key) % len(self._queues)].put_nowait(incoming)

    async def _work(self, queue: asyncio.Queue[IncomingMessage]) -> None:
        while True:
            batch = await next_batch(queue)
            try:
                await self._settle(batch)
            finally:
                for _ in batch:
                    queue.task_done()

    async def _settle(self, batch: list[IncomingMessage]) -> None:
        """Store or spool the batch, then acknowledge it. Until one of them takes it, the
        batch is retried unacknowledged (and the broker holds what comes behind it)."""
        delays = SETTLE_RETRY.delays()
        while True:
            try:
                await self._store_or_spool(batch)
                break
            except NotDurable as exc:
                delay = next(delays)
                logger.error("%s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
        for incoming in batch:
            self._acknowledge(incoming)

    def _acknowledge(self, incoming: IncomingMessage) -> None:
        adoption = self._adopted.get(incoming.generation)
        if adoption is not None:
            adoption.unsettled -= 1
            if incoming.qos > 0 and adoption.client._client.is_connected():
                adoption.client._client.ack(incoming.mid, incoming.qos)
            return
        client = self._client_now
        if client is None or incoming.generation != self._generation or incoming.qos == 0:
            # Its connection is gone: the broker sends it again, and it is recognised then
            # (every kind of device message is stored once, see uplink_store).
            return
        client._client.ack(incoming.mid, incoming.qos)
        self.stats["acknowledged"] += 1

    async def _store_or_spool(self, batch: list[IncomingMessage]) -> None:
        if self.spool.has_backlog():
            # Behind a backlog: join its end, so that each device's order is kept.
            await self._spool_batch(batch)
            return
        try:
            await self._uplinks.store_incoming(batch)
        except DatabaseUnavailable as outage:
            await self._spool_batch(outage.unsettled)

    async def _spool_batch(self, batch: list[IncomingMessage]) -> None:
        if not batch:
            return
        messages = [
            SpooledMessage(
                item.topic, item.payload, item.verified or self._uplinks.checks_out(item)
            )
            for item in batch
        ]
        try:
            await asyncio.to_thread(self.spool.write, messages)
        except OSError as exc:
            self.stats["spool_failures"] += 1
            record_error(
                category="external_service",
                severity="critical",
                error_code="MQTT_SPOOL_FAILED",
                error_message=(
                    f"cannot spool {len(batch)} device messages while the database is"
                    f" unavailable ({exc}); they stay unacknowledged with the broker"
                ),
                context={"spool": str(self.spool.directory)},
                recorder=self._recorder,
            )
            raise NotDurable(
                f"neither the database nor the spool took {len(batch)} messages"
            ) from exc
        self.stats["spooled"] += len(batch)
        self._spool_wake.set()

    async def _replay_spool(self) -> None:
        """Store the spooled batches, oldest first, whenever the database answers."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._spool_wake.wait(), SPOOL_REPLAY_INTERVAL_SECONDS)
            self._spool_wake.clear()
            try:
                await self._replay_backlog()
            except Exception:  # the replayer must outlive any single failure
                logger.exception("MQTT spool replay failed unexpectedly")

    async def _replay_backlog(self, spool: UplinkSpool | None = None) -> None:
        spool = spool or self.spool
        while spool.has_backlog():
            oldest = await asyncio.to_thread(spool.oldest)
            if oldest is None:
                return
            path, messages = oldest
            batch = [IncomingMessage(m.topic, m.payload, verified=m.verified) for m in messages]
            try:
                await self._uplinks.store_incoming(batch)
            except DatabaseUnavailable as outage:
                if len(outage.unsettled) < len(batch):
                    # Keep only what is left, so that nothing stored is stored again.
                    await asyncio.to_thread(
                        spool.rewrite,
                        path,
                        [
                            SpooledMessage(item.topic, item.payload, item.verified)
                            for item in outage.unsettled
                        ],
                    )
                return
            await asyncio.to_thread(spool.done, path)
            self.stats["replayed"] += len(batch)
            logger.info("replayed %d spooled device messages from %s", len(batch), path.name)

    async def store(self, messages: Sequence[aiomqtt.Message]) -> None:
        """Authenticate device messages and store them, in order; every failure is logged,
        none raised, and a bad message never costs the others their place. (Without
        acknowledging them: :meth:`_settle` does, for the broker's messages.)"""
        batch = [IncomingMessage.of(message) for message in messages]
        try:
            await self._uplinks.store_incoming(batch)
        except DatabaseUnavailable as outage:
            await self._spool_batch(outage.unsettled)


class _Adoption:
    """A connection to an adopted session, and how many of its messages are not settled."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.unsettled = 0


async def next_batch(queue: asyncio.Queue[T]) -> list[T]:
    """The next message and those waiting behind it: up to BATCH_MAX_MESSAGES, gathered for
    at most BATCH_WAIT_SECONDS after the first (a quiet fleet waits no longer than that)."""
    batch = [await queue.get()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BATCH_WAIT_SECONDS
    while len(batch) < BATCH_MAX_MESSAGES:
        if not queue.empty():
            batch.append(queue.get_nowait())
            continue
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            async with asyncio.timeout(remaining):
                batch.append(await queue.get())
        except TimeoutError:
            break
    return batch


@contextlib.asynccontextmanager
async def run_push_channel(app: FastAPI) -> AsyncIterator[None]:
    """Background service: ``app.state.push_channel`` and, with a broker, the uplink bridge;
    with ``fleet.uplink`` "jetstream", the JetStream uplink reader besides.

    Without ``fleet.mqtt_url`` the channel is in-process (the embedded demo). With one, start-up
    waits for the first connection attempt only (at most ``STARTUP_WAIT_SECONDS``): a server
    whose broker is down still starts, pushes raise :class:`PushUnavailableError`, and the
    bridge keeps reconnecting.
    """
    async with contextlib.AsyncExitStack() as services:
        if app.state.settings.fleet.uplink == "jetstream":
            # Imported here: nats-py is loaded only by servers that read the uplink from NATS.
            from homepot.fleet.jetstream import run_jetstream_uplink

            await services.enter_async_context(run_jetstream_uplink(app))
        await services.enter_async_context(_run_mqtt(app))
        yield


@contextlib.asynccontextmanager
async def _run_mqtt(app: FastAPI) -> AsyncIterator[None]:
    url = app.state.settings.fleet.mqtt_url
    if not url:
        app.state.push_channel = InProcessChannel()
        yield
        return
    address = parse_broker_url(url)
    app.state.push_channel = UnavailableChannel(
        f"not connected to the MQTT broker {address.host}:{address.port}"
    )
    bridge = UplinkBridge(app, address)
    app.state.mqtt_bridge = bridge
    task = asyncio.create_task(bridge.run(), name="homepot-mqtt-bridge")
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STARTUP_WAIT_SECONDS):
                await bridge.first_attempt_done.wait()
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
