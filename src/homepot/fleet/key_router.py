"""An admin's control over a device's API key: issue a new one, or revoke it.

Either way the old key stops working at once: HTTP requests look the key up on every call,
the MQTT bridge checks it per batch, and key caches are invalidated
(:mod:`homepot.kit.keycache`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Path, Request, status

from homepot.audit.service import Actor
from homepot.auth.deps import AdminUser
from homepot.config import API_PREFIX
from homepot.db import SessionDep
from homepot.device.models import Device
from homepot.fleet import service
from homepot.kit.routing import api_router

router = api_router(prefix=API_PREFIX, tags=["devices"])

DeviceId = Annotated[str, Path(description="The device's public id, e.g. pos-terminal-001")]


async def _device(session: SessionDep, device_id: str) -> Device:
    device = await session.get(Device, device_id)
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id!r} does not exist")
    return device


@router.post(
    "/devices/{device_id}/key",
    response_model=service.DeviceKeyIssued,
    status_code=status.HTTP_201_CREATED,
    summary="Issue a new API key for a device (admin only); the old key stops working",
    description="The key is shown once; install it on the terminal. Also re-admits a device "
    "whose key was revoked.",
    responses={404: {"description": "No such device"}},
)
async def rotate_device_key(
    device_id: DeviceId, admin: AdminUser, request: Request, session: SessionDep
) -> service.DeviceKeyIssued:
    device = await _device(session, device_id)
    return await service.issue_device_key(
        session, Actor.of(request, admin), device, fleet=request.app.state.settings.fleet
    )


@router.delete(
    "/devices/{device_id}/key",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a device's API key (admin only); it is refused at once on every transport",
    description="The device cannot re-register with its site's bootstrap key afterwards: an "
    "admin issues a new key (POST on this path) or a bootstrap key that re-registers devices.",
    responses={404: {"description": "No such device"}},
)
async def revoke_device_key(
    device_id: DeviceId, admin: AdminUser, request: Request, session: SessionDep
) -> None:
    device = await _device(session, device_id)
    await service.revoke_device_key(
        session, Actor.of(request, admin), device, fleet=request.app.state.settings.fleet
    )
