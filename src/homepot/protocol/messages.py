"""The device protocol's messages, shared by the server, the agent and the simulator.

The same schemas travel over HTTP (``/api/v1/agent/...``) and MQTT (see :mod:`topics`).
Validation here is the contract: a percent above 100 or a negative count is refused with a
422 that names the field, before anything is stored.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    model_validator,
)

from homepot.kit.ids import uuid7
from homepot.kit.jsonlimits import JsonLimits, JsonObject
from homepot.kit.timeranges import UtcDatetime, representable_utc

MAX_SAMPLES_PER_BATCH = 500
MAX_ERRORS_PER_REPORT = 20
MAX_JOBS_PER_POLL = 100
# Samples older than this are refused: the agent's retry queue keeps at most a week.
MAX_SAMPLE_AGE = timedelta(days=8)
MAX_CLOCK_SKEW = timedelta(minutes=5)
# A sample's extra_metrics and an error report's context, as JSON.
MAX_EXTRA_BYTES = 16 * 1024
# JsonLimits has checked that the value is plain JSON (str keys; str, number, bool, null,
# lists and objects below), so pydantic only needs to see an object: validating each value
# again as JsonValue cost a third of a sample's validation.
ExtraJson = Annotated[dict[str, Any], BeforeValidator(JsonLimits(max_bytes=MAX_EXTRA_BYTES))]
_DEVICE_EVENT_NAMESPACE = uuid.UUID("6f1c2a8e-3b7d-4c55-9a2e-1d4f0b7e9c31")
_DEVICE_EVENT_NAMESPACE_BYTES = _DEVICE_EVENT_NAMESPACE.bytes


# The UTC that pydantic puts on the datetimes it parses ("...Z", "...+00:00"): one shared
# object. Datetimes with the same tzinfo object compare without asking it for its offset.
_PARSED_UTC = TypeAdapter(datetime).validate_python("2000-01-01T00:00:00Z").tzinfo
# (time.time() when computed, {tzinfo: (earliest accepted, latest accepted)}): recomputed at
# most every _WINDOW_REFRESH_SECONDS, not for each of a batch's 500 samples.
_window: tuple[float, dict[Any, tuple[datetime, datetime]]] = (float("-inf"), {})
_WINDOW_REFRESH_SECONDS = 0.05


def _accepted_window(tzinfo: Any) -> tuple[datetime, datetime]:
    global _window
    stamp = time.time()
    if not 0 <= stamp - _window[0] < _WINDOW_REFRESH_SECONDS:
        now = datetime.fromtimestamp(stamp, UTC)
        earliest, latest = now - MAX_SAMPLE_AGE, now + MAX_CLOCK_SKEW
        _window = (
            stamp,
            {
                UTC: (earliest, latest),
                _PARSED_UTC: (
                    earliest.replace(tzinfo=_PARSED_UTC),
                    latest.replace(tzinfo=_PARSED_UTC),
                ),
            },
        )
    return _window[1][tzinfo]


def _aware_recent(value: datetime) -> datetime:
    tzinfo = value.tzinfo
    if tzinfo is None:
        raise ValueError("timestamp needs a UTC offset, e.g. 2025-12-11T14:00:00Z")
    if tzinfo is not UTC and tzinfo is not _PARSED_UTC:
        value = representable_utc(value)  # another offset: the same instant in UTC
        tzinfo = UTC
    earliest, latest = _accepted_window(tzinfo)
    if value > latest:
        raise ValueError("timestamp is in the future; check the device clock")
    if value < earliest:
        raise ValueError(f"timestamp is older than {MAX_SAMPLE_AGE.days} days")
    return value


SampleTime = Annotated[datetime, AfterValidator(_aware_recent)]
Percent = Annotated[float, Field(ge=0, le=100)]
Count = Annotated[int, Field(ge=0, le=2_147_483_647)]


class Strict(BaseModel):
    """Unknown fields are refused, NaN and Infinity too: a typo must not pass silently."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def device_event_id(device_id: str, client_event_id: uuid.UUID) -> str:
    """A stored event id unique per device, so two devices' ids can never collide.

    ``uuid.uuid5(namespace, f"{device_id}/{client_event_id}").hex``, computed without the
    UUID objects (it runs for every sample a server takes): the SHA-1 digest's first 32 hex
    digits with the version digit set to 5 and the RFC 4122 variant in the 17th.
    """
    digest = _sha1(_DEVICE_EVENT_NAMESPACE_BYTES + f"{device_id}/{client_event_id}".encode())
    hexed = digest.hexdigest()
    return hexed[:12] + "5" + hexed[13:16] + _RFC4122_VARIANT[hexed[16]] + hexed[17:32]


_sha1 = hashlib.sha1
# A hex digit with its two high bits set to 10 (the RFC 4122 variant), as a hex digit.
_RFC4122_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


class RegisterRequest(Strict):
    site_id: str = Field(min_length=1, max_length=64)
    device_id: str = Field(min_length=2, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]{1,63}$")
    bootstrap_key: str = Field(min_length=16, max_length=200)
    current_api_key: str | None = Field(
        default=None,
        max_length=200,
        description="The device's current API key, when it re-registers an id that already "
        "has a working key: a site's bootstrap key alone never replaces a device's key",
    )
    name: str | None = Field(default=None, max_length=200)
    device_type: str = Field(default="pos_terminal", max_length=64, pattern=r"^[a-z0-9_]+$")
    firmware_version: str | None = Field(default=None, max_length=64)
    agent_version: str | None = Field(default=None, max_length=64)
    simulated: bool = Field(
        default=False,
        description="True for a terminal of the simulation (homepot simulate, the demo): "
        "everything it reports is stored with source 'simulated', never taken for real data",
    )


class MqttInfo(BaseModel):
    """Where the device reaches the broker. It logs in as its device id, with the password
    :func:`homepot.protocol.mqtt.broker_password` derives from its key."""

    host: str
    port: int
    topic_prefix: str
    tls: bool = False


class RegisterResponse(BaseModel):
    device_id: str
    site_id: str
    api_key: str = Field(description="The device's own key; shown once, stored only hashed")
    heartbeat_interval_seconds: float
    telemetry_interval_seconds: float
    mqtt: MqttInfo | None = None


class HealthStatus(StrEnum):
    ok = "ok"
    degraded = "degraded"
    error = "error"


class DeviceScoped(Strict):
    # Optional: when given, it must be the credential's own device (else 403).
    device_id: str | None = Field(default=None, max_length=64)


# Every device message that is stored as one row carries an id of its own, set once by the
# device, so that a message delivered twice (MQTT QoS 1 redelivers what was not acknowledged,
# e.g. after the server was killed; an HTTP client resends when the answer was lost) is
# stored once. Absent (an older client): a new one, and a resent message is stored again.
MESSAGE_ID_DESCRIPTION = (
    "Client-generated, unique per message; a message sent again is stored once. A UUID "
    "version 7 (the default) also says when the message was made, which keeps the cost of "
    "recognising it again low; any other UUID works"
)


class Heartbeat(DeviceScoped):
    message_id: uuid.UUID = Field(default_factory=uuid7, description=MESSAGE_ID_DESCRIPTION)
    status: HealthStatus | None = Field(
        default=None, description="The device's own view of its health (default ok)"
    )
    firmware_version: str | None = Field(default=None, max_length=64)
    config_version: str | None = Field(default=None, max_length=64)
    uptime_seconds: float | None = Field(default=None, ge=0)
    response_time_ms: float | None = Field(default=None, ge=0)


class MetricSample(Strict):
    event_id: uuid.UUID = Field(description="Client-generated; a resent sample is stored once")
    timestamp: SampleTime
    collection_interval_seconds: float = Field(gt=0, le=86_400)
    cpu_percent: Percent | None = None
    memory_percent: Percent | None = None
    disk_percent: Percent | None = None
    network_latency_ms: float | None = Field(default=None, ge=0, le=600_000)
    transaction_count: Count | None = None
    transaction_volume: float | None = Field(default=None, ge=0)
    error_rate: Percent | None = None
    active_connections: Count | None = None
    queue_depth: Count | None = None
    extra_metrics: ExtraJson | None = None


class TelemetryBatch(DeviceScoped):
    samples: list[MetricSample] = Field(min_length=1, max_length=MAX_SAMPLES_PER_BATCH)


class TelemetryAccepted(BaseModel):
    accepted: int


class JobCommand(BaseModel):
    """What a device is asked to do: one execution of a job on this device."""

    execution_id: int
    job_id: str
    job_type: str
    payload: dict[str, Any]
    timeout_seconds: int
    attempt: int
    issued_at: datetime


class JobAck(DeviceScoped):
    execution_id: int


class JobResultStatus(StrEnum):
    success = "success"
    failed = "failed"


class JobResult(DeviceScoped):
    execution_id: int
    status: JobResultStatus
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = Field(default=None, max_length=2000)
    output: JsonObject | None = None
    started_at: UtcDatetime | None = None
    finished_at: UtcDatetime | None = None

    @model_validator(mode="after")
    def _failure_has_a_code(self) -> Self:
        if self.status is JobResultStatus.failed and not self.error_code:
            raise ValueError("a failed result needs an error_code")
        return self


class ErrorCategory(StrEnum):
    api = "api"
    database = "database"
    external_service = "external_service"
    validation = "validation"


class ErrorSeverity(StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"


class DeviceErrorReport(DeviceScoped):
    """An error the device saw itself (e.g. its payment gateway timing out), for ``error_logs``."""

    message_id: uuid.UUID = Field(default_factory=uuid7, description=MESSAGE_ID_DESCRIPTION)

    category: ErrorCategory = ErrorCategory.external_service
    severity: ErrorSeverity
    error_code: str = Field(min_length=1, max_length=64, pattern=r"^[A-Z][A-Z0-9_]*$")
    message: str = Field(min_length=1, max_length=2000)
    stack: str | None = Field(default=None, max_length=20_000)
    occurred_at: SampleTime | None = None
    context: ExtraJson | None = None


class DeviceErrorAccepted(BaseModel):
    event_id: str | None = Field(description="The error_logs event id; null when recording is off")


class DeviceReport(DeviceScoped):
    """A terminal's whole report in one message (``POST /api/v1/agent/report``): its
    heartbeat, the samples it has queued, the errors it saw; answered with its jobs."""

    report_id: uuid.UUID = Field(
        description="Client-generated, new for every report and kept when the same report "
        "is sent again: a resent report stores its heartbeat, samples and errors once"
    )
    heartbeat: Heartbeat | None = Field(
        default=None, description="Omitted: the report only delivers queued samples or errors"
    )
    samples: list[MetricSample] = Field(default_factory=list, max_length=MAX_SAMPLES_PER_BATCH)
    errors: list[DeviceErrorReport] = Field(default_factory=list, max_length=MAX_ERRORS_PER_REPORT)
    jobs_limit: int = Field(
        default=10,
        ge=0,
        le=MAX_JOBS_PER_POLL,
        description="At most this many waiting jobs in the answer (0: do not look for jobs)",
    )


def report_error_event_id(device_id: str, report_id: uuid.UUID, position: int) -> str:
    """The stored event id of the ``position``-th error of a report: the same on a resend."""
    return device_event_id(device_id, uuid.uuid5(report_id, f"error/{position}"))


class DeviceReportAccepted(BaseModel):
    device_id: str
    status: str = Field(description="The device's state on the server after this report")
    duplicate: bool = Field(
        description="True when this report id was the device's previous report: a resend, "
        "whose heartbeat was not stored again"
    )
    samples_accepted: int
    error_event_ids: list[str | None] = Field(
        description="The error_logs event ids of the report's errors, in order (null when "
        "recording is off)"
    )
    jobs: list[JobCommand] = Field(description="Jobs waiting for this device, oldest first")


class topics:  # noqa: N801 - a namespace of topic builders, read as topics.jobs(...)
    PREFIX = "homepot/v1/devices"

    @staticmethod
    def jobs(device_id: str) -> str:
        return f"{topics.PREFIX}/{device_id}/jobs"

    @staticmethod
    def job_ack(device_id: str) -> str:
        return f"{topics.PREFIX}/{device_id}/jobs/ack"

    @staticmethod
    def job_result(device_id: str) -> str:
        return f"{topics.PREFIX}/{device_id}/jobs/result"

    @staticmethod
    def telemetry(device_id: str) -> str:
        return f"{topics.PREFIX}/{device_id}/telemetry"

    @staticmethod
    def heartbeat(device_id: str) -> str:
        return f"{topics.PREFIX}/{device_id}/heartbeat"

    @staticmethod
    def errors(device_id: str) -> str:
        return f"{topics.PREFIX}/{device_id}/errors"

    # What the server subscribes to: every device's uplink messages.
    UPLINK = (
        f"{PREFIX}/+/jobs/ack",
        f"{PREFIX}/+/jobs/result",
        f"{PREFIX}/+/telemetry",
        f"{PREFIX}/+/heartbeat",
        f"{PREFIX}/+/errors",
    )
