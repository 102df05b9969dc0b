from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError

from homepot.audit.service import Actor
from homepot.auth.deps import CurrentUser, OperatorUser
from homepot.config import API_PREFIX
from homepot.db import SessionDep
from homepot.device import service
from homepot.device.models import Device, DeviceStatus
from homepot.device.schemas import DeviceCreate, DeviceRead, DeviceUpdate
from homepot.kit.page import Page, PageQuery
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
