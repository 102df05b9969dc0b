"""Job commands pushed to devices over MQTT: the channel the server uses while connected to
the broker, and the one that stands in while it is not (every push then fails over to
polling). The bridge that keeps ``app.state.push_channel`` current is
:class:`homepot.fleet.mqtt.UplinkBridge`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiomqtt

from homepot.protocol.messages import JobCommand, topics
from homepot.protocol.mqtt import QOS, SignedMessage

# A push waits this long for the broker's PUBACK before the job is left for polling.
PUBLISH_TIMEOUT_SECONDS = 5.0


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
