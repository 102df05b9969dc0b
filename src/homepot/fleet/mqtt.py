"""The device protocol over MQTT, through the broker (Mosquitto; ``aiomqtt``, QoS 1).

Server side, :func:`run_push_channel` (a background service of the app) keeps one broker
connection that does two things:

- pushes jobs: ``app.state.push_channel`` is a :class:`MqttChannel` publishing each
  :class:`~homepot.protocol.messages.JobCommand` to ``topics.jobs(device_id)``;
- bridges the uplink: every device message (telemetry, heartbeat, job ack, job result,
  error report) is authenticated and handed to the same transport-independent services the
  HTTP endpoints call. Messages are stored in batches (:class:`UplinkBridge`): one query loads
  a batch's devices, one transaction stores its telemetry, heartbeats and error reports.

The broker is not trusted: devices publish an :class:`~homepot.protocol.messages.Envelope`
carrying their API key, and a message is dropped (and logged in ``error_logs``) unless the key
belongs to the device named by its topic. A bad message never stops the bridge. When the broker
goes away the bridge reconnects with backoff, and meanwhile ``app.state.push_channel`` raises
:class:`PushUnavailableError`, so the orchestrator leaves jobs for the device to poll.

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
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import aiomqtt
from fastapi import FastAPI
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ValidationError, create_model
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from homepot.analytics.models import DEVICE, Source
from homepot.analytics.recorder import Recorder
from homepot.config import Settings
from homepot.db import utcnow
from homepot.device.models import Device
from homepot.error_logger import record_error
from homepot.fleet import service as fleet_service
from homepot.fleet.auth import device_for_key
from homepot.job import executions
from homepot.kit.keys import hash_key
from homepot.kit.retry import BROKER_RECONNECT
from homepot.protocol.channels import InProcessChannel, PushChannel
from homepot.protocol.messages import (
    DeviceErrorReport,
    Envelope,
    Heartbeat,
    JobAck,
    JobCommand,
    JobResult,
    TelemetryBatch,
    topics,
)
from homepot.protocol.mqtt import QOS, broker_address, validation_summary

logger = logging.getLogger(__name__)

# A push waits this long for the broker's PUBACK before the job is left for polling.
PUBLISH_TIMEOUT_SECONDS = 5.0
# Uplink messages are handled by this many workers (one on SQLite, which has one writer); one
# device's messages always go to the same worker, so they keep the order the device sent them.
BRIDGE_WORKERS = 8
# Messages waiting per worker; when full, reading from the broker pauses.
WORKER_QUEUE_SIZE = 1000
# A worker stores the messages waiting in its queue together, in one transaction: up to this
# many, gathered for at most this long after the first one arrived.
BATCH_MAX_MESSAGES = 200
BATCH_WAIT_SECONDS = 0.05
# A transaction takes messages up to this many analytics rows (a telemetry sample is a row),
# so that a batch of large telemetry messages does not hold the event loop for seconds.
BATCH_MAX_ROWS = 2_000
# Before storing, the bridge waits for the analytics queue to be at most half full, at most
# this long; then it goes on, and samples the full queue refuses are dropped and logged.
RECORDER_WAIT_SECONDS = 30.0
# The bridge speaks MQTT 5 and lets the broker send it this many messages ahead of its
# acknowledgements. Mosquitto keeps only max_queued_messages (1000 by default) waiting beyond
# a client's in-flight window and drops the rest, and the MQTT 3.1.1 window is 20 messages:
# a burst of device messages would be lost while the bridge is busy storing the last one.
RECEIVE_MAXIMUM = 20_000
# On shutdown, messages already received get this long to be stored.
DRAIN_SECONDS = 5.0
# Start-up waits at most this long for the first connection attempt.
STARTUP_WAIT_SECONDS = 3.0


class PushUnavailableError(RuntimeError):
    """The push transport cannot deliver now; the device will collect the job by polling."""


class MqttChannel:
    """Pushes job commands to devices through the broker (QoS 1)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client

    async def push(self, device_id: str, command: JobCommand) -> None:
        try:
            await self._client.publish(
                topics.jobs(device_id),
                command.model_dump_json(),
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


@cache
def _typed_envelope(schema: type[BaseModel]) -> type[Envelope]:
    """The envelope with its payload typed, so that a message is read in one pass."""
    model: type[Envelope] = create_model(
        f"{schema.__name__}Envelope", __base__=Envelope, payload=(schema, ...)
    )
    return model


@dataclass(frozen=True)
class _Uplink:
    """One kind of device message: its topic suffix, its schema and the service it feeds."""

    kind: str
    suffix: str
    schema: type[BaseModel]
    handle: Callable[[AsyncSession, Recorder, Settings, Device, Any], Awaitable[None]]
    # Stored with the other messages of a batch in one transaction; job acknowledgements and
    # results lock their job's row and get a transaction of their own.
    shares_transaction: bool = True


async def _telemetry(
    session: AsyncSession,
    recorder: Recorder,
    settings: Settings,
    device: Device,
    batch: TelemetryBatch,
) -> None:
    # Samples go through the recorder; the session saves the device's last_seen_at.
    fleet_service.ingest_telemetry(recorder, device, batch)


async def _heartbeat(
    session: AsyncSession,
    recorder: Recorder,
    settings: Settings,
    device: Device,
    heartbeat: Heartbeat,
) -> None:
    await fleet_service.record_heartbeat(session, recorder, device, heartbeat)


async def _ack(
    session: AsyncSession, recorder: Recorder, settings: Settings, device: Device, ack: JobAck
) -> None:
    await executions.acknowledge(session, device.device_id, ack.execution_id)


async def _result(
    session: AsyncSession,
    recorder: Recorder,
    settings: Settings,
    device: Device,
    result: JobResult,
) -> None:
    answer = await executions.finish(session, recorder, device.device_id, result, settings=settings)
    if not answer.accepted:
        # A duplicate or late result (QoS 1 may deliver twice): nothing to store.
        logger.info("%s: %s", device.device_id, answer.detail)


async def _error(
    session: AsyncSession,
    recorder: Recorder,
    settings: Settings,
    device: Device,
    report: DeviceErrorReport,
) -> None:
    fleet_service.record_device_error(recorder, device, report)


UPLINKS = (
    _Uplink("telemetry", "/telemetry", TelemetryBatch, _telemetry),
    _Uplink("heartbeat", "/heartbeat", Heartbeat, _heartbeat),
    _Uplink("job ack", "/jobs/ack", JobAck, _ack, shares_transaction=False),
    _Uplink("job result", "/jobs/result", JobResult, _result, shares_transaction=False),
    _Uplink("error report", "/errors", DeviceErrorReport, _error),
)


def parse_uplink_topic(topic: str) -> tuple[str, _Uplink] | None:
    """``homepot/v1/devices/{device_id}/telemetry`` → (device_id, telemetry uplink)."""
    prefix = topics.PREFIX + "/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :]
    for uplink in UPLINKS:
        if rest.endswith(uplink.suffix):
            device_id = rest[: -len(uplink.suffix)]
            if device_id and "/" not in device_id:
                return device_id, uplink
    return None


def share_group(database_url: str) -> str:
    """Servers sharing a database URL share the uplink: each device message is handled once."""
    return "homepot-" + hashlib.sha256(database_url.encode()).hexdigest()[:12]


class _MessageFailed(Exception):
    """A message's handler failed unexpectedly; the transaction it shared is lost."""

    def __init__(self, item: _Received) -> None:
        super().__init__(f"could not store a {item.uplink.kind} message from {item.device_id}")
        self.item = item


@dataclass
class _Received:
    """A well-formed device message on its way into the database."""

    topic: str
    device_id: str
    uplink: _Uplink
    api_key: str
    payload: BaseModel
    rows: int  # what it adds to the analytics queue: a telemetry batch's samples, else 1
    # The recorder already holds its rows: after a rollback only the transaction's part is
    # done again (a telemetry batch's last_seen_at), so no row is queued twice.
    recorded: bool = False
    # Nothing is left to do: stored and committed, or dropped and logged.
    settled: bool = False
    # Known once its key is checked: a simulated terminal's errors are simulated too.
    source: Source = DEVICE


class UplinkBridge:
    """Reads device messages from the broker and stores them; keeps the push channel current.

    Messages are stored in batches: each worker takes what is waiting in its queue (up to
    ``BATCH_MAX_MESSAGES``, gathering for at most ``BATCH_WAIT_SECONDS``), loads the batch's
    devices with one query, checks every message's key against its device, and stores
    telemetry, heartbeats and error reports in one transaction. Job acknowledgements and
    results take the job's row lock, so each has a transaction of its own, in arrival order.
    """

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._settings: Settings = app.state.settings
        self._group = share_group(self._settings.database_url)
        self._session_factory: async_sessionmaker[AsyncSession] = app.state.session_factory
        workers = 1 if self._settings.is_sqlite else BRIDGE_WORKERS
        self._queues: list[asyncio.Queue[aiomqtt.Message]] = [
            asyncio.Queue(WORKER_QUEUE_SIZE) for _ in range(workers)
        ]
        # Set once the first connection attempt has finished, whatever its outcome.
        self.first_attempt_done = asyncio.Event()
        self.connected = asyncio.Event()

    @property
    def _recorder(self) -> Recorder:
        recorder: Recorder = self._app.state.recorder
        return recorder

    def _set_channel(self, channel: PushChannel) -> None:
        self._app.state.push_channel = channel

    def _client(self) -> aiomqtt.Client:
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.ReceiveMaximum = RECEIVE_MAXIMUM
        return aiomqtt.Client(
            self._host,
            self._port,
            identifier=f"homepot-server-{uuid.uuid4().hex[:12]}",
            protocol=aiomqtt.ProtocolVersion.V5,
            properties=connect,
            keepalive=30,
            timeout=PUBLISH_TIMEOUT_SECONDS,
        )

    async def run(self) -> None:
        """Connect, subscribe, read; on any broker failure, reconnect with backoff. Forever."""
        workers = [asyncio.create_task(self._work(queue)) for queue in self._queues]
        delays = BROKER_RECONNECT.delays()
        outage_logged = False
        try:
            while True:
                try:
                    async with self._client() as client:
                        await client.subscribe(
                            [(f"$share/{self._group}/{topic}", QOS) for topic in topics.UPLINK]
                        )
                        self._set_channel(MqttChannel(client))
                        self.connected.set()
                        self.first_attempt_done.set()
                        logger.info("MQTT bridge connected to %s:%s", self._host, self._port)
                        delays = BROKER_RECONNECT.delays()
                        outage_logged = False
                        async for message in client.messages:
                            await self._enqueue(message)
                except Exception as exc:  # the broker's failures, and anything unforeseen
                    self.connected.clear()
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
            self.connected.clear()
            self._set_channel(UnavailableChannel("the server is shutting down"))
            await self._drain(workers)

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        """Store what was already received (bounded), then stop the workers."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                for queue in self._queues:
                    await queue.join()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def _enqueue(self, message: aiomqtt.Message) -> None:
        # One device always maps to the same worker: its messages keep their order.
        key = message.topic.value.encode()
        parsed = parse_uplink_topic(message.topic.value)
        if parsed is not None:
            key = parsed[0].encode()
        await self._queues[zlib.crc32(key) % len(self._queues)].put(message)

    async def _work(self, queue: asyncio.Queue[aiomqtt.Message]) -> None:
        while True:
            batch = await _next_batch(queue)
            try:
                await self.store(batch)
            finally:
                for _ in batch:
                    queue.task_done()

    async def store(self, messages: Sequence[aiomqtt.Message]) -> None:
        """Authenticate device messages and store them, in order; every failure is logged,
        none raised, and a bad message never costs the others their place."""
        shared: list[_Received] = []
        rows = 0
        most_rows = min(BATCH_MAX_ROWS, self._recorder_share())
        for message in messages:
            item = self._parse(message)
            # Reading a large batch takes a while: let the recorder and the broker's socket in.
            await asyncio.sleep(0)
            if item is None:
                continue
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

    async def _recorder_room(self, rows: int) -> None:
        """Wait until the analytics queue can take ``rows`` more without nearing its bound.

        Over HTTP a full queue answers 503 and the device sends again; an MQTT device has had
        its PUBACK, so the bridge waits instead (the broker keeps the messages meanwhile) and
        drops a batch only after RECORDER_WAIT_SECONDS.
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

    def _parse(self, message: aiomqtt.Message) -> _Received | None:
        topic = message.topic.value
        parsed = parse_uplink_topic(topic)
        if parsed is None:
            logger.warning("ignored an MQTT message on unexpected topic %s", topic)
            return None
        device_id, uplink = parsed
        try:
            envelope = _typed_envelope(uplink.schema).model_validate_json(message.payload)
        except ValidationError as exc:
            problem = validation_summary(exc, inside="payload")
            self._log_dropped(
                device_id,
                topic,
                category="validation",
                error_code="MQTT_BAD_PAYLOAD",
                problem=f"the {uplink.kind} message is malformed: {problem}",
            )
            return None
        payload: BaseModel = envelope.payload  # type: ignore[assignment]
        rows = len(payload.samples) if isinstance(payload, TelemetryBatch) else 1
        return _Received(topic, device_id, uplink, envelope.api_key, payload, rows)

    async def _store_together(self, items: list[_Received]) -> None:
        """Store ``items`` in one transaction. When one of them fails, the transaction is
        lost: that one is logged and the others are stored again in a new one."""
        if items:
            await self._recorder_room(sum(item.rows for item in items))
        while items := [item for item in items if not item.settled]:
            try:
                async with self._session_factory() as session:
                    devices = await _devices(session, {item.device_id for item in items})
                    for item in items:
                        await self._apply(session, devices, item)
                    await session.commit()
            except _MessageFailed as failed:
                failed.item.settled = True
                self._log_failure(failed.item, failed.__cause__)
                continue
            except Exception as exc:  # the batch as a whole: loading, or the commit
                if len(items) == 1:
                    items[0].settled = True
                    self._log_failure(items[0], exc)
                    return
                for item in items:  # one at a time, so that only the culprit is lost
                    await self._store_together([item])
                return
            for item in items:
                item.settled = True

    async def _apply(
        self, session: AsyncSession, devices: dict[str, Device], item: _Received
    ) -> None:
        """One message, inside the batch's transaction. Raises _MessageFailed on anything
        unforeseen, which leaves the transaction unusable."""
        device = await self._authenticate(session, devices.get(item.device_id), item)
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
        except fleet_service.TelemetryNotQueued as exc:
            # The HTTP caller would be told to resend; an MQTT device has had its PUBACK.
            item.settled = True
            record_error(
                category="database",
                severity="error",
                error_code="MQTT_TELEMETRY_DROPPED",
                error_message=f"dropped a telemetry message from {item.device_id}: {exc}",
                device_id=item.device_id,
                context={"topic": item.topic},
                recorder=self._recorder,
                source=item.source,
            )
        except fleet_service.ErrorReportNotQueued as exc:
            item.settled = True
            logger.error("dropped an error report from %s: %s", item.device_id, exc)
        except Exception as exc:
            raise _MessageFailed(item) from exc
        else:
            if isinstance(item.payload, TelemetryBatch):
                item.recorded = True
            elif isinstance(item.payload, DeviceErrorReport):
                item.settled = True  # the recorder has it; the transaction holds nothing of it

    @staticmethod
    async def _authenticate(
        session: AsyncSession, device: Device | None, item: _Received
    ) -> Device | str:
        """The topic's device when the key is its own; otherwise why the message is refused."""
        key_hash = hash_key(item.api_key)
        if device is None or not hmac.compare_digest(device.api_key_hash or "", key_hash):
            owner = await device_for_key(session, item.api_key)
            if owner is None:
                return "the API key is unknown or revoked"
            if owner.device_id != item.device_id:
                return f"the API key belongs to {owner.device_id}, not to {item.device_id}"
            device = owner  # registered after the batch's devices were loaded
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


async def _next_batch(queue: asyncio.Queue[aiomqtt.Message]) -> list[aiomqtt.Message]:
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
    host, port = broker_address(url)
    app.state.push_channel = UnavailableChannel(f"not connected to the MQTT broker {host}:{port}")
    bridge = UplinkBridge(app, host, port)
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
