"""The terminal's MQTT connection: pushed jobs down, its messages up (QoS 1).

The device logs in to the broker with its own account (user name = device id, password
derived from its API key) and signs every message it publishes; it runs a pushed job only
when the server's signature is right, the job is recent, and it has not seen it before (see
:mod:`homepot.protocol.mqtt`). The server side of the same protocol is
:mod:`homepot.fleet.mqtt`.
"""

from __future__ import annotations

import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import aiomqtt
from pydantic import BaseModel, ValidationError

from homepot.protocol.messages import (
    DeviceErrorReport,
    Heartbeat,
    JobAck,
    JobCommand,
    JobResult,
    TelemetryBatch,
    topics,
)
from homepot.protocol.mqtt import (
    QOS,
    SignedMessage,
    broker_password,
    device_secret,
    parse_broker_url,
    signature_matches,
    validation_summary,
)

logger = logging.getLogger(__name__)

# A publish waits this long for the broker's PUBACK.
PUBLISH_TIMEOUT_SECONDS = 5.0
# A pushed job is run only when it was issued within this much of the device's clock, either
# way; a signed job seen before inside that window is a replay and is refused.
JOB_CLOCK_WINDOW = timedelta(minutes=5)


class JobReplayGuard:
    """Refuses pushed jobs outside the clock window and any signed job seen before.

    It remembers a job's signature until the job falls out of the window, after which the
    window refuses it anyway: its memory is bounded by the jobs of one window.
    """

    def __init__(self, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._seen: dict[str, datetime] = {}

    def refusal(self, mac: str, command: JobCommand) -> str | None:
        """Why the job must not run, or None (and it is then remembered)."""
        now = self._clock()
        self._seen = {seen: at for seen, at in self._seen.items() if at > now - JOB_CLOCK_WINDOW}
        issued = command.issued_at
        if issued.tzinfo is None:
            return "the job's issued_at has no UTC offset"
        if abs(now - issued) > JOB_CLOCK_WINDOW:
            return (
                f"the job was issued at {issued.isoformat()}, outside the"
                f" {JOB_CLOCK_WINDOW.total_seconds():.0f} s window around the device's clock"
            )
        if mac in self._seen:
            return "the job was delivered before (a replay or a duplicate)"
        self._seen[mac] = issued
        return None


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

    def __init__(
        self,
        host: str,
        port: int,
        device_id: str,
        api_key: str,
        *,
        tls: bool = False,
        tls_context: ssl.SSLContext | None = None,
        replay_guard: JobReplayGuard | None = None,
    ) -> None:
        self.device_id = device_id
        self._secret = device_secret(api_key)
        # Jobs refused (forged, stale, replayed): logged and counted, never run.
        self.refused_jobs = 0
        self._guard = replay_guard or JobReplayGuard()
        self._client = aiomqtt.Client(
            host,
            port,
            username=device_id,
            password=broker_password(self._secret),
            identifier=f"homepot-device-{device_id}-{uuid.uuid4().hex[:8]}",
            keepalive=30,
            timeout=PUBLISH_TIMEOUT_SECONDS,
            # TLS checks the broker's certificate against the system's CAs, or those of
            # the context given (a fleet's private CA).
            tls_context=tls_context or (ssl.create_default_context() if tls else None),
        )

    @classmethod
    def from_url(cls, url: str, device_id: str, api_key: str) -> DeviceMqttLink:
        address = parse_broker_url(url)
        return cls(address.host, address.port, device_id, api_key, tls=address.tls)

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
        """The jobs pushed to this device, as they arrive. A job that is unreadable, not
        signed with this device's secret, outside the clock window or seen before is
        skipped (and logged)."""
        async for message in self._client.messages:
            checked = self._check_command(message.topic.value, message.payload)
            if isinstance(checked, JobCommand):
                yield checked
            else:
                self.refused_jobs += 1
                logger.warning("%s: refused a pushed job: %s", self.device_id, checked)

    def _check_command(self, topic: str, payload: object) -> JobCommand | str:
        """The command, or why it must not run."""
        if not isinstance(payload, bytes | str):
            return "the job message is empty"
        try:
            signed = SignedMessage.model_validate_json(payload)
        except ValidationError as exc:
            return f"the job message is unreadable: {validation_summary(exc)}"
        if not signature_matches(self._secret, topic, signed.body, signed.mac):
            return "the job's signature is not the server's (forged or altered)"
        try:
            command = JobCommand.model_validate_json(signed.body)
        except ValidationError as exc:
            return f"the job command is unreadable: {validation_summary(exc)}"
        problem = self._guard.refusal(signed.mac, command)
        if problem is not None:
            return f"job execution {command.execution_id} refused: {problem}"
        return command

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
        signed = SignedMessage.of(self._secret, topic, payload)
        await self._client.publish(topic, signed.model_dump_json(), qos=QOS)
