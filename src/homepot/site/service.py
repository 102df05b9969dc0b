"""Sites and their weekly operating schedules."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import column, delete, func, select, table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics.config_history import change_config
from homepot.analytics.models import SiteOperatingSchedule
from homepot.analytics.recorder import Recorder
from homepot.audit.service import Actor, apply_changes, write_audit_log
from homepot.config import Settings
from homepot.db import utcnow
from homepot.kit.keys import hash_key, new_bootstrap_key
from homepot.kit.pagination import PageParams, fetch_page
from homepot.site.models import Site
from homepot.site.schemas import DAY_NAMES, ScheduleDayWrite, ScheduleWrite, SiteCreate, SiteUpdate

# The devices table by name only: devices belong to sites (their foreign key says so), so the
# device package sits above this one and a site knows its devices only as rows that point to it.
_devices = table("devices", column("site_id"))


class SiteNotFound(LookupError):
    def __init__(self, site_id: str) -> None:
        super().__init__(f"site {site_id!r} does not exist")


class SiteExists(Exception):
    def __init__(self, site_id: str) -> None:
        super().__init__(f"a site with site_id {site_id!r} already exists")


class SiteHasDevices(Exception):
    def __init__(self, site_id: str, count: int) -> None:
        super().__init__(
            f"site {site_id!r} still has {count} device(s); delete them or move them to"
            " another site first"
        )


class ScheduleNotFound(LookupError):
    def __init__(self, site_id: str, day_of_week: int) -> None:
        super().__init__(
            f"site {site_id!r} has no schedule for day {day_of_week} ({DAY_NAMES[day_of_week]})"
        )


class ScheduleConflict(Exception):
    def __init__(self, site_id: str, day_of_week: int) -> None:
        super().__init__(
            f"the schedule of site {site_id!r} for day {day_of_week} was changed by another"
            " request at the same time; send the request again"
        )


async def get_site(session: AsyncSession, site_id: str) -> Site:
    site = await session.get(Site, site_id)
    if site is None:
        raise SiteNotFound(site_id)
    return site


async def list_sites(
    session: AsyncSession, params: PageParams, *, q: str | None = None
) -> tuple[Sequence[Site], int]:
    statement = select(Site).order_by(Site.site_id)
    if q:
        statement = statement.where(Site.name.icontains(q, autoescape=True))
    return await fetch_page(session, statement, params)


async def create_site(session: AsyncSession, actor: Actor, data: SiteCreate) -> Site:
    if await session.get(Site, data.site_id) is not None:
        raise SiteExists(data.site_id)
    site = Site(**data.model_dump())
    session.add(site)
    write_audit_log(
        session,
        actor,
        action="site.create",
        resource_type="site",
        resource_id=site.site_id,
        details=data.model_dump(),
    )
    try:
        await session.flush()
    except IntegrityError as exc:  # created by a concurrent request since the check above
        raise SiteExists(data.site_id) from exc
    return site


async def update_site(
    session: AsyncSession,
    recorder: Recorder,
    actor: Actor,
    site: Site,
    data: SiteUpdate,
    *,
    settings: Settings,
) -> Site:
    values: dict[str, Any] = data.model_dump(
        exclude_unset=True, exclude={"config", "change_reason"}
    )
    changes = apply_changes(site, values)
    if data.config is not None:
        old_config = dict(site.config)
        if await change_config(
            session,
            recorder,
            entity_type="site",
            entity=site,
            patch=data.config,
            changed_by=actor.user_id,
            reason=data.change_reason,
            change_type="manual",
            settings=settings,
        ):
            changes["config"] = {"old": old_config, "new": site.config}
    if not changes:
        return site
    details: dict[str, Any] = dict(changes)
    if data.change_reason is not None:
        details["change_reason"] = data.change_reason
    write_audit_log(
        session,
        actor,
        action="site.update",
        resource_type="site",
        resource_id=site.site_id,
        details=details,
    )
    await session.flush()
    return site


async def delete_site(session: AsyncSession, actor: Actor, site: Site) -> None:
    devices = await session.scalar(
        select(func.count()).select_from(_devices).where(_devices.c.site_id == site.site_id)
    )
    if devices:
        raise SiteHasDevices(site.site_id, devices)
    # Schedules are the site's configuration (no foreign key: the table is analytics-shaped).
    await session.execute(
        delete(SiteOperatingSchedule).where(SiteOperatingSchedule.site_id == site.site_id)
    )
    await session.delete(site)
    write_audit_log(
        session,
        actor,
        action="site.delete",
        resource_type="site",
        resource_id=site.site_id,
        details={"name": site.name},
    )
    try:
        await session.flush()
    except IntegrityError as exc:  # a device was added by a concurrent request
        raise SiteHasDevices(site.site_id, 1) from exc


async def rotate_bootstrap_key(
    session: AsyncSession,
    actor: Actor,
    site: Site,
    *,
    ttl_hours: float,
    replaces_devices: bool = False,
) -> tuple[str, bool]:
    """A new bootstrap key for the site's terminals; returns it and whether one was replaced.

    The previous key stops working at once; the new one expires after ``ttl_hours``. With
    ``replaces_devices`` (an admin's approval) it also re-registers devices that already
    exist in the site, replacing their keys. Only the key's hash is stored, and the audit
    row records that the key changed, never the key. Devices keep their own API keys.
    """
    replaced = site.bootstrap_key_hash is not None
    key = new_bootstrap_key()
    site.bootstrap_key_hash = hash_key(key)
    site.bootstrap_key_expires_at = utcnow() + timedelta(hours=ttl_hours)
    site.bootstrap_key_replaces_devices = replaces_devices
    write_audit_log(
        session,
        actor,
        action="site.bootstrap_key.rotate" if replaced else "site.bootstrap_key.create",
        resource_type="site",
        resource_id=site.site_id,
        details={
            "replaced_previous_key": replaced,
            "expires_at": site.bootstrap_key_expires_at,
            "replaces_existing_devices": replaces_devices,
        },
    )
    await session.flush()
    return key, replaced


async def list_schedules(session: AsyncSession, site: Site) -> Sequence[SiteOperatingSchedule]:
    statement = (
        select(SiteOperatingSchedule)
        .where(SiteOperatingSchedule.site_id == site.site_id)
        .order_by(SiteOperatingSchedule.day_of_week)
    )
    return (await session.scalars(statement)).all()


async def _find_schedule(
    session: AsyncSession, site: Site, day_of_week: int
) -> SiteOperatingSchedule | None:
    return await session.scalar(
        select(SiteOperatingSchedule).where(
            SiteOperatingSchedule.site_id == site.site_id,
            SiteOperatingSchedule.day_of_week == day_of_week,
        )
    )


async def get_schedule(
    session: AsyncSession, site: Site, day_of_week: int
) -> SiteOperatingSchedule:
    schedule = await _find_schedule(session, site, day_of_week)
    if schedule is None:
        raise ScheduleNotFound(site.site_id, day_of_week)
    return schedule


def _schedule_resource(site: Site, day_of_week: int) -> str:
    return f"{site.site_id}/{day_of_week}"


async def put_schedule(
    session: AsyncSession, actor: Actor, site: Site, day_of_week: int, data: ScheduleWrite
) -> tuple[SiteOperatingSchedule, bool]:
    """Create or replace one weekday's schedule (fields not given take their defaults).

    Returns the schedule and whether it was created.
    """
    values = data.model_dump(exclude={"day_of_week"})
    schedule = await _find_schedule(session, site, day_of_week)
    created = schedule is None
    if schedule is None:
        schedule = SiteOperatingSchedule(
            site_id=site.site_id, day_of_week=day_of_week, source=site.source, **values
        )
        session.add(schedule)
        action, details = "schedule.create", values
    else:
        action, details = "schedule.update", apply_changes(schedule, values)
    if details:
        write_audit_log(
            session,
            actor,
            action=action,
            resource_type="site_schedule",
            resource_id=_schedule_resource(site, day_of_week),
            details=details,
        )
    try:
        await session.flush()
    except IntegrityError as exc:  # the same day inserted by a concurrent request
        raise ScheduleConflict(site.site_id, day_of_week) from exc
    return schedule, created


async def replace_week(
    session: AsyncSession, actor: Actor, site: Site, days: Sequence[ScheduleDayWrite]
) -> Sequence[SiteOperatingSchedule]:
    """Make the site's schedule exactly ``days``: days not listed are deleted."""
    listed = {day.day_of_week for day in days}
    for existing in await list_schedules(session, site):
        if existing.day_of_week not in listed:
            await delete_schedule(session, actor, site, existing.day_of_week)
    for day in days:
        await put_schedule(session, actor, site, day.day_of_week, day)
    return await list_schedules(session, site)


async def delete_schedule(
    session: AsyncSession, actor: Actor, site: Site, day_of_week: int
) -> None:
    schedule = await get_schedule(session, site, day_of_week)
    await session.delete(schedule)
    write_audit_log(
        session,
        actor,
        action="schedule.delete",
        resource_type="site_schedule",
        resource_id=_schedule_resource(site, day_of_week),
    )
    await session.flush()
