"""The kinds of device message that come up over MQTT: for each, its topic, its schema and
the transport-independent service that stores it (the same the HTTP endpoints call).

Used by the bridge (:mod:`homepot.fleet.mqtt`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics.recorder import Recorder
from homepot.config import Settings
from homepot.device.models import Device
from homepot.fleet import service as fleet_service
from homepot.job import executions
from homepot.protocol.messages import (
    DeviceErrorReport,
    Heartbeat,
    JobAck,
    JobResult,
    TelemetryBatch,
    topics,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Uplink:
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
    await fleet_service.record_device_error(session, recorder, device, report)


UPLINKS = (
    Uplink("telemetry", "/telemetry", TelemetryBatch, _telemetry),
    Uplink("heartbeat", "/heartbeat", Heartbeat, _heartbeat),
    Uplink("job ack", "/jobs/ack", JobAck, _ack, shares_transaction=False),
    Uplink("job result", "/jobs/result", JobResult, _result, shares_transaction=False),
    Uplink("error report", "/errors", DeviceErrorReport, _error),
)


def parse_uplink_topic(topic: str) -> tuple[str, Uplink] | None:
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
