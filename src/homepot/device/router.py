from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError

from homepot.analytics.schemas import ConfigurationHistoryRead, DeviceStateHistoryRead
from homepot.audit.service import Actor
from homepot.auth.deps import CurrentUser, OperatorUser
from homepot.config import API_PREFIX
from homepot.db import SessionDep
from homepot.device import history, service
from homepot.device.models import Device
from homepot.device.schemas import (
    DeviceCreate,
    DeviceListQuery,
    DeviceMetricSeries,
    DeviceRead,
    DeviceUpdate,
    HistoryQuery,
    MetricsQuery,
)
from homepot.kit.pagination import CursorPage, Page, Position, decode_cursor
from homepot.kit.routing import api_router
from homepot.site.service import SiteNotFound

router = api_router(prefix=API_PREFIX, tags=["devices"])


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
    params: Annotated[DeviceListQuery, Query()],
) -> Page[DeviceRead]:
    items, total = await service.list_devices(
        session,
        params.page,
        site_id=params.site_id,
        status=params.status,
        device_type=params.device_type,
        q=params.q,
    )
    return Page[DeviceRead].of(items, total, params.page)


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


def _history_cursor(params: HistoryQuery) -> Position | None:
    if params.cursor is None:
        return None
    try:
        return decode_cursor(params.cursor)
    except ValueError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "cursor"),
                    "msg": str(exc),
                    "input": params.cursor,
                }
            ]
        ) from exc


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
    params: Annotated[MetricsQuery, Query()],
) -> DeviceMetricSeries:
    try:
        buckets = history.chart_buckets(params.since, params.until, params.limit)
    except history.InvalidTimeSpan as exc:
        raise RequestValidationError(
            [{"type": "time_span", "loc": ("query", "since"), "msg": str(exc), "input": None}]
        ) from exc
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
    params: Annotated[HistoryQuery, Query()],
) -> CursorPage[DeviceStateHistoryRead]:
    return await history.state_history(
        session, device.device_id, params.limit, _history_cursor(params)
    )


@router.get(
    "/devices/{device_id}/config-history",
    response_model=CursorPage[ConfigurationHistoryRead],
    summary="Changes to a device's configuration, newest first",
)
async def read_device_config_history(
    _user: CurrentUser,
    device: DeviceFromPath,
    session: SessionDep,
    params: Annotated[HistoryQuery, Query()],
) -> CursorPage[ConfigurationHistoryRead]:
    return await history.config_history(
        session, device.device_id, params.limit, _history_cursor(params)
    )
