from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError

from homepot.analytics.schemas import ConfigurationHistoryRead, DeviceStateHistoryRead
from homepot.audit.service import Actor
from homepot.auth.deps import CurrentUser, OperatorUser
from homepot.config import API_PREFIX
from homepot.db import SessionDep
from homepot.device import history, service
from homepot.device.models import Device, DeviceStatus
from homepot.device.schemas import DeviceCreate, DeviceMetricSeries, DeviceRead, DeviceUpdate
from homepot.kit.pagination import CursorPage, Page, PageQuery, Position, decode_cursor
from homepot.site.service import SiteNotFound

router = APIRouter(prefix=API_PREFIX, tags=["devices"])


async def _device_from_path(
    device_id: Annotated[str, Path(description="The device's public id, e.g. pos-terminal-001")],
    session: SessionDep,
) -> Device:
    try:
        return await service.get_device(session, device_id)
    except service.DeviceNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


DeviceFromPath = Annotated[Device, Depends(_device_from_path)]


def _unknown_site(exc: SiteNotFound, site_id: str) -> RequestValidationError:
    # The body names a site that does not exist: a 422 on that field, like any invalid value.
    return RequestValidationError(
        [{"type": "not_found", "loc": ("body", "site_id"), "msg": str(exc), "input": site_id}]
    )


@router.post(
    "/devices",
    response_model=DeviceRead,
    status_code=status.HTTP_201_CREATED,
    summary="Register a device at an existing site (operator or admin)",
)
async def create_device(
    user: OperatorUser, body: DeviceCreate, request: Request, session: SessionDep
) -> Device:
    try:
        return await service.create_device(session, Actor.of(request, user), body)
    except SiteNotFound as exc:
        raise _unknown_site(exc, body.site_id) from exc
    except service.DeviceConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@router.get("/devices", response_model=Page[DeviceRead], summary="List devices, by device_id")
async def list_devices(
    _user: CurrentUser,
    session: SessionDep,
    page: PageQuery,
    site_id: Annotated[str | None, Query(description="Only devices of this site")] = None,
    device_status: Annotated[
        DeviceStatus | None, Query(alias="status", description="Only devices in this status")
    ] = None,
    device_type: Annotated[str | None, Query(description="Only devices of this type")] = None,
    q: Annotated[
        str | None,
        Query(max_length=200, description="Only devices whose device_id or name contains this"),
    ] = None,
) -> Page[DeviceRead]:
    items, total = await service.list_devices(
        session, page, site_id=site_id, status=device_status, device_type=device_type, q=q
    )
    return Page[DeviceRead].of(items, total, page)


@router.get("/devices/{device_id}", response_model=DeviceRead, summary="Read a device")
async def read_device(_user: CurrentUser, device: DeviceFromPath) -> Device:
    return device


@router.patch(
    "/devices/{device_id}",
    response_model=DeviceRead,
    summary="Change a device (operator or admin); status and config changes are recorded",
)
async def update_device(
    user: OperatorUser,
    device: DeviceFromPath,
    body: DeviceUpdate,
    request: Request,
    session: SessionDep,
) -> Device:
    try:
        return await service.update_device(
            session,
            request.app.state.recorder,
            Actor.of(request, user),
            device,
            body,
            settings=request.app.state.settings,
        )
    except SiteNotFound as exc:
        raise _unknown_site(exc, str(body.site_id)) from exc
    except service.DeviceConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@router.delete(
    "/devices/{device_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a device and its health checks (operator or admin)",
)
async def delete_device(
    user: OperatorUser, device: DeviceFromPath, request: Request, session: SessionDep
) -> None:
    await service.delete_device(session, Actor.of(request, user), device)


HistoryLimit = Annotated[int, Query(ge=1, le=500, description="Rows per page, newest first")]


def _history_cursor(
    cursor: Annotated[
        str | None, Query(max_length=200, description="The next_cursor of the previous page")
    ] = None,
) -> Position | None:
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor)
    except ValueError as exc:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "cursor"), "msg": str(exc), "input": cursor}]
        ) from exc


HistoryCursor = Annotated[Position | None, Depends(_history_cursor)]


@router.get(
    "/devices/{device_id}/metrics",
    response_model=DeviceMetricSeries,
    summary="A device's metrics over time, averaged per time bucket (for charts)",
    responses={422: {"description": "since not before until, or a span over 31 days"}},
)
async def read_device_metrics(
    _user: CurrentUser,
    device: DeviceFromPath,
    session: SessionDep,
    since: Annotated[
        datetime | None, Query(description="Start (ISO 8601; default six hours before until)")
    ] = None,
    until: Annotated[datetime | None, Query(description="End (ISO 8601; default now)")] = None,
    limit: Annotated[
        int, Query(ge=1, le=1000, description="At most this many points (time buckets)")
    ] = 120,
) -> DeviceMetricSeries:
    try:
        buckets = history.chart_buckets(since, until, limit)
    except history.InvalidTimeSpan as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    points = await history.bucketed_metrics(session, buckets, device.device_id)
    return DeviceMetricSeries(
        device_id=device.device_id,
        since=buckets.since,
        until=buckets.until,
        bucket_seconds=buckets.seconds,
        points=points,
    )


@router.get(
    "/devices/{device_id}/states",
    response_model=CursorPage[DeviceStateHistoryRead],
    summary="A device's state changes, newest first",
)
async def read_device_states(
    _user: CurrentUser,
    device: DeviceFromPath,
    session: SessionDep,
    cursor: HistoryCursor,
    limit: HistoryLimit = 50,
) -> CursorPage[DeviceStateHistoryRead]:
    return await history.state_history(session, device.device_id, limit, cursor)


@router.get(
    "/devices/{device_id}/config-history",
    response_model=CursorPage[ConfigurationHistoryRead],
    summary="Changes to a device's configuration, newest first",
)
async def read_device_config_history(
    _user: CurrentUser,
    device: DeviceFromPath,
    session: SessionDep,
    cursor: HistoryCursor,
    limit: HistoryLimit = 50,
) -> CursorPage[ConfigurationHistoryRead]:
    return await history.config_history(session, device.device_id, limit, cursor)
