"""The insights API: anomaly episodes (read by every role, handled by operators), the fleet,
recommended maintenance windows."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, status

from homepot.audit.service import Actor, write_audit_log
from homepot.auth.deps import CurrentUser, OperatorUser
from homepot.config import API_PREFIX
from homepot.db import SessionDep, utcnow
from homepot.insights import episodes, maintenance
from homepot.insights.models import AnomalyStatus
from homepot.insights.schemas import (
    AnomalyQuery,
    AnomalyRead,
    AnomalyUpdate,
    DeviceInsights,
    FleetRanking,
    MaintenanceWindowAdvice,
    MaintenanceWindowQuery,
)
from homepot.kit.pagination import CursorPage
from homepot.site.service import SiteNotFound

router = APIRouter(prefix=f"{API_PREFIX}/insights", tags=["insights"])

_READ_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid bearer token"},
    422: {
        "description": "An unknown parameter, a malformed value (the error names it), or "
        "start_date after end_date"
    },
}


@router.get(
    "/anomalies",
    summary="Anomaly episodes",
    description="One row per contiguous anomaly on a device's metric (or a site that stopped "
    "reporting), the most recently started first, as `{items, next_cursor}`: pass "
    "`next_cursor` back as `cursor` for the next page. `start_date`/`end_date` filter on "
    "`started_at` and take a date (an end date includes that whole UTC day) or an ISO 8601 "
    "datetime. Unknown parameters are refused with 422. Any signed-in user.",
    responses=_READ_ERRORS,
)
async def list_anomalies(
    user: CurrentUser, session: SessionDep, params: Annotated[AnomalyQuery, Query()]
) -> CursorPage[AnomalyRead]:
    return await episodes.list_anomalies(session, params)


@router.patch(
    "/anomalies/{id}",
    summary="Acknowledge or resolve an anomaly",
    description="Sets the episode's `status` (acknowledged, resolved, or active again); the "
    "change is written to the audit log. Operators and admins.",
    responses={
        401: {"description": "No valid bearer token"},
        403: {"description": "The token's user is a viewer"},
        404: {"description": "No anomaly with this id"},
        422: {"description": "A status other than active, acknowledged or resolved"},
    },
)
async def update_anomaly(
    anomaly_id: Annotated[int, Path(alias="id", ge=1, le=2**63 - 1, description="Its `id`")],
    body: AnomalyUpdate,
    request: Request,
    user: OperatorUser,
    session: SessionDep,
) -> AnomalyRead:
    result = await episodes.set_status(session, anomaly_id, AnomalyStatus(body.status))
    if result is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no anomaly with id {anomaly_id}")
    row, previous = result
    write_audit_log(
        session,
        Actor.of(request, user),
        action=f"anomaly.{body.status}",
        resource_type="anomaly",
        resource_id=str(anomaly_id),
        details={
            "status": {"old": previous, "new": body.status},
            "device_id": row.device_id,
            "site_id": row.site_id,
            "metric": row.metric,
        },
    )
    return AnomalyRead.model_validate(row)


@router.get(
    "/fleet",
    summary="Devices ranked by their active anomalies",
    description="Devices with episodes under way (not resolved, not inside a maintenance "
    "window), the highest score first. `risk_source` says what the ranking rests on: "
    "`anomalies` until a failure-risk model is trained. Any signed-in user.",
    responses={401: {"description": "No valid bearer token"}, 422: {"description": "Bad limit"}},
)
async def fleet(
    user: CurrentUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Devices at most")] = 100,
) -> FleetRanking:
    return await episodes.fleet_ranking(session, limit)


@router.get(
    "/devices/{device_id}",
    summary="A device's anomalies and the expected band of each metric",
    description="The device's episodes that overlap the last `hours` (or are still under "
    "way), and per metric its 5-minute means over those hours with the expected value, a "
    "band of three robust spreads either side, and where the expectation came from "
    "(hour_of_week, hour_of_day, recent, cohort, none). `risk_source` is `anomalies` until a "
    "failure-risk model exists. Any signed-in user.",
    responses={
        401: {"description": "No valid bearer token"},
        404: {"description": "No device with this id"},
        422: {"description": "hours outside 1 to 72"},
    },
)
async def device_insights(
    device_id: Annotated[str, Path(min_length=1, max_length=64)],
    user: CurrentUser,
    session: SessionDep,
    hours: Annotated[int, Query(ge=1, le=72, description="How far back the bands go")] = 6,
) -> DeviceInsights:
    found = await episodes.device_insights(session, device_id, hours, utcnow())
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id}")
    return found


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
