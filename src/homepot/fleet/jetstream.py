"""The uplink through NATS JetStream: every server process reads a share of the devices'
messages from one durable pull consumer (``fleet.uplink`` "jetstream").

Where the messages are. NATS's MQTT side maps a topic ``a/b/c`` to the subject ``a.b.c``. A
QoS 1 PUBLISH (every device message is one) is delivered to NATS subscribers of ``a.b.c``,
fire and forget, and stored in the account's stream ``$MQTT_msgs`` under ``$MQTT.msgs.a.b.c``;
the device gets its PUBACK only once that store has been acknowledged by JetStream, i.e. is
on a majority of the ``mqtt.stream_replicas`` nodes. The reader therefore consumes from
``$MQTT_msgs``, not from a stream of its own over ``homepot.v1.devices.>``: such a stream does
capture the messages (QoS 0 ones too), but through the plain NATS publish, which the PUBACK
does not wait for, so a node dying between the two would lose a message the device holds
for delivered. ``$MQTT_msgs`` keeps messages by interest: a durable consumer filtered on the
devices' subjects keeps each until it is acknowledged. NATS creates the stream when the first
MQTT client of the account connects; until then the reader waits for it.

How it is shared. One durable pull consumer (``fleet.jetstream_consumer``, replicated like the
stream) serves every process: each fetches batches, so every message goes to one of them. A
message is acknowledged once stored (:class:`~homepot.fleet.uplink_store.UplinkStore`, the
MQTT bridge's path: one transaction per batch, idempotent by message id); one not
acknowledged within ``fleet.jetstream_ack_wait_seconds`` (its process or its node died) is
delivered again, to any process. While the database is unavailable nothing is acknowledged:
the stream is the spool, and the messages a process holds are marked in progress so that no
other process gets them meanwhile.

The consumer also sees the jobs the server pushes (``.../jobs``, under the same prefix, since
a consumer of NATS 2.9 has one filter): they are acknowledged and skipped. Job pushes stay on
MQTT (the bridge connects without reading the uplink).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
from fastapi import FastAPI
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from homepot.analytics.recorder import Recorder
from homepot.config import FleetSettings, Settings
from homepot.error_logger import record_error
from homepot.fleet.device_keys import DeviceKeyCache
from homepot.fleet.mqtt import (
    BRIDGE_WORKERS,
    DRAIN_SECONDS,
    SETTLE_RETRY,
    STARTUP_WAIT_SECONDS,
    next_batch,
)
from homepot.fleet.uplink_store import DatabaseUnavailable, IncomingMessage, UplinkStore
from homepot.fleet.uplinks import parse_uplink_topic
from homepot.kit.retry import BROKER_RECONNECT
from homepot.protocol.messages import topics

logger = logging.getLogger(__name__)

# The stream NATS's MQTT side stores QoS 1 messages in, and the prefix of their subjects.
MQTT_STREAM = "$MQTT_msgs"
MQTT_SUBJECT_PREFIX = "$MQTT.msgs."
# Every device subject (uplink and the jobs pushed to devices).
DEVICE_SUBJECTS = MQTT_SUBJECT_PREFIX + topics.PREFIX.replace("/", ".") + ".>"
# How long one fetch waits for a first message.
FETCH_WAIT_SECONDS = 1.0


def topic_of(subject: str) -> str:
    """The MQTT topic of a message stored by NATS's MQTT side (``$MQTT.msgs.a.b`` → ``a/b``)."""
    return subject.removeprefix(MQTT_SUBJECT_PREFIX).replace(".", "/")


def consumer_config(fleet: FleetSettings) -> ConsumerConfig:
    """The shared durable consumer of the devices' messages, as the settings say."""
    return ConsumerConfig(
        durable_name=fleet.jetstream_consumer,
        description="HOMEPOT server processes: the devices' messages",
        filter_subject=DEVICE_SUBJECTS,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=fleet.jetstream_ack_wait_seconds,
        max_ack_pending=fleet.jetstream_max_ack_pending,
    )


async def wait_for_mqtt_stream(
    js: JetStreamContext,
    *,
    on_first_miss: Callable[[], Awaitable[None]],
    seconds: float | None = None,
) -> bool:
    """Until NATS has ``$MQTT_msgs`` (its MQTT side makes it when the account's first MQTT
    client connects); ``on_first_miss`` runs when it is missing the first time. False when
    it is still missing after ``seconds`` (None: waits as long as it takes)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    missed = False
    while True:
        try:
            await js.stream_info(MQTT_STREAM)
            return True
        except nats.js.errors.NotFoundError:
            if not missed:
                missed = True
                await on_first_miss()
            if deadline is not None and time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.5)


async def ensure_consumer(js: JetStreamContext, fleet: FleetSettings) -> bool:
    """Create the shared consumer on ``$MQTT_msgs``, or find it (every process asks with the
    same settings; NATS applies changed settings where it can: the ack wait, the pending
    limit). False when it exists with settings NATS refuses to change: it is used as it is."""
    try:
        await js.add_consumer(MQTT_STREAM, consumer_config(fleet))
        return True
    except nats.js.errors.BadRequestError as exc:
        existing = await js.consumer_info(MQTT_STREAM, fleet.jetstream_consumer)
        logger.warning(
            "JetStream uplink: the consumer %s exists with other settings that NATS"
            " refuses to change (%s); reading it as it is: %s",
            fleet.jetstream_consumer,
            exc.description,
            existing.config,
        )
        return False


@dataclass(eq=False)
class Delivery:
    """A message fetched from the consumer, on its way into the database."""

    incoming: IncomingMessage
    message: Msg
    fetched_at: float = field(default=0.0)
    # When NATS was last told it is still being worked on (loop time; the fetch at first).
    kept_at: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.kept_at = self.fetched_at


class JetStreamUplink:
    """Fetches device messages from the shared durable consumer, stores them, acknowledges
    them (see the module). ``stats`` counts what this process did, for /metrics."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._settings: Settings = app.state.settings
        self._fleet: FleetSettings = self._settings.fleet
        self._uplinks = UplinkStore(app, DeviceKeyCache())
        workers = 1 if self._settings.is_sqlite else BRIDGE_WORKERS
        # One device's messages go to one worker, so that a process stores them in order.
        self._queues: list[asyncio.Queue[Delivery]] = [asyncio.Queue() for _ in range(workers)]
        # Fetched and not yet acknowledged (or given up); bounded by mqtt_max_unacknowledged.
        self._held: set[Delivery] = set()
        self._room = asyncio.Event()
        self._room.set()
        # Set while connected to NATS and bound to the consumer.
        self.connected = asyncio.Event()
        self.first_attempt_done = asyncio.Event()
        # kept_in_progress: "still working on it" signals sent for messages held a while.
        self.stats = {
            "received": 0,
            "acknowledged": 0,
            "redelivered": 0,
            "skipped": 0,
            "kept_in_progress": 0,
        }

    def snapshot(self) -> dict[str, Any]:
        """For /api/v1/health and /metrics."""
        return {
            "connected": self.connected.is_set(),
            "consumer": self._fleet.jetstream_consumer,
            "held": len(self._held),
            **self.stats,
        }

    @property
    def _recorder(self) -> Recorder:
        recorder: Recorder = self._app.state.recorder
        return recorder

    async def run(self) -> None:
        """Connect, bind to the consumer, fetch and store; on failure, again. Forever."""
        workers = [asyncio.create_task(self._work(queue)) for queue in self._queues]
        workers.append(asyncio.create_task(self._keep_in_progress()))
        delays = BROKER_RECONNECT.delays()
        outage_logged = False
        client: NatsClient | None = None
        try:
            while True:
                try:
                    client = await self._connect()
                    subscription = await self._bind(client.jetstream())
                    self.connected.set()
                    delays = BROKER_RECONNECT.delays()
                    outage_logged = False
                    self.first_attempt_done.set()
                    logger.info(
                        "JetStream uplink: reading consumer %s of %s",
                        self._fleet.jetstream_consumer,
                        MQTT_STREAM,
                    )
                    await self._fetch(subscription)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.connected.clear()
                    if client is not None:
                        with contextlib.suppress(Exception):
                            await client.close()
                        client = None
                    reason = f"the JetStream uplink cannot read from NATS ({exc!r})"
                    if not outage_logged:
                        outage_logged = True
                        record_error(
                            category="external_service",
                            severity="error",
                            error_code="JETSTREAM_UNAVAILABLE",
                            error_message=(
                                f"{reason}; retrying with backoff, device messages wait in"
                                " the stream"
                            ),
                            context={"servers": _without_credentials(self._fleet.nats_urls)},
                            recorder=self._recorder,
                        )
                    delay = next(delays)
                    logger.warning("%s; retrying in %.1f s", reason, delay)
                    self.first_attempt_done.set()
                    await asyncio.sleep(delay)
        finally:
            self.connected.clear()
            await self._drain(workers)
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()

    async def _connect(self) -> NatsClient:
        async def disconnected() -> None:
            if self.connected.is_set():  # not when this process closes the connection
                logger.warning("JetStream uplink: disconnected from NATS, reconnecting")
            self.connected.clear()

        async def reconnected() -> None:
            self.connected.set()
            logger.info("JetStream uplink: reconnected to NATS")

        async def error(exc: Exception) -> None:
            logger.debug("JetStream uplink: NATS client error: %r", exc)

        host = socket.gethostname()
        client = await nats.connect(
            servers=self._fleet.nats_urls,
            name=f"homepot-uplink-{host}-{os.getpid()}",
            connect_timeout=2,
            # After the first connection the client reconnects by itself, to any node it
            # knows (those configured and those the cluster announced), forever.
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        return client

    async def _bind(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        """The shared durable consumer, created by whichever process comes first."""

        async def log_waiting() -> None:
            logger.warning(
                "JetStream uplink: NATS has no %s stream yet (its MQTT side makes it"
                " when the first MQTT client connects); waiting",
                MQTT_STREAM,
            )

        await wait_for_mqtt_stream(js, on_first_miss=log_waiting)
        await ensure_consumer(js, self._fleet)
        return await js.pull_subscribe_bind(self._fleet.jetstream_consumer, stream=MQTT_STREAM)

    async def _fetch(self, subscription: JetStreamContext.PullSubscription) -> None:
        """Fetch batches while there is room; hand each message to its device's worker."""
        limit = self._fleet.mqtt_max_unacknowledged
        loop = asyncio.get_running_loop()
        while True:
            await self._room.wait()
            wanted = min(self._fleet.jetstream_fetch_batch, limit - len(self._held))
            try:
                messages = await subscription.fetch(max(1, wanted), timeout=FETCH_WAIT_SECONDS)
            except TimeoutError:
                # Nothing to fetch. nats-py raises its own TimeoutError, and on some paths
                # (the server's answer to the no-wait request came late, the deadline spent)
                # the builtin one: neither is a broken connection. Closing the client for it
                # left the held messages without their in-progress marks, and NATS gave them
                # again after the ack wait.
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.NoServersError):
                raise
            except nats.errors.Error as exc:
                # A node or the consumer's leader changing: the client reconnects meanwhile.
                logger.debug("JetStream uplink: fetch failed (%r); fetching again", exc)
                await asyncio.sleep(0.2)
                continue
            for message in messages:
                await self._accept(message, loop.time())
            if len(self._held) >= limit:
                self._room.clear()

    async def _accept(self, message: Msg, now: float) -> None:
        self.stats["received"] += 1
        if message.metadata.num_delivered > 1:
            self.stats["redelivered"] += 1
        topic = topic_of(message.subject)
        parsed = parse_uplink_topic(topic)
        if parsed is None:
            # A job the server pushed (same prefix), or a stray topic: nothing to store.
            self.stats["skipped"] += 1
            with contextlib.suppress(Exception):
                await message.ack()
            return
        delivery = Delivery(IncomingMessage(topic, message.data, qos=1), message, now)
        self._held.add(delivery)
        key = parsed[0].encode()
        self._queues[zlib.crc32(key) % len(self._queues)].put_nowait(delivery)

    async def _work(self, queue: asyncio.Queue[Delivery]) -> None:
        while True:
            batch = await next_batch(queue)
            try:
                await self._settle(batch)
            except Exception:
                # Unacknowledged, the batch comes back after the ack wait; the worker goes on.
                logger.exception("JetStream uplink: a batch failed unexpectedly")
            finally:
                for delivery in batch:
                    self._release(delivery)
                    queue.task_done()

    async def _settle(self, batch: list[Delivery]) -> None:
        """Store the batch, acknowledging each message once stored; what the database did not
        take is tried again (held in progress), never acknowledged before it is stored."""
        pending = batch
        delays = SETTLE_RETRY.delays()
        while pending:
            try:
                await self._uplinks.store_incoming([d.incoming for d in pending])
                stored, pending = pending, []
            except DatabaseUnavailable as outage:
                left = {id(incoming) for incoming in outage.unsettled}
                stored = [d for d in pending if id(d.incoming) not in left]
                pending = [d for d in pending if id(d.incoming) in left]
            for delivery in stored:
                await self._acknowledge(delivery)
            if pending:
                delay = min(next(delays), self._fleet.jetstream_ack_wait_seconds / 3)
                logger.error(
                    "JetStream uplink: the database did not take %d device messages; they"
                    " stay unacknowledged, retrying in %.1f s",
                    len(pending),
                    delay,
                )
                await asyncio.sleep(delay)

    async def _acknowledge(self, delivery: Delivery) -> None:
        try:
            await delivery.message.ack()
        except Exception as exc:
            # The connection is gone: NATS delivers it again, and it is stored once.
            logger.debug("JetStream uplink: acknowledgement not sent (%r)", exc)
            return
        self.stats["acknowledged"] += 1

    def _release(self, delivery: Delivery) -> None:
        self._held.discard(delivery)
        if len(self._held) < self._fleet.mqtt_max_unacknowledged:
            self._room.set()

    async def _keep_in_progress(self) -> None:
        """Each message held for a third of the ack wait (a slow or absent database) is
        marked in progress, and again every third of it, so that NATS does not give it to
        another process meanwhile. Looked at twice as often as that, a held message goes at
        most half the ack wait unmarked."""
        period = self._fleet.jetstream_ack_wait_seconds / 3
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period / 2)
            now = loop.time()
            for delivery in list(self._held):
                if now - delivery.kept_at >= period:
                    delivery.kept_at = now
                    with contextlib.suppress(Exception):
                        await delivery.message.in_progress()
                        self.stats["kept_in_progress"] += 1

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        """Store what was fetched (bounded), then stop; the rest is delivered again."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                for queue in self._queues:
                    await queue.join()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


def _without_credentials(urls: list[str]) -> list[str]:
    return [url.split("@", 1)[-1] if "@" in url else url for url in urls]


@contextlib.asynccontextmanager
async def run_jetstream_uplink(app: FastAPI) -> AsyncIterator[None]:
    """Background service: the JetStream uplink reader, as ``app.state.jetstream_uplink``.
    Start-up waits for the first connection attempt only (at most ``STARTUP_WAIT_SECONDS``)."""
    reader = JetStreamUplink(app)
    app.state.jetstream_uplink = reader
    task = asyncio.create_task(reader.run(), name="homepot-jetstream-uplink")
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STARTUP_WAIT_SECONDS):
                await reader.first_attempt_done.wait()
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
