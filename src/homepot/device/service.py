"""Devices: registration, changes (with their state and configuration history), removal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics.config_history import change_config
from homepot.analytics.recorder import Recorder
from homepot.audit.service import Actor, apply_changes, write_audit_log
from homepot.config import Settings
from homepot.device.models import Device, DeviceStatus
from homepot.device.schemas import DeviceCreate, DeviceUpdate
from homepot.device.states import transition
from homepot.kit.keycache import device_key_changed
from homepot.kit.pagination import PageParams, fetch_page
from homepot.site.service import get_site


class DeviceNotFound(LookupError):
    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id!r} does not exist")


class DeviceConflict(Exception):
    def __init__(self, device_id: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"device {device_id!r} could not be saved because a concurrent request changed"
            " it or its site; send the request again"
        )


class DeviceExists(DeviceConflict):
    def __init__(self, device_id: str) -> None:
        super().__init__(device_id, f"a device with device_id {device_id!r} already exists")


async def get_device(session: AsyncSession, device_id: str) -> Device:
    device = await session.get(Device, device_id)
    if device is None:
        raise DeviceNotFound(device_id)
    return device


async def list_devices(
    session: AsyncSession,
    params: PageParams,
    *,
    site_id: str | None = None,
    status: DeviceStatus | None = None,
    device_type: str | None = None,
    q: str | None = None,
) -> tuple[Sequence[Device], int]:
    statement = select(Device).order_by(Device.device_id)
    if site_id is not None:
        statement = statement.where(Device.site_id == site_id)
    if status is not None:
        statement = statement.where(Device.status == status)
    if device_type is not None:
        statement = statement.where(Device.device_type == device_type)
    if q:
        statement = statement.where(
            or_(
                Device.device_id.icontains(q, autoescape=True),
                Device.name.icontains(q, autoescape=True),
            )
        )
    return await fetch_page(session, statement, params)


async def create_device(session: AsyncSession, actor: Actor, data: DeviceCreate) -> Device:
    """Register a device; raises SiteNotFound when its site does not exist."""
    await get_site(session, data.site_id)
    if await session.get(Device, data.device_id) is not None:
        raise DeviceExists(data.device_id)
    device = Device(**data.model_dump())
    session.add(device)
    write_audit_log(
        session,
        actor,
        action="device.create",
        resource_type="device",
        resource_id=device.device_id,
        details=data.model_dump(),
    )
    try:
        await session.flush()
    except IntegrityError as exc:
        raise DeviceConflict(data.device_id) from exc
    return device


async def update_device(
    session: AsyncSession,
    recorder: Recorder,
    actor: Actor,
    device: Device,
    data: DeviceUpdate,
    *,
    settings: Settings,
) -> Device:
    """Apply the changes sent; a new status and changed config keys are recorded as history.

    Raises SiteNotFound when the device is moved to a site that does not exist.
    """
    values: dict[str, Any] = data.model_dump(
        exclude_unset=True, exclude={"config", "reason", "change_reason", "status"}
    )
    if data.site_id is not None and data.site_id != device.site_id:
        await get_site(session, data.site_id)
    previous_status = device.status
    changes = apply_changes(device, values)
    if data.status is not None and await transition(
        session,
        recorder,
        device,
        data.status,
        changed_by=actor.user_id,
        reason=data.reason
        or f"status changed from {previous_status.value} to {data.status.value} through the API",
        extra_data={"source": "api"},
    ):
        changes["status"] = {"old": previous_status, "new": device.status}
    try:
        if data.config is not None:
            old_config = dict(device.config)
            if await change_config(
                session,
                recorder,
                entity_type="device",
                entity=device,
                patch=data.config,
                changed_by=actor.user_id,
                reason=data.change_reason,
                change_type="manual",
                settings=settings,
            ):
                changes["config"] = {"old": old_config, "new": device.config}
        if not changes:
            return device
        details: dict[str, Any] = dict(changes)
        if "status" in changes and data.reason is not None:
            details["reason"] = data.reason
        if "config" in changes and data.change_reason is not None:
            details["change_reason"] = data.change_reason
        write_audit_log(
            session,
            actor,
            action="device.update",
            resource_type="device",
            resource_id=device.device_id,
            details=details,
        )
        await session.flush()
    except IntegrityError as exc:  # the new site was deleted by a concurrent request
        raise DeviceConflict(device.device_id) from exc
    return device


async def delete_device(session: AsyncSession, actor: Actor, device: Device) -> None:
    await session.delete(device)
    write_audit_log(
        session,
        actor,
        action="device.delete",
        resource_type="device",
        resource_id=device.device_id,
        details={"site_id": device.site_id, "name": device.name},
    )
    await session.flush()
    device_key_changed(session, device.device_id)
