"""The device protocol over HTTP: registration, heartbeats, telemetry, errors, and all three
in one report that answers with the device's jobs.

Registration is authenticated with the site's bootstrap key; everything else with the
device's own API key (``Authorization: Bearer hpd_...``). A body naming another device than
the key's is refused with 403.
"""

from __future__ import annotations

from fastapi import HTTPException, Request, status
from pydantic import BaseModel, Field

from homepot.auth.throttle import client_address, limit_ingest, rate_limits, too_many
from homepot.config import API_PREFIX
from homepot.db import SessionDep
from homepot.device.models import DeviceStatus
from homepot.fleet import service
from homepot.fleet.auth import CurrentDevice, CurrentReportingDevice, ensure_own_device
from homepot.kit.routing import api_router
from homepot.protocol.messages import (
    DeviceErrorAccepted,
    DeviceErrorReport,
    DeviceReport,
    DeviceReportAccepted,
    Heartbeat,
    RegisterRequest,
    RegisterResponse,
    TelemetryAccepted,
    TelemetryBatch,
)

router = api_router(prefix=f"{API_PREFIX}/agent", tags=["agent"])


class HeartbeatAccepted(BaseModel):
    device_id: str
    status: DeviceStatus = Field(
        description="The device's state on the server after this heartbeat"
    )


@router.post(
    "/register",
    response_model=RegisterResponse,
    summary="Register a terminal with its site's bootstrap key; returns its own API key once",
    description="A device id that is already registered is re-keyed only with its current "
    "key (`current_api_key`) or a bootstrap key an admin issued to re-register devices. "
    "Failed registrations are counted per client address "
    "(`HOMEPOT_RATE_LIMITS__REGISTRATION_FAILURES_PER_MINUTE`); beyond that, 429.",
    responses={
        401: {
            "description": "The site id and bootstrap key are not a valid, current pair (one "
            "answer for an unknown site, a wrong key and an expired key)"
        },
        409: {
            "description": "The device id is registered; its current key or an admin's "
            "approval is needed"
        },
        429: {"description": "Too many failed registrations from this address"},
    },
)
async def register(
    body: RegisterRequest, request: Request, session: SessionDep
) -> RegisterResponse:
    limits = rate_limits(request)
    address = client_address(request)
    if limits is not None and (wait := limits.registration_by_address.retry_after(address)):
        raise too_many(wait, "too many failed registrations from this address")
    try:
        return await service.register_device(
            session, body, settings=request.app.state.settings, ip_address=request.state.client_ip
        )
    except service.RegistrationRefused as exc:
        if limits is not None:
            limits.registration_by_address.hit(address)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, str(exc), {"WWW-Authenticate": "Bearer"}
        ) from exc
    except service.DeviceKeyRequired as exc:
        if limits is not None:
            limits.registration_by_address.hit(address)
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except service.RegistrationConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@router.post(
    "/heartbeat",
    response_model=HeartbeatAccepted,
    summary="A device's heartbeat: stored as a health check, it drives the device's state",
)
async def heartbeat(
    device: CurrentDevice, body: Heartbeat, request: Request, session: SessionDep
) -> HeartbeatAccepted:
    ensure_own_device(device, body.device_id)
    await service.record_heartbeat(
        session, request.app.state.recorder, device, body, ip_address=request.state.client_ip
    )
    return HeartbeatAccepted(device_id=device.device_id, status=device.status)


@router.post(
    "/telemetry",
    response_model=TelemetryAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    summary="A batch of metric samples (at most 500); a resent sample is stored once",
    responses={503: {"description": "The server is busy; send the same batch again later"}},
)
async def telemetry(
    device: CurrentDevice, body: TelemetryBatch, request: Request, session: SessionDep
) -> TelemetryAccepted:
    ensure_own_device(device, body.device_id)
    try:
        accepted = service.ingest_telemetry(request.app.state.recorder, device, body)
    except service.TelemetryNotQueued as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), {"Retry-After": "5"}
        ) from exc
    # The device's last_seen_at: written now on PostgreSQL, by the session's commit otherwise.
    await service.write_reported_columns(session, device)
    return TelemetryAccepted(accepted=accepted)


@router.post(
    "/errors",
    response_model=DeviceErrorAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    summary="An error the device saw itself (e.g. a payment gateway timeout), for error_logs",
    responses={
        429: {"description": "Too many reports from this device; send again after Retry-After"},
        503: {"description": "The server is busy; send the same report again later"},
    },
)
async def report_error(
    device: CurrentDevice, body: DeviceErrorReport, request: Request, session: SessionDep
) -> DeviceErrorAccepted:
    ensure_own_device(device, body.device_id)
    limit_ingest(request, f"device:{device.device_id}")
    try:
        event_id = await service.record_device_error(
            session, request.app.state.recorder, device, body
        )
    except service.ErrorReportNotQueued as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), {"Retry-After": "5"}
        ) from exc
    return DeviceErrorAccepted(event_id=event_id)


@router.post(
    "/report",
    response_model=DeviceReportAccepted,
    summary="A terminal's whole report in one request: heartbeat, samples (at most 500) and "
    "errors (at most 20); answered with the jobs waiting for it",
    description="The same rules as `/heartbeat`, `/telemetry` and `/errors`, in one transaction."
    " A resent report (the same `report_id`) stores nothing twice. `jobs_limit` (default 10, "
    "0 for none) bounds the jobs in the answer, as `GET /jobs` would hand them out.",
    responses={
        429: {"description": "Too many error reports from this device; send again later"},
        503: {"description": "The server is busy; send the same report again later"},
    },
)
async def report(
    reporting: CurrentReportingDevice, body: DeviceReport, request: Request, session: SessionDep
) -> DeviceReportAccepted:
    device = reporting.device
    ensure_own_device(device, body.device_id)
    if body.heartbeat is not None:
        ensure_own_device(device, body.heartbeat.device_id)
    for sent in body.errors:
        ensure_own_device(device, sent.device_id)
    if body.errors:
        limit_ingest(request, f"device:{device.device_id}")
    try:
        stored = await service.record_report(
            session,
            request.app.state.recorder,
            device,
            body,
            ack_timeout_seconds=request.app.state.settings.fleet.ack_timeout_seconds,
            ip_address=request.state.client_ip,
            jobs_waiting=reporting.jobs_waiting,
        )
    except (service.TelemetryNotQueued, service.ErrorReportNotQueued) as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), {"Retry-After": "5"}
        ) from exc
    return DeviceReportAccepted(
        device_id=device.device_id,
        status=device.status.value,
        duplicate=stored.duplicate,
        samples_accepted=stored.samples_accepted,
        error_event_ids=stored.error_event_ids,
        jobs=stored.jobs,
    )
