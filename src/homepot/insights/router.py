"""The insights API: thin handlers over the insights services."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from homepot.auth.deps import CurrentUser
from homepot.config import API_PREFIX
from homepot.db import SessionDep, utcnow
from homepot.insights import maintenance
from homepot.insights.schemas import MaintenanceWindowAdvice, MaintenanceWindowQuery
from homepot.site.service import SiteNotFound

router = APIRouter(prefix=f"{API_PREFIX}/insights", tags=["insights"])


@router.get(
    "/maintenance-windows",
    summary="Recommended maintenance windows of a site",
    description="Per weekday, the window of the requested length that disturbed the fewest "
    "transactions in the lookback (from the site's terminals' telemetry, in the site's time "
    "zone), kept inside the day's closed hours when it has any, next to what a job of the same "
    "length would disturb at the start of the declared maintenance window.",
)
async def read_maintenance_windows(
    _user: CurrentUser,
    session: SessionDep,
    params: Annotated[MaintenanceWindowQuery, Query()],
) -> MaintenanceWindowAdvice:
    try:
        return await maintenance.maintenance_windows(session, params, utcnow())
    except SiteNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
