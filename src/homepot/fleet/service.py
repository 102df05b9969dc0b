"""The device protocol's server side, independent of the transport.

HTTP (:mod:`homepot.fleet.router`) and the MQTT bridge call the same three functions with a
session, the recorder and the authenticated device. The caller owns the transaction (these
functions flush, never commit) and has already checked that a message naming a device names
the credential's own device (:func:`homepot.fleet.auth.ensure_own_device`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field
from sqlalchemy import Table, bindparam, inspect, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from homepot.analytics.error_logger import record_error
from homepot.analytics.models import DeviceMetrics
from homepot.analytics.recorder import Recorder
from homepot.audit.service import Actor, write_audit_log
from homepot.config import FleetSettings, Settings
from homepot.db import utcnow
from homepot.dbdriver import DriverStatement
from homepot.device.models import Device, DeviceStatus, HealthCheck
from homepot.device.states import SYSTEM, describe_duration, transition
from homepot.fleet.auth import bootstrap_key_matches, device_key_matches
from homepot.fleet.device_keys import device_credentials_changed
from homepot.fleet.receipts import FirstDeliveryInsert, filing_time, first_delivery
from homepot.job import executions
from homepot.kit.keycache import device_key_changed
from homepot.kit.keys import hash_key, new_device_key
from homepot.protocol.messages import (
    DeviceErrorReport,
    DeviceReport,
    Heartbeat,
    JobCommand,
    MetricSample,
    MqttInfo,
    RegisterRequest,
    RegisterResponse,
    TelemetryBatch,
    device_event_id,
    report_error_event_id,
    topics,
)
from homepot.site.models import Site

# What a heartbeat says when it says nothing, and the report that clears an error state.
HEALTHY = "ok"
FAILING = "error"
# States someone else ends (an operator, a job): heartbeats do not move a device out of them.
_HELD_STATES = (DeviceStatus.maintenance, DeviceStatus.updating)
_METRIC_FIELDS = (
    "cpu_percent",
    "memory_percent",
    "disk_percent",
    "network_latency_ms",
    "transaction_count",
    "transaction_volume",
    "error_rate",
    "active_connections",
    "queue_depth",
    "extra_metrics",
    "collection_interval_seconds",
)
_STORABLE_METRIC_FIELDS = frozenset(_METRIC_FIELDS) - {"extra_metrics"} | {"timestamp", "event_id"}


class RegistrationRefused(Exception):
    """The site id and bootstrap key are not a valid, current pair.

    One answer for an unknown site, a site without a key, a wrong key and an expired key, so
    that an unauthenticated caller learns nothing about which sites exist; the message says
    what a legitimate installer does next.
    """

    def __init__(self, site_id: str, ttl_hours: float) -> None:
        super().__init__(
            "registration refused: the site id and bootstrap key do not form a valid, current"
            " pair. Check the site id for typos and ask an operator for a fresh bootstrap key"
            f" (POST /api/v1/sites/{site_id}/bootstrap-key); keys stop working"
            f" {ttl_hours:g} h after they are issued, and when a newer one is issued"
        )


class DeviceKeyRequired(Exception):
    """The device id is registered with a working key, and no proof of it came along."""

    def __init__(self, device_id: str) -> None:
        super().__init__(
            f"device {device_id!r} is already registered: a site's bootstrap key alone does not"
            " replace its key. Send the device's current key as current_api_key, or ask an"
            f" admin to issue one (POST /api/v1/devices/{device_id}/key) or a bootstrap key"
            " that re-registers existing devices"
        )


class TelemetryNotQueued(Exception):
    """The recorder's queue is full: the samples were not taken and should be sent again."""

    def __init__(self, refused: int, total: int) -> None:
        super().__init__(
            f"the server is busy: {refused} of {total} samples could not be queued; send the"
            " batch again shortly (samples already stored are not stored twice)"
        )


class ErrorReportNotQueued(Exception):
    """The recorder's queue is full: the report was not taken and should be sent again."""

    def __init__(self) -> None:
        super().__init__("the server is busy: the error report could not be queued; send it again")


class RegistrationConflict(Exception):
    def __init__(self, device_id: str) -> None:
        super().__init__(
            f"device {device_id!r} was registered by a concurrent request; register again"
        )


def mqtt_info(settings: Settings) -> MqttInfo | None:
    """Where devices reach the broker, from ``fleet.mqtt_url``; None without a broker."""
    if not settings.fleet.mqtt_url:
        return None
    url = urlsplit(settings.fleet.mqtt_url)
    default_port = 8883 if url.scheme in ("mqtts", "ssl", "tls") else 1883
    return MqttInfo(
        host=url.hostname or "127.0.0.1",
        port=url.port or default_port,
        topic_prefix=topics.PREFIX,
        tls=url.scheme in ("mqtts", "ssl", "tls"),
    )


async def register_device(
    session: AsyncSession,
    data: RegisterRequest,
    *,
    settings: Settings,
    ip_address: str | None = None,
) -> RegisterResponse:
    """Create the device in its site, or give an existing device of that site a new key.

    The new API key is returned once and only its hash is stored; the previous key stops
    working. A device id that already exists is re-keyed only with proof: its current key
    (``current_api_key``), or a bootstrap key an admin issued to re-register existing devices;
    a device created by an operator and never registered takes its first key from the site
    key alone, a revoked one does not. Raises RegistrationRefused (unknown site, no key, wrong
    or expired key), DeviceKeyRequired and RegistrationConflict.
    """
    # The caller's own site id echoed back: it tells them nothing they did not send.
    refused = RegistrationRefused(data.site_id, settings.fleet.bootstrap_key_ttl_hours)
    site = await session.get(Site, data.site_id)
    if site is None or not bootstrap_key_matches(site, data.bootstrap_key):
        raise refused
    # A key without an expiry (none is issued so) is treated as expired: fail closed.
    if site.bootstrap_key_expires_at is None or site.bootstrap_key_expires_at <= utcnow():
        raise refused
    api_key = new_device_key()
    device = await session.get(Device, data.device_id)
    details: dict[str, Any] = {"site_id": site.site_id}
    if device is None:
        device = Device(
            device_id=data.device_id,
            site_id=site.site_id,
            name=data.name or data.device_id,
            device_type=data.device_type,
            # Online at its first heartbeat.
            status=DeviceStatus.offline,
            config={},
            firmware_version=data.firmware_version,
            agent_version=data.agent_version,
            ip_address=ip_address,
            simulated=data.simulated,
        )
        session.add(device)
        action = "device.register"
        authenticated_by: str | None = "site bootstrap key"
        details |= data.model_dump(include={"name", "device_type", "firmware_version", "simulated"})
        details["agent_version"] = data.agent_version
    else:
        authenticated_by = _proof_of_ownership(device, site, data)
        if authenticated_by is None:
            raise DeviceKeyRequired(device.device_id)
        action = "device.rekey"
        for name in ("name", "device_type", "firmware_version", "agent_version", "simulated"):
            value = getattr(data, name)
            if name in data.model_fields_set and value is not None:
                if getattr(device, name) != value:
                    details[name] = {"old": getattr(device, name), "new": value}
                setattr(device, name, value)
        if ip_address is not None:
            device.ip_address = ip_address
    device.api_key_hash = hash_key(api_key)
    device.key_revoked_at = None
    write_audit_log(
        session,
        Actor(user_id=SYSTEM, ip_address=ip_address),
        action=action,
        resource_type="device",
        resource_id=device.device_id,
        details=details | {"authenticated_by": authenticated_by},
    )
    try:
        await session.flush()
    except IntegrityError as exc:  # the same new device registered twice at once
        raise RegistrationConflict(data.device_id) from exc
    device_key_changed(session, device.device_id)
    # The old key stops working over MQTT too: cached verifiers and the broker account.
    await device_credentials_changed(settings.fleet, device.device_id, device.api_key_hash)
    return RegisterResponse(
        device_id=device.device_id,
        site_id=site.site_id,
        api_key=api_key,
        heartbeat_interval_seconds=settings.fleet.heartbeat_interval_seconds,
        telemetry_interval_seconds=settings.fleet.telemetry_interval_seconds,
        mqtt=mqtt_info(settings),
    )


def _proof_of_ownership(device: Device, site: Site, data: RegisterRequest) -> str | None:
    """How a re-registration of an existing device is authorised; None when it is not."""
    if device.site_id != site.site_id:
        # A site key never reaches devices of another site; moving one is an operator's
        # PATCH /api/v1/devices/{device_id}.
        return None
    if data.current_api_key is not None and device_key_matches(device, data.current_api_key):
        return "the device's current key"
    if site.bootstrap_key_replaces_devices:
        return "a bootstrap key an admin issued to re-register devices"
    if device.api_key_hash is None and device.key_revoked_at is None:
        return "site bootstrap key (the device had no key yet)"
    return None


class DeviceKeyIssued(BaseModel):
    device_id: str
    api_key: str = Field(
        description="The device's new key; shown once, stored only hashed. The previous key "
        "stops working at once"
    )


async def issue_device_key(
    session: AsyncSession, actor: Actor, device: Device, *, fleet: FleetSettings
) -> DeviceKeyIssued:
    """Replace the device's key with a new one (an admin's rotation); returns it once."""
    api_key = new_device_key()
    had_key = device.api_key_hash is not None
    device.api_key_hash = hash_key(api_key)
    device.key_revoked_at = None
    write_audit_log(
        session,
        actor,
        action="device.key.rotate",
        resource_type="device",
        resource_id=device.device_id,
        details={"replaced_previous_key": had_key},
    )
    await session.flush()
    device_key_changed(session, device.device_id)
    await device_credentials_changed(fleet, device.device_id, device.api_key_hash)
    return DeviceKeyIssued(device_id=device.device_id, api_key=api_key)


async def revoke_device_key(
    session: AsyncSession, actor: Actor, device: Device, *, fleet: FleetSettings
) -> None:
    """The device's key stops working at once, on HTTP and MQTT; it can re-register only with
    an admin's approval (a new key from POST .../key, or an admin-issued bootstrap key)."""
    device.api_key_hash = None
    device.key_revoked_at = utcnow()
    write_audit_log(
        session,
        actor,
        action="device.key.revoke",
        resource_type="device",
        resource_id=device.device_id,
    )
    await session.flush()
    device_key_changed(session, device.device_id)
    await device_credentials_changed(fleet, device.device_id, None)


# Built once: building the INSERT for every heartbeat cost more CPU than sending it. Stored
# only on the message's first delivery (its receipt, fleet.receipts; one statement with the
# receipt on PostgreSQL). Of the table, not the mapped class: the same statement and row,
# without the ORM's bulk-insert machinery around one row (it was a tenth of a report's CPU).
_HEALTH_CHECKS = HealthCheck.__table__
assert isinstance(_HEALTH_CHECKS, Table)
_HEARTBEAT_INSERT = FirstDeliveryInsert(
    _HEALTH_CHECKS,
    ("device_id", "timestamp", "status", "response_time_ms", "details", "event_id"),
)


async def record_heartbeat(
    session: AsyncSession,
    recorder: Recorder,
    device: Device,
    heartbeat: Heartbeat,
    *,
    ip_address: str | None = None,
    now: datetime | None = None,
    flush: bool = True,
) -> None:
    """Store a heartbeat as a ``health_checks`` row and let it drive the device's state.

    offline → online (or error, when the device reports ``error``); online → error on
    ``error``; error → online on ``ok``. Maintenance and updating are left to whoever set
    them. Updates ``last_seen_at`` and, when reported, the firmware version.
    """
    now = now or utcnow()
    reported = (heartbeat.status or HEALTHY).strip().lower() or HEALTHY
    details = {
        "uptime_seconds": heartbeat.uptime_seconds,
        "firmware_version": heartbeat.firmware_version,
        "config_version": heartbeat.config_version,
    }
    event_id = device_event_id(device.device_id, heartbeat.message_id)
    first = await _HEARTBEAT_INSERT.execute(
        session,
        {
            "device_id": device.device_id,
            "timestamp": now,
            "status": reported,
            "response_time_ms": heartbeat.response_time_ms,
            "details": {k: v for k, v in details.items() if v is not None} or None,
            "event_id": event_id,
        },
        now=now,
        filed_at=filing_time(heartbeat.message_id, now),
    )
    if not first:
        return  # delivered before (MQTT redelivery, an HTTP resend): already applied
    last_seen = device.last_seen_at
    device.last_seen_at = now
    if heartbeat.firmware_version is not None:
        device.firmware_version = heartbeat.firmware_version
    if ip_address is not None:
        device.ip_address = ip_address
    await _follow_heartbeat(session, recorder, device, reported, last_seen, now)
    if flush:
        # The device row on the driver's connection when only its heartbeat columns changed
        # (PostgreSQL); the flush then writes whatever else is pending (a state change).
        await write_reported_columns(session, device)
        await session.flush()


async def _follow_heartbeat(
    session: AsyncSession,
    recorder: Recorder,
    device: Device,
    reported: str,
    last_seen: datetime | None,
    now: datetime,
) -> None:
    if device.status in _HELD_STATES:
        return
    extra: dict[str, Any] = {"source": "heartbeat", "reported_status": reported}
    if last_seen is not None:
        extra["last_seen_at"] = last_seen.isoformat()
    if device.status == DeviceStatus.offline:
        heard = (
            f"heartbeat received after {describe_duration((now - last_seen).total_seconds())}"
            " of silence"
            if last_seen is not None
            else "first heartbeat since registration"
        )
        if reported == FAILING:
            target, reason = DeviceStatus.error, f"{heard}; the device reports status error"
        else:
            target, reason = DeviceStatus.online, heard
    elif reported == FAILING:
        target, reason = DeviceStatus.error, "the device reported status error in its heartbeat"
    elif device.status == DeviceStatus.error and reported == HEALTHY:
        target, reason = DeviceStatus.online, "the device reported ok again after an error"
    else:
        return
    await transition(
        session, recorder, device, target, changed_by=SYSTEM, reason=reason, extra_data=extra
    )


def ingest_telemetry(
    recorder: Recorder, device: Device, batch: TelemetryBatch, *, now: datetime | None = None
) -> int:
    """Queue every sample for ``device_metrics``; returns how many were accepted.

    Each sample's stored event id is derived from the device and the client's event id, so
    a resent batch is stored once. The recorder redacts ``extra_metrics``. Sets the device's
    ``last_seen_at``; the caller's session saves it. Raises TelemetryNotQueued when the
    recorder's queue is full, so that the device keeps the batch and sends it again.
    """
    return ingest_samples(recorder, device, batch.samples, now=now)


def ingest_samples(
    recorder: Recorder,
    device: Device,
    samples: list[MetricSample],
    *,
    now: datetime | None = None,
) -> int:
    """:func:`ingest_telemetry` for samples that came in another message (a report)."""
    device_id, source = device.device_id, device.source
    rows = []
    for sample in samples:
        values = sample.__dict__  # the validated fields, without model_dump's copy
        row = {name: values[name] for name in _METRIC_FIELDS}
        row["event_id"] = device_event_id(device_id, sample.event_id)
        row["timestamp"] = sample.timestamp
        row["device_id"] = device_id
        row["source"] = source
        rows.append(row)
    # The numbers and the timestamp were validated by MetricSample (finite, in range, UTC):
    # only the identifiers and extra_metrics (redacted) are looked at again.
    queued = recorder.record_many(DeviceMetrics, rows, storable=_STORABLE_METRIC_FIELDS)
    device.last_seen_at = now or utcnow()
    if recorder.enabled and queued < len(samples):
        raise TelemetryNotQueued(len(samples) - queued, len(samples))
    return len(samples)


async def record_device_error(
    session: AsyncSession,
    recorder: Recorder,
    device: Device,
    report: DeviceErrorReport,
    *,
    event_id: str | None = None,
) -> str | None:
    """Queue a device's own error report for ``error_logs`` when ``session`` commits;
    returns its event id.

    The device id is the credential's; ``occurred_at`` (the device's clock) becomes the
    row's timestamp, now when absent. The context says the device reported it and names its
    site; the recorder redacts secrets in the context and the free text. A report delivered
    again is stored once: its receipt is taken in the session's transaction, and the row is
    queued only when that commits (homepot.fleet.receipts). Returns None when analytics
    recording is off; raises ErrorReportNotQueued when the recorder's queue is full.
    """
    if not recorder.enabled:
        return None
    if recorder.queued >= recorder.settings.queue_max_events:
        raise ErrorReportNotQueued()
    event_id = event_id or device_event_id(device.device_id, report.message_id)
    if not await first_delivery(
        session, event_id, filed_at=filing_time(report.message_id, utcnow())
    ):
        return event_id  # delivered before: stored once, under this id
    context: dict[str, Any] = {"source": "device", "site_id": device.site_id}
    context |= report.context or {}
    stored_id = record_error(
        category=report.category.value,
        severity=report.severity.value,
        error_code=report.error_code,
        error_message=report.message,
        device_id=device.device_id,
        context=context,
        recorder=recorder,
        timestamp=report.occurred_at,
        stack_trace=report.stack,
        source=device.source,
        event_id=event_id,
        after_commit_of=session,
    )
    if stored_id is None and recorder.enabled:
        raise ErrorReportNotQueued()
    return stored_id


@dataclass(frozen=True)
class ReportStored:
    duplicate: bool
    samples_accepted: int
    error_event_ids: list[str | None]
    jobs: list[JobCommand]


async def record_report(
    session: AsyncSession,
    recorder: Recorder,
    device: Device,
    report: DeviceReport,
    *,
    ack_timeout_seconds: float,
    ip_address: str | None = None,
    jobs_waiting: bool = True,
) -> ReportStored:
    """Store a combined report (heartbeat, samples, errors) and find the device's jobs.

    The same rules as the three separate messages (:func:`record_heartbeat`,
    :func:`ingest_telemetry`, :func:`record_device_error`). A resent report (the device's
    previous report id) does not store its heartbeat again; its samples and errors carry
    event ids derived from the device and the report, so they are stored once either way.
    Raises TelemetryNotQueued or ErrorReportNotQueued when the recorder's queue is full: the
    caller rolls back, and the device sends the same report again. ``jobs_waiting`` False
    (the caller looked, in this transaction, and a poll would find nothing) skips the poll.
    """
    report_id = str(report.report_id)
    duplicate = device.last_report_id == report_id
    if report.heartbeat is not None and not duplicate:
        # Not flushed here: the device row is written once, with everything this report
        # changes, by the job query's autoflush or the commit.
        await record_heartbeat(
            session, recorder, device, report.heartbeat, ip_address=ip_address, flush=False
        )
    accepted = 0
    if report.samples:
        accepted = ingest_samples(recorder, device, report.samples)
    else:
        device.last_seen_at = utcnow()
    error_event_ids = [
        await record_device_error(
            session,
            recorder,
            device,
            error,
            event_id=report_error_event_id(device.device_id, report.report_id, position),
        )
        for position, error in enumerate(report.errors)
    ]
    device.last_report_id = report_id
    await write_reported_columns(session, device)
    jobs = []
    if report.jobs_limit and jobs_waiting:
        jobs = await executions.poll_commands(
            session, device.device_id, report.jobs_limit, ack_timeout_seconds=ack_timeout_seconds
        )
    return ReportStored(duplicate, accepted, error_event_ids, jobs)


# The device columns a report (or a heartbeat, or a telemetry batch) changes when its
# device's state stays as it was. On PostgreSQL they are written by one UPDATE on the
# driver's connection (homepot.dbdriver), in the request's transaction: the ORM's flush of
# the same row cost twice the CPU.
_REPORTED_COLUMNS = frozenset({"last_seen_at", "last_report_id", "ip_address", "firmware_version"})
_DEVICE_UPDATES: dict[frozenset[str], DriverStatement] = {}


def _device_update(columns: frozenset[str]) -> DriverStatement:
    statement = _DEVICE_UPDATES.get(columns)
    if statement is None:
        devices = Device.__table__
        assert isinstance(devices, Table)
        values = {
            name: bindparam(name, type_=devices.c[name].type)
            for name in sorted(columns | {"updated_at"})
        }
        statement = _DEVICE_UPDATES[columns] = DriverStatement(
            update(devices)
            .where(devices.c.device_id == bindparam("pk_device_id"))
            .values(values)
            .returning(devices.c.device_id)
        )
    return statement


async def write_reported_columns(session: AsyncSession, device: Device) -> None:
    """Write the device's changed columns now when they are only what a report, a heartbeat
    or a telemetry batch changes (:data:`_REPORTED_COLUMNS`) and the database is PostgreSQL; the
    object is then clean, as after a flush. Anything else (a state change, SQLite) is left
    to the ORM's flush."""
    state = inspect(device)
    changed = state.committed_state.keys()
    if (
        not changed
        or not changed <= _REPORTED_COLUMNS
        or not state.persistent
        or state.session is not session.sync_session
        or session.get_bind().dialect.name != "postgresql"
    ):
        return
    values = {name: state.dict[name] for name in changed}
    values["updated_at"] = state.dict["updated_at"] = utcnow()
    written = await _device_update(frozenset(changed)).fetchval(
        session, {**values, "pk_device_id": device.device_id}
    )
    if written is None:
        # What the ORM's flush says of a row that went away under it.
        raise StaleDataError(f"device {device.device_id} was deleted while it reported")
    state._commit_all(state.dict, session.sync_session.identity_map)
