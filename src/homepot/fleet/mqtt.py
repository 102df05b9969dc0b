"""The device protocol over MQTT, through the broker (Mosquitto; ``aiomqtt``, QoS 1).

Server side, :func:`run_push_channel` (a background service of the app) keeps one broker
connection that does two things:

- pushes jobs: ``app.state.push_channel`` is a :class:`MqttChannel` publishing each
  :class:`~homepot.protocol.messages.JobCommand`, signed with the device's secret, to
  ``topics.jobs(device_id)``;
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
subscription: each device message is handled by exactly one of them.

The device side of the same protocol is :class:`homepot.agent.mqtt.DeviceMqttLink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from fastapi import FastAPI
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ValidationError
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from homepot.analytics.models import DEVICE, Source
from homepot.analytics.recorder import Recorder
from homepot.config import Settings
from homepot.db import utcnow
from homepot.device.models import Device
from homepot.error_logger import record_error
from homepot.fleet import service as fleet_service
from homepot.fleet.broker_accounts import (
    DeviceAccountKeeper,
    password_file,
    sync_device_accounts,
)
from homepot.fleet.device_keys import DeviceKeyCache
from homepot.fleet.uplink_spool import SpooledMessage, UplinkSpool
from homepot.fleet.uplinks import Uplink, parse_uplink_topic
from homepot.job import executions
from homepot.kit.keycache import add_key_cache_invalidator
from homepot.kit.retry import BROKER_RECONNECT, Backoff
from homepot.protocol.channels import InProcessChannel, PushChannel
from homepot.protocol.messages import (
    DeviceErrorReport,
    JobCommand,
    TelemetryBatch,
    topics,
)
from homepot.protocol.mqtt import (
    QOS,
    BrokerAddress,
    SignedMessage,
    parse_broker_url,
    secret_from_key_hash,
    signature_matches,
    validation_summary,
)

logger = logging.getLogger(__name__)

# A push waits this long for the broker's PUBACK before the job is left for polling.
PUBLISH_TIMEOUT_SECONDS = 5.0
# Uplink messages are handled by this many workers (one on SQLite, which has one writer); one
# device's messages always go to the same worker, so they keep the order the device sent them.
BRIDGE_WORKERS = 8
# A worker stores the messages waiting in its queue together, in one transaction: up to this
# many, gathered for at most this long after the first one arrived.
BATCH_MAX_MESSAGES = 200
BATCH_WAIT_SECONDS = 0.05
# A transaction takes messages up to this many analytics rows (a telemetry sample is a row),
# so that a batch of large telemetry messages does not hold the event loop for seconds.
BATCH_MAX_ROWS = 2_000
# Before storing, the bridge waits for the analytics queue to be at most half full, at most
# this long; then it goes on, and samples the full queue refuses are spooled (not dropped).
RECORDER_WAIT_SECONDS = 30.0
# When neither the database nor the spool takes a batch, it is tried again after this long
# (doubling up to the reconnect maximum), unacknowledged: the broker keeps everything behind it.
SETTLE_RETRY = Backoff(initial=0.5, maximum=30.0)
# How often the spool is tried while the database stays unavailable, and how long a probe
# of the database may take before it counts as unavailable.
SPOOL_REPLAY_INTERVAL_SECONDS = 2.0
DATABASE_PROBE_SECONDS = 5.0
# On shutdown, messages already received get this long to be stored (the broker redelivers
# whatever is left unacknowledged).
DRAIN_SECONDS = 5.0
# Start-up waits at most this long for the first connection attempt.
STARTUP_WAIT_SECONDS = 3.0


class PushUnavailableError(RuntimeError):
    """The push transport cannot deliver now; the device will collect the job by polling."""


SecretLookup = Callable[[str], Awaitable[bytes | None]]


class MqttChannel:
    """Pushes job commands to devices through the broker (QoS 1), each signed with its
    device's secret, so that the device can tell them from a forgery."""

    def __init__(self, client: aiomqtt.Client, secret_for: SecretLookup) -> None:
        self._client = client
        self._secret_for = secret_for

    async def push(self, device_id: str, command: JobCommand) -> None:
        secret = await self._secret_for(device_id)
        if secret is None:
            raise PushUnavailableError(
                f"{device_id} has no API key, so job execution {command.execution_id} cannot"
                " be signed for it; the device will collect it by polling once registered"
            )
        topic = topics.jobs(device_id)
        try:
            await self._client.publish(
                topic,
                SignedMessage.of(secret, topic, command).model_dump_json(),
                qos=QOS,
                timeout=PUBLISH_TIMEOUT_SECONDS,
            )
        except aiomqtt.MqttError as exc:
            raise PushUnavailableError(
                f"could not publish job execution {command.execution_id} to {device_id} "
                f"over MQTT ({exc}); the device will collect it by polling"
            ) from exc


class UnavailableChannel:
    """Stands in for the MQTT channel while the broker is unreachable: every push raises."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def push(self, device_id: str, command: JobCommand) -> None:
        raise PushUnavailableError(
            f"job execution {command.execution_id} for {device_id} was not pushed: "
            f"{self.reason}; the device will collect it by polling"
        )


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


@dataclass(frozen=True)
class _Incoming:
    """A device message as it came: from the broker (``mid`` and the connection it came on,
    to acknowledge it) or from the spool."""

    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 0
    # The connection it arrived on; -1: not from the broker (the spool, a test).
    generation: int = -1
    # Its signature was checked when it arrived (while the database was down).
    verified: bool = False

    @classmethod
    def of(cls, message: aiomqtt.Message, generation: int = -1) -> _Incoming:
        payload = message.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = b""
        return cls(message.topic.value, bytes(payload), message.mid, message.qos, generation)


class _MessageFailed(Exception):
    """A message's handler failed unexpectedly; the transaction it shared is lost."""

    def __init__(self, item: _Received) -> None:
        super().__init__(f"could not store a {item.uplink.kind} message from {item.device_id}")
        self.item = item


class _DatabaseUnavailable(Exception):
    """The database does not answer: these messages are not stored (spool them)."""

    def __init__(self, unsettled: list[_Incoming]) -> None:
        super().__init__(f"the database is unavailable; {len(unsettled)} messages not stored")
        self.unsettled = unsettled


class _NotDurable(Exception):
    """Neither the database nor the spool took a batch: it stays unacknowledged."""


@dataclass
class _Received:
    """A well-formed device message on its way into the database."""

    incoming: _Incoming
    device_id: str
    uplink: Uplink
    signed: SignedMessage
    payload: BaseModel
    rows: int  # what it adds to the analytics queue: a telemetry batch's samples, else 1
    # The recorder already holds its rows: after a rollback only the transaction's part is
    # done again (a telemetry batch's last_seen_at), so no row is queued twice.
    recorded: bool = False
    # Nothing is left to do: stored and committed, or dropped and logged.
    settled: bool = False
    # Known once its key is checked: a simulated terminal's errors are simulated too.
    source: Source = DEVICE

    @property
    def topic(self) -> str:
        return self.incoming.topic


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
        self.client_id = server_client_id(self._settings, address.password)
        self._session_factory: async_sessionmaker[AsyncSession] = app.state.session_factory
        workers = 1 if self._settings.is_sqlite else BRIDGE_WORKERS
        # Unbounded queues, bounded by the broker: it never has more than the Receive Maximum
        # we announce (fleet.mqtt_max_unacknowledged) unacknowledged with us.
        self._queues: list[asyncio.Queue[_Incoming]] = [asyncio.Queue() for _ in range(workers)]
        self.keys = DeviceKeyCache()
        self.spool = UplinkSpool(self._settings.analytics.spool_dir / "mqtt" / self.client_id)
        self._spool_wake = asyncio.Event()
        self._accounts = password_file(self._settings.fleet)
        # Which connection is current: acknowledgements are for that connection's messages.
        self._generation = 0
        self._client_now: aiomqtt.Client | None = None
        # Set once the first connection attempt has finished, whatever its outcome.
        self.first_attempt_done = asyncio.Event()
        self.connected = asyncio.Event()
        self.stats = {
            "received": 0,
            "acknowledged": 0,
            "spooled": 0,
            "replayed": 0,
            "spool_failures": 0,
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

    def _client(self) -> aiomqtt.Client:
        fleet = self._settings.fleet
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.ReceiveMaximum = fleet.mqtt_max_unacknowledged
        connect.SessionExpiryInterval = fleet.mqtt_session_expiry_seconds
        tls = None
        if self._address.tls:
            tls = ssl.create_default_context(
                cafile=str(fleet.mqtt_ca_file) if fleet.mqtt_ca_file else None
            )
        client = aiomqtt.Client(
            self._host,
            self._port,
            username=self._address.username,
            password=self._address.password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            # A persistent session: the broker keeps the subscriptions and every message not
            # yet acknowledged while the server is away (up to the session expiry).
            clean_start=False,
            properties=connect,
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

    async def run(self) -> None:
        """Connect, subscribe, read; on any broker failure, reconnect with backoff. Forever."""
        await self._prepare()
        workers = [asyncio.create_task(self._work(queue)) for queue in self._queues]
        workers.append(asyncio.create_task(self._replay_spool()))
        stop_keeping_accounts: Callable[[], None] | None = None
        if self._accounts is not None:
            # A device deleted or given a new key anywhere in this process loses or changes
            # its broker account.
            keeper = DeviceAccountKeeper(self._accounts, self._session_factory)
            stop_keeping_accounts = add_key_cache_invalidator(keeper.changed)
            workers.append(asyncio.create_task(keeper.run()))
        delays = BROKER_RECONNECT.delays()
        outage_logged = False
        try:
            while True:
                try:
                    async with self._client() as client:
                        self._generation += 1
                        self._client_now = client
                        await client.subscribe(
                            [(f"$share/{self._group}/{topic}", QOS) for topic in topics.UPLINK]
                        )
                        self._set_channel(MqttChannel(client, self.secret_for))
                        self.connected.set()
                        self.first_attempt_done.set()
                        logger.info("MQTT bridge connected to %s:%s", self._host, self._port)
                        delays = BROKER_RECONNECT.delays()
                        outage_logged = False
                        generation = self._generation
                        try:
                            async for message in client.messages:
                                self._enqueue(_Incoming.of(message, generation))
                        except asyncio.CancelledError:
                            # Shutting down: store what came and acknowledge it while still
                            # connected, so that the broker does not send it again.
                            self._set_channel(UnavailableChannel("the server is shutting down"))
                            await self._drain(workers)
                            raise
                except Exception as exc:  # the broker's failures, and anything unforeseen
                    self.connected.clear()
                    self._client_now = None
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

    def _enqueue(self, incoming: _Incoming) -> None:
        self.stats["received"] += 1
        # One device always maps to the same worker: its messages keep their order.
        key = incoming.topic.encode()
        parsed = parse_uplink_topic(incoming.topic)
        if parsed is not None:
            key = parsed[0].encode()
        self._queues[zlib.crc32(key) % len(self._queues)].put_nowait(incoming)

    async def _work(self, queue: asyncio.Queue[_Incoming]) -> None:
        while True:
            batch = await _next_batch(queue)
            try:
                await self._settle(batch)
            finally:
                for _ in batch:
                    queue.task_done()

    async def _settle(self, batch: list[_Incoming]) -> None:
        """Store or spool the batch, then acknowledge it. Until one of them takes it, the
        batch is retried unacknowledged (and the broker holds what comes behind it)."""
        delays = SETTLE_RETRY.delays()
        while True:
            try:
                await self._store_or_spool(batch)
                break
            except _NotDurable as exc:
                delay = next(delays)
                logger.error("%s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
        for incoming in batch:
            self._acknowledge(incoming)

    def _acknowledge(self, incoming: _Incoming) -> None:
        client = self._client_now
        if client is None or incoming.generation != self._generation or incoming.qos == 0:
            # Its connection is gone: the broker sends it again, and it is stored once more
            # (telemetry and job results are recognised; a heartbeat may count twice).
            return
        client._client.ack(incoming.mid, incoming.qos)
        self.stats["acknowledged"] += 1

    async def _store_or_spool(self, batch: list[_Incoming]) -> None:
        if self.spool.has_backlog():
            # Behind a backlog: join its end, so that each device's order is kept.
            await self._spool_batch(batch)
            return
        try:
            await self._store_incoming(batch)
        except _DatabaseUnavailable as outage:
            await self._spool_batch(outage.unsettled)

    async def _spool_batch(self, batch: list[_Incoming]) -> None:
        if not batch:
            return
        messages = [
            SpooledMessage(item.topic, item.payload, item.verified or self._checks_out(item))
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
            raise _NotDurable(
                f"neither the database nor the spool took {len(batch)} messages"
            ) from exc
        self.stats["spooled"] += len(batch)
        self._spool_wake.set()

    def _checks_out(self, item: _Incoming) -> bool:
        """The message's signature is its device's, by the cached key (no database)."""
        parsed = parse_uplink_topic(item.topic)
        if parsed is None:
            return False
        key_hash = self.keys.get(parsed[0])
        if key_hash is None:
            return False
        try:
            signed = SignedMessage.model_validate_json(item.payload)
        except ValidationError:
            return False
        return signature_matches(
            secret_from_key_hash(key_hash), item.topic, signed.body, signed.mac
        )

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

    async def _replay_backlog(self) -> None:
        while self.spool.has_backlog():
            oldest = await asyncio.to_thread(self.spool.oldest)
            if oldest is None:
                return
            path, messages = oldest
            batch = [_Incoming(m.topic, m.payload, verified=m.verified) for m in messages]
            try:
                await self._store_incoming(batch)
            except _DatabaseUnavailable as outage:
                if len(outage.unsettled) < len(batch):
                    # Keep only what is left, so that nothing stored is stored again.
                    await asyncio.to_thread(
                        self.spool.rewrite,
                        path,
                        [
                            SpooledMessage(item.topic, item.payload, item.verified)
                            for item in outage.unsettled
                        ],
                    )
                return
            await asyncio.to_thread(self.spool.done, path)
            self.stats["replayed"] += len(batch)
            logger.info("replayed %d spooled device messages from %s", len(batch), path.name)

    async def store(self, messages: Sequence[aiomqtt.Message]) -> None:
        """Authenticate device messages and store them, in order; every failure is logged,
        none raised, and a bad message never costs the others their place. (Without
        acknowledging them: :meth:`_settle` does, for the broker's messages.)"""
        batch = [_Incoming.of(message) for message in messages]
        try:
            await self._store_incoming(batch)
        except _DatabaseUnavailable as outage:
            await self._spool_batch(outage.unsettled)

    async def _store_incoming(self, batch: list[_Incoming]) -> None:
        """Store the batch in the database; raises _DatabaseUnavailable with what is not
        stored when the database stops answering. On return, every message is stored (its
        analytics rows written or spooled by the recorder) or dropped and logged."""
        received: list[_Received] = []
        for incoming in batch:
            item = self._parse(incoming)
            # Reading a large batch takes a while: let the recorder and the broker's socket in.
            await asyncio.sleep(0)
            if item is not None:
                received.append(item)
        shared: list[_Received] = []
        rows = 0
        most_rows = min(BATCH_MAX_ROWS, self._recorder_share())
        try:
            for item in received:
                if not item.uplink.shares_transaction:
                    await self._store_together(shared)
                    shared, rows = [], 0
                    await self._store_together([item])
                    continue
                if shared and rows + item.rows > most_rows:
                    await self._store_together(shared)
                    shared, rows = [], 0
                shared.append(item)
                rows += item.rows
            await self._store_together(shared)
            # The analytics rows must be safe before the broker hears they are.
            await self._recorder.flush()
        except _DatabaseUnavailable:
            raise _DatabaseUnavailable(
                [item.incoming for item in received if not item.settled]
            ) from None
        except Exception as exc:
            # The recorder could neither write nor spool: keep the batch (spooled by caller).
            raise _DatabaseUnavailable([item.incoming for item in received]) from exc

    async def _recorder_room(self, rows: int) -> None:
        """Wait until the analytics queue can take ``rows`` more without nearing its bound.

        Over HTTP a full queue answers 503 and the device sends again; over MQTT the bridge
        waits instead (the broker keeps the messages meanwhile), at most RECORDER_WAIT_SECONDS.
        """
        recorder = self._recorder
        target = max(0, self._recorder_share() - rows)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECORDER_WAIT_SECONDS
        # The recorder signals nothing when its queue shrinks: poll it.
        while recorder.enabled and recorder.queued > target and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def _recorder_share(self) -> int:
        """The rows the bridge lets into the analytics queue at once: half its bound."""
        return max(1, self._recorder.settings.queue_max_events // 2)

    def _parse(self, incoming: _Incoming) -> _Received | None:
        topic = incoming.topic
        parsed = parse_uplink_topic(topic)
        if parsed is None:
            logger.warning("ignored an MQTT message on unexpected topic %s", topic)
            return None
        device_id, uplink = parsed
        try:
            signed = SignedMessage.model_validate_json(incoming.payload)
            payload = uplink.schema.model_validate_json(signed.body)
        except ValidationError as exc:
            problem = validation_summary(exc)
            self._log_dropped(
                device_id,
                topic,
                category="validation",
                error_code="MQTT_BAD_PAYLOAD",
                problem=f"the {uplink.kind} message is malformed: {problem}",
            )
            return None
        rows = len(payload.samples) if isinstance(payload, TelemetryBatch) else 1
        return _Received(incoming, device_id, uplink, signed, payload, rows)

    async def _store_together(self, items: list[_Received]) -> None:
        """Store ``items`` in one transaction. When one of them fails, the transaction is
        lost: that one is logged and the others are stored again in a new one. When the
        database itself does not answer, raises _DatabaseUnavailable."""
        if items:
            await self._recorder_room(sum(item.rows for item in items))
        while items := [item for item in items if not item.settled]:
            try:
                async with self._session_factory() as session:
                    devices = await _devices(session, {item.device_id for item in items})
                    for device in devices.values():
                        self.keys.remember(device.device_id, device.api_key_hash)
                    for item in items:
                        await self._apply(session, devices, item)
                    await session.commit()
            except _DatabaseUnavailable:
                raise
            except _MessageFailed as failed:
                if not await self._database_answers():
                    raise _DatabaseUnavailable([]) from failed
                failed.item.settled = True
                self._log_failure(failed.item, failed.__cause__)
                continue
            except Exception as exc:  # the batch as a whole: loading, or the commit
                if not await self._database_answers():
                    raise _DatabaseUnavailable([]) from exc
                if len(items) == 1:
                    items[0].settled = True
                    self._log_failure(items[0], exc)
                    return
                for item in items:  # one at a time, so that only the culprit is lost
                    await self._store_together([item])
                return
            for item in items:
                item.settled = True

    async def _database_answers(self) -> bool:
        """Whether a failure was the database's (outage: spool) or the message's (drop it)."""
        try:
            async with asyncio.timeout(DATABASE_PROBE_SECONDS), self._session_factory() as session:
                await session.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def _apply(
        self, session: AsyncSession, devices: dict[str, Device], item: _Received
    ) -> None:
        """One message, inside the batch's transaction. Raises _MessageFailed on anything
        unforeseen, which leaves the transaction unusable."""
        device = self._authenticate(devices.get(item.device_id), item)
        if isinstance(device, str):
            item.settled = True
            self._log_dropped(
                item.device_id,
                item.topic,
                category="external_service",
                error_code="MQTT_AUTH_REJECTED",
                problem=device,
            )
            return
        item.source = device.source
        if item.recorded:
            # Stored again after a rollback: its samples are queued already.
            device.last_seen_at = utcnow()
            return
        try:
            await item.uplink.handle(session, self._recorder, self._settings, device, item.payload)
        except (executions.ExecutionNotFound, executions.ExecutionNotDispatched) as exc:
            # Refused as the HTTP call would be (an unknown execution, one awaiting a retry).
            item.settled = True
            self._log_dropped(
                item.device_id,
                item.topic,
                category="validation",
                error_code="MQTT_MESSAGE_REJECTED",
                problem=f"the {item.uplink.kind} message was refused: {exc}",
                source=item.source,
            )
        except (fleet_service.TelemetryNotQueued, fleet_service.ErrorReportNotQueued) as exc:
            # The analytics queue is full even after waiting: the message is not lost, it is
            # spooled and stored when the queue has room again.
            raise _DatabaseUnavailable([]) from exc
        except Exception as exc:
            raise _MessageFailed(item) from exc
        else:
            if isinstance(item.payload, TelemetryBatch):
                item.recorded = True
            elif isinstance(item.payload, DeviceErrorReport):
                item.settled = True  # the recorder has it; the transaction holds nothing of it

    @staticmethod
    def _authenticate(device: Device | None, item: _Received) -> Device | str:
        """The topic's device when the message is signed with its key; otherwise why the
        message is refused."""
        if device is None:
            return f"no device {item.device_id} is registered"
        if not item.incoming.verified:
            if device.api_key_hash is None:
                return f"{item.device_id} has no key (revoked); register it again"
            secret = secret_from_key_hash(device.api_key_hash)
            if not signature_matches(secret, item.topic, item.signed.body, item.signed.mac):
                return (
                    f"the signature is not made with {item.device_id}'s current key"
                    " (a forged message, or an old key: rotated or revoked)"
                )
        claimed = getattr(item.payload, "device_id", None)
        if claimed is not None and claimed != item.device_id:
            return f"the payload names {claimed}, but the message came from {item.device_id}"
        return device

    def _log_failure(self, item: _Received, exc: BaseException | None) -> None:
        category = "database" if isinstance(exc, SQLAlchemyError) else "external_service"
        record_error(
            category=category,
            severity="error",
            error_code="MQTT_HANDLER_FAILED",
            error_message=(
                f"could not store a {item.uplink.kind} message from {item.device_id}: {exc}"
            ),
            exception=exc if isinstance(exc, Exception) else None,
            device_id=item.device_id,
            context={"topic": item.topic},
            recorder=self._recorder,
            source=item.source,
        )
        logger.error(
            "MQTT bridge failed on a %s message from %s",
            item.uplink.kind,
            item.device_id,
            exc_info=exc,
        )

    def _log_dropped(
        self,
        device_id: str,
        topic: str,
        *,
        category: str,
        error_code: str,
        problem: str,
        source: Source = DEVICE,
    ) -> None:
        message = f"dropped an MQTT message on {topic}: {problem}"
        logger.warning("%s", message)
        record_error(
            category=category,
            severity="warning",
            error_code=error_code,
            error_message=message,
            device_id=device_id,
            context={"topic": topic},
            recorder=self._recorder,
            source=source,
        )


async def _next_batch(queue: asyncio.Queue[_Incoming]) -> list[_Incoming]:
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


async def _devices(session: AsyncSession, device_ids: set[str]) -> dict[str, Device]:
    found = await session.scalars(select(Device).where(Device.device_id.in_(device_ids)))
    return {device.device_id: device for device in found}


@contextlib.asynccontextmanager
async def run_push_channel(app: FastAPI) -> AsyncIterator[None]:
    """Background service: ``app.state.push_channel`` and, with a broker, the uplink bridge.

    Without ``fleet.mqtt_url`` the channel is in-process (the embedded demo). With one, start-up
    waits for the first connection attempt only (at most ``STARTUP_WAIT_SECONDS``): a server
    whose broker is down still starts, pushes raise :class:`PushUnavailableError`, and the
    bridge keeps reconnecting.
    """
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
