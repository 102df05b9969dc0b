"""The terminal's MQTT connection: pushed jobs down, its messages up (QoS 1).

The server side of the same protocol is :mod:`homepot.fleet.mqtt`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import aiomqtt
from pydantic import BaseModel, ValidationError

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

# A publish waits this long for the broker's PUBACK.
PUBLISH_TIMEOUT_SECONDS = 5.0


class DeviceMqttLink:
    """A device's MQTT connection: receives its pushed jobs, publishes its messages (QoS 1).

    Usage::

        async with DeviceMqttLink("127.0.0.1", 1883, device_id, api_key) as link:
            await link.publish_heartbeat(Heartbeat(status="ok"))
            async for command in link.commands():
                await link.publish_ack(command.execution_id)
                ...
                await link.publish_result(JobResult(execution_id=..., status="success"))

    The link subscribes to the device's jobs topic before ``__aenter__`` returns. It does not
    reconnect: when the broker goes away, ``commands()`` and the publish methods raise
    ``aiomqtt.MqttError``, and the caller falls back to HTTP (polling, the retry queue).
    """

    def __init__(self, host: str, port: int, device_id: str, api_key: str) -> None:
        self.device_id = device_id
        self._api_key = api_key
        self._client = aiomqtt.Client(
            host,
            port,
            identifier=f"homepot-device-{device_id}-{uuid.uuid4().hex[:8]}",
            keepalive=30,
            timeout=PUBLISH_TIMEOUT_SECONDS,
        )

    @classmethod
    def from_url(cls, url: str, device_id: str, api_key: str) -> DeviceMqttLink:
        host, port = broker_address(url)
        return cls(host, port, device_id, api_key)

    async def __aenter__(self) -> DeviceMqttLink:
        await self._client.__aenter__()
        try:
            await self._client.subscribe(topics.jobs(self.device_id), qos=QOS)
        except BaseException:
            await self._client.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.__aexit__(None, None, None)

    async def commands(self) -> AsyncIterator[JobCommand]:
        """The jobs pushed to this device, as they arrive (an unreadable one is skipped)."""
        async for message in self._client.messages:
            try:
                yield JobCommand.model_validate_json(message.payload)
            except ValidationError as exc:
                logger.warning(
                    "%s: skipped an unreadable job command: %s",
                    self.device_id,
                    validation_summary(exc),
                )

    async def publish_telemetry(self, batch: TelemetryBatch) -> None:
        await self._publish(topics.telemetry(self.device_id), batch)

    async def publish_heartbeat(self, heartbeat: Heartbeat) -> None:
        await self._publish(topics.heartbeat(self.device_id), heartbeat)

    async def publish_ack(self, execution_id: int) -> None:
        await self._publish(topics.job_ack(self.device_id), JobAck(execution_id=execution_id))

    async def publish_result(self, result: JobResult) -> None:
        await self._publish(topics.job_result(self.device_id), result)

    async def publish_error(self, report: DeviceErrorReport) -> None:
        await self._publish(topics.errors(self.device_id), report)

    async def _publish(self, topic: str, payload: BaseModel) -> None:
        envelope = Envelope(
            api_key=self._api_key, payload=payload.model_dump(mode="json", exclude_none=True)
        )
        await self._client.publish(topic, envelope.model_dump_json(), qos=QOS)
