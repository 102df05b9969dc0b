from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, Response, status

from homepot.analytics.models import SiteOperatingSchedule
from homepot.audit.service import Actor
from homepot.auth.deps import AdminUser, CurrentUser, OperatorUser
from homepot.auth.models import Role
from homepot.config import API_PREFIX
from homepot.db import SessionDep
from homepot.kit.pagination import Page
from homepot.kit.routing import api_router
from homepot.site import service
from homepot.site.models import Site
from homepot.site.schemas import (
    BootstrapKeyCreate,
    BootstrapKeyRead,
    ScheduleRead,
    ScheduleWrite,
    SiteCreate,
    SiteListQuery,
    SiteRead,
    SiteUpdate,
    WeekSchedule,
    WeekScheduleWrite,
)

router = api_router(prefix=API_PREFIX, tags=["sites"])


async def _site_from_path(
    site_id: Annotated[str, Path(description="The site's public id, e.g. site-001")],
    session: SessionDep,
) -> Site:
    try:
        return await service.get_site(session, site_id)
    except service.SiteNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


SiteFromPath = Annotated[Site, Depends(_site_from_path)]
DayOfWeek = Annotated[int, Path(ge=0, le=6, description="0 = Monday ... 6 = Sunday")]


@router.post(
    "/sites",
    response_model=SiteRead,
    status_code=status.HTTP_201_CREATED,
    summary="Create a site (operator or admin)",
)
async def create_site(
    user: OperatorUser, body: SiteCreate, request: Request, session: SessionDep
) -> Site:
    try:
        return await service.create_site(session, Actor.of(request, user), body)
    except service.SiteExists as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@router.get("/sites", response_model=Page[SiteRead], summary="List sites, ordered by site_id")
async def list_sites(
    _user: CurrentUser,
    session: SessionDep,
    params: Annotated[SiteListQuery, Query()],
) -> Page[SiteRead]:
    items, total = await service.list_sites(session, params.page, q=params.q)
    return Page[SiteRead].of(items, total, params.page)


@router.get("/sites/{site_id}", response_model=SiteRead, summary="Read a site")
async def read_site(_user: CurrentUser, site: SiteFromPath) -> Site:
    return site


@router.patch(
    "/sites/{site_id}",
    response_model=SiteRead,
    summary="Change a site (operator or admin); config changes are recorded per key",
)
async def update_site(
    user: OperatorUser,
    site: SiteFromPath,
    body: SiteUpdate,
    request: Request,
    session: SessionDep,
) -> Site:
    return await service.update_site(
        session,
        request.app.state.recorder,
        Actor.of(request, user),
        site,
        body,
        settings=request.app.state.settings,
    )


@router.delete(
    "/sites/{site_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a site without devices, with its schedules (operator or admin)",
)
async def delete_site(
    user: OperatorUser, site: SiteFromPath, request: Request, session: SessionDep
) -> None:
    try:
        await service.delete_site(session, Actor.of(request, user), site)
    except service.SiteHasDevices as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@router.post(
    "/sites/{site_id}/bootstrap-key",
    response_model=BootstrapKeyRead,
    status_code=status.HTTP_201_CREATED,
    summary="Create or replace the key the site's terminals register with (operator or admin)",
    description="The previous key stops working at once; the new one expires after "
    "`HOMEPOT_FLEET__BOOTSTRAP_KEY_TTL_HOURS` (24 by default). It registers new devices only, "
    "unless an admin asks for `replaces_existing_devices`.",
    responses={403: {"description": "replaces_existing_devices asked for by a non-admin"}},
)
async def rotate_bootstrap_key(
    user: OperatorUser,
    site: SiteFromPath,
    request: Request,
    session: SessionDep,
    body: BootstrapKeyCreate | None = None,
) -> BootstrapKeyRead:
    replaces_devices = body is not None and body.replaces_existing_devices
    if replaces_devices and user.role != Role.admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "only an admin issues a bootstrap key that re-registers existing devices",
        )
    key, replaced = await service.rotate_bootstrap_key(
        session,
        Actor.of(request, user),
        site,
        ttl_hours=request.app.state.settings.fleet.bootstrap_key_ttl_hours,
        replaces_devices=replaces_devices,
    )
    assert site.bootstrap_key_expires_at is not None
    return BootstrapKeyRead(
        site_id=site.site_id,
        bootstrap_key=key,
        replaced_previous_key=replaced,
        expires_at=site.bootstrap_key_expires_at,
        replaces_existing_devices=replaces_devices,
    )


def _week(site: Site, schedules: list[SiteOperatingSchedule]) -> WeekSchedule:
    return WeekSchedule(
        site_id=site.site_id,
        timezone=site.timezone,
        days=[ScheduleRead.of(schedule, site.timezone) for schedule in schedules],
    )


@router.get(
    "/sites/{site_id}/schedules",
    response_model=WeekSchedule,
    summary="A site's weekly operating schedule (admin only)",
)
async def read_week(_admin: AdminUser, site: SiteFromPath, session: SessionDep) -> WeekSchedule:
    return _week(site, list(await service.list_schedules(session, site)))


@router.get(
    "/sites/{site_id}/hours",
    response_model=WeekSchedule,
    summary="A site's weekly operating schedule, read-only (any signed-in user)",
    description="The same week as GET /sites/{site_id}/schedules, for operators and viewers "
    "who see a site's hours on the dashboard; changing them stays admin-only.",
)
async def read_hours(_user: CurrentUser, site: SiteFromPath, session: SessionDep) -> WeekSchedule:
    return _week(site, list(await service.list_schedules(session, site)))


@router.put(
    "/sites/{site_id}/schedules",
    response_model=WeekSchedule,
    summary="Replace a site's whole weekly schedule (admin only)",
)
async def replace_week(
    admin: AdminUser,
    site: SiteFromPath,
    body: WeekScheduleWrite,
    request: Request,
    session: SessionDep,
) -> WeekSchedule:
    try:
        schedules = await service.replace_week(session, Actor.of(request, admin), site, body)
    except service.ScheduleConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return _week(site, list(schedules))


@router.get(
    "/sites/{site_id}/schedules/{day_of_week}",
    response_model=ScheduleRead,
    summary="A site's schedule for one weekday (admin only)",
)
async def read_schedule(
    _admin: AdminUser, site: SiteFromPath, day_of_week: DayOfWeek, session: SessionDep
) -> ScheduleRead:
    try:
        schedule = await service.get_schedule(session, site, day_of_week)
    except service.ScheduleNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return ScheduleRead.of(schedule, site.timezone)


@router.put(
    "/sites/{site_id}/schedules/{day_of_week}",
    response_model=ScheduleRead,
    summary="Create or replace a site's schedule for one weekday (admin only)",
    responses={201: {"model": ScheduleRead, "description": "The day had no schedule before"}},
)
async def put_schedule(
    admin: AdminUser,
    site: SiteFromPath,
    day_of_week: DayOfWeek,
    body: ScheduleWrite,
    request: Request,
    response: Response,
    session: SessionDep,
) -> ScheduleRead:
    try:
        schedule, created = await service.put_schedule(
            session, Actor.of(request, admin), site, day_of_week, body
        )
    except service.ScheduleConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    if created:
        response.status_code = status.HTTP_201_CREATED
    return ScheduleRead.of(schedule, site.timezone)


@router.delete(
    "/sites/{site_id}/schedules/{day_of_week}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a site's schedule for one weekday (admin only)",
)
async def delete_schedule(
    admin: AdminUser,
    site: SiteFromPath,
    day_of_week: DayOfWeek,
    request: Request,
    session: SessionDep,
) -> None:
    try:
        await service.delete_schedule(session, Actor.of(request, admin), site, day_of_week)
    except service.ScheduleNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
