"""How a device message that came over MQTT gets into the database.

The broker side (connection, persistent session, acknowledgement, spool) is
:class:`homepot.fleet.mqtt.UplinkBridge`; it hands batches of :class:`IncomingMessage` to
:class:`UplinkStore`, which parses them, checks each signature against its device's key
(:meth:`UplinkStore.checks_out` does so from the cached keys alone, while the database is
down), and stores them with the same transport-independent services the HTTP endpoints call:
telemetry, heartbeats and error reports of a batch in one transaction, each job
acknowledgement or result in one of its own. A bad message is dropped and logged in
``error_logs``; it never costs the others their place. Every kind is idempotent: a message
delivered twice (QoS 1 redelivery) is stored once (telemetry by its samples' ids,
heartbeats and error reports by their message id, job messages by the execution's state).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiomqtt
from fastapi import FastAPI
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
from homepot.fleet.device_keys import DeviceKeyCache
from homepot.fleet.uplinks import Uplink, parse_uplink_topic
from homepot.job import executions
from homepot.protocol.messages import TelemetryBatch
from homepot.protocol.mqtt import (
    SignedMessage,
    secret_from_key_hash,
    signature_matches,
    validation_summary,
)

logger = logging.getLogger(__name__)

# A transaction takes messages up to this many analytics rows (a telemetry sample is a row),
# so that a batch of large telemetry messages does not hold the event loop for seconds.
BATCH_MAX_ROWS = 2_000
# Before storing, the bridge waits for the analytics queue to be at most half full, at most
# this long; then it goes on, and samples the full queue refuses are spooled (not dropped).
RECORDER_WAIT_SECONDS = 30.0
# How long a probe of the database may take before it counts as unavailable.
DATABASE_PROBE_SECONDS = 5.0


@dataclass(frozen=True)
class IncomingMessage:
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
    def of(cls, message: aiomqtt.Message, generation: int = -1) -> IncomingMessage:
        payload = message.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = b""
        return cls(message.topic.value, bytes(payload), message.mid, message.qos, generation)


class MessageFailed(Exception):
    """A message's handler failed unexpectedly; the transaction it shared is lost."""

    def __init__(self, item: ReceivedMessage) -> None:
        super().__init__(f"could not store a {item.uplink.kind} message from {item.device_id}")
        self.item = item


class DatabaseUnavailable(Exception):
    """The database does not answer: these messages are not stored (spool them)."""

    def __init__(self, unsettled: list[IncomingMessage]) -> None:
        super().__init__(f"the database is unavailable; {len(unsettled)} messages not stored")
        self.unsettled = unsettled


class NotDurable(Exception):
    """Neither the database nor the spool took a batch: it stays unacknowledged."""


@dataclass
class ReceivedMessage:
    """A well-formed device message on its way into the database."""

    incoming: IncomingMessage
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


class UplinkStore:
    """Parses, authenticates and stores batches of device messages (see the module)."""

    def __init__(self, app: FastAPI, keys: DeviceKeyCache) -> None:
        self._app = app
        self._settings: Settings = app.state.settings
        self._session_factory: async_sessionmaker[AsyncSession] = app.state.session_factory
        self.keys = keys

    @property
    def _recorder(self) -> Recorder:
        recorder: Recorder = self._app.state.recorder
        return recorder

    def checks_out(self, item: IncomingMessage) -> bool:
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

    async def store_incoming(self, batch: list[IncomingMessage]) -> None:
        """Store the batch in the database; raises DatabaseUnavailable with what is not
        stored when the database stops answering. On return, every message is stored (its
        analytics rows written or spooled by the recorder) or dropped and logged."""
        received: list[ReceivedMessage] = []
        for incoming in batch:
            item = self._parse(incoming)
            # Reading a large batch takes a while: let the recorder and the broker's socket in.
            await asyncio.sleep(0)
            if item is not None:
                received.append(item)
        shared: list[ReceivedMessage] = []
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
        except DatabaseUnavailable:
            raise DatabaseUnavailable(
                [item.incoming for item in received if not item.settled]
            ) from None
        except Exception as exc:
            # The recorder could neither write nor spool: keep the batch (spooled by caller).
            raise DatabaseUnavailable([item.incoming for item in received]) from exc

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

    def _parse(self, incoming: IncomingMessage) -> ReceivedMessage | None:
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
        return ReceivedMessage(incoming, device_id, uplink, signed, payload, rows)

    async def _store_together(self, items: list[ReceivedMessage]) -> None:
        """Store ``items`` in one transaction. When one of them fails, the transaction is
        lost: that one is logged and the others are stored again in a new one. When the
        database itself does not answer, raises DatabaseUnavailable."""
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
            except DatabaseUnavailable:
                raise
            except MessageFailed as failed:
                if not await self._database_answers():
                    raise DatabaseUnavailable([]) from failed
                failed.item.settled = True
                self._log_failure(failed.item, failed.__cause__)
                continue
            except Exception as exc:  # the batch as a whole: loading, or the commit
                if not await self._database_answers():
                    raise DatabaseUnavailable([]) from exc
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
        self, session: AsyncSession, devices: dict[str, Device], item: ReceivedMessage
    ) -> None:
        """One message, inside the batch's transaction. Raises MessageFailed on anything
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
            raise DatabaseUnavailable([]) from exc
        except Exception as exc:
            raise MessageFailed(item) from exc
        else:
            if isinstance(item.payload, TelemetryBatch):
                item.recorded = True
            # An error report is queued when the transaction commits, with its receipt; after
            # a rollback it is stored again like a heartbeat.

    @staticmethod
    def _authenticate(device: Device | None, item: ReceivedMessage) -> Device | str:
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

    def _log_failure(self, item: ReceivedMessage, exc: BaseException | None) -> None:
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


async def _devices(session: AsyncSession, device_ids: set[str]) -> dict[str, Device]:
    found = await session.scalars(select(Device).where(Device.device_id.in_(device_ids)))
    return {device.device_id: device for device in found}
