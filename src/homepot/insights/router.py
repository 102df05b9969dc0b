"""The insights API: anomaly episodes (read by every role, handled by operators), the fleet,
recommended maintenance windows."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import HTTPException, Path, Query, Request, status

from homepot.audit.service import Actor, write_audit_log
from homepot.auth.deps import CurrentUser, OperatorUser
from homepot.config import API_PREFIX
from homepot.db import SessionDep, utcnow
from homepot.insights import config_impact, episodes, job_advice, maintenance
from homepot.insights.models import AnomalyStatus
from homepot.insights.schemas import (
    AnomalyQuery,
    AnomalyRead,
    AnomalyUpdate,
    ConfigImpactApplied,
    ConfigImpactQuery,
    ConfigImpactRange,
    ConfigImpactRead,
    ConfigImpactReport,
    DeviceInsights,
    FleetRanking,
    JobSuccessAdvice,
    JobSuccessQuery,
    MaintenanceWindowAdvice,
    MaintenanceWindowQuery,
    MetricImpact,
    RestoreGroup,
)
from homepot.kit.pagination import CursorPage
from homepot.kit.routing import api_router
from homepot.site.service import SiteNotFound

router = api_router(prefix=f"{API_PREFIX}/insights", tags=["insights"])

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


@router.get(
    "/job-success",
    summary="Chance that a job succeeds on each target device",
    description="For a job type and one device (`device_id`) or every device of a site "
    "(`site_id`): per device the probability that the job succeeds if it ran now, the number of "
    "past outcomes it rests on at each level (device, site, job type, fleet) and the main "
    "reasons, the riskiest device first. Learned from job_outcomes (shrinkage from the fleet "
    "to the device, then a logistic model on firmware and configuration version, hour of the "
    "site's day and recent health). Any signed-in user.",
    responses={
        401: {"description": "No valid bearer token"},
        404: {"description": "No device or site with this id"},
        422: {
            "description": "An unknown parameter or job type, or not exactly one of device_id "
            "and site_id"
        },
    },
)
async def read_job_success(
    _user: CurrentUser,
    session: SessionDep,
    params: Annotated[JobSuccessQuery, Query()],
) -> JobSuccessAdvice:
    try:
        return await job_advice.job_success(session, params, utcnow())
    except (job_advice.DeviceNotFound, SiteNotFound) as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


def _impact_read(row: config_impact.ImpactRow) -> ConfigImpactRead:
    return ConfigImpactRead(
        id=row.id,
        parameter=row.parameter,
        value=row.value,
        verdict=row.verdict,
        harm=row.harm,
        devices=row.devices,
        changes=row.changes,
        first_at=row.first_at,
        last_at=row.last_at,
        metrics=[MetricImpact(**vars(metric)) for metric in row.metrics],
        explanation=row.explanation,
        rollback=[
            RestoreGroup(value=json.loads(key), devices=devices)
            for key, devices in row.restore.items()
        ]
        if row.verdict == "regression"
        else None,
    )


def _bounds(params: ConfigImpactRange) -> tuple[datetime, datetime]:
    try:
        return params.bounds(utcnow())
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


@router.get(
    "/config-impact",
    summary="Configuration impact across the fleet",
    description="Per parameter and new value changed in `[since, until)`, the effect on error "
    "rate, network latency and CPU across the devices that received it: a difference in "
    "differences against devices that did not change at the same moment, each device first "
    "compared with its own usual change at that clock time, with a 95 % confidence interval "
    "and the number of devices. Sorted by harm; `verdict` is regression, improvement, "
    "no_effect or not_enough_data, and a regression carries its rollback proposal. Any "
    "signed-in user.",
    responses=_READ_ERRORS,
)
async def read_config_impact(
    _user: CurrentUser, session: SessionDep, params: Annotated[ConfigImpactQuery, Query()]
) -> ConfigImpactReport:
    since, until = _bounds(params)
    report = await config_impact.config_impact(
        session,
        since=since,
        until=until,
        parameter=params.parameter,
        window_minutes=params.window_minutes,
    )
    return ConfigImpactReport(
        since=since,
        until=until,
        window_minutes=report.window_minutes,
        rows=[_impact_read(row) for row in report.rows],
    )


@router.post(
    "/config-impact/{id}/apply",
    summary="Accept a configuration rollback proposal",
    description="Recomputes the row `id` of GET /config-impact over the same range (the "
    "body: `since`, `until`, `window_minutes`, all optional) and, when it is still a "
    "regression, creates one config_change job per device that still has the value, giving "
    "back the value it had before. Each device's success is recorded in configuration_history "
    "with change_type `ai_recommended`. Written to the audit log. Operators and admins.",
    responses={
        401: {"description": "No valid bearer token"},
        403: {"description": "The token's user is a viewer"},
        404: {"description": "No configuration change with this id in the range"},
        409: {"description": "The row is not a regression, or no device still has the value"},
        422: {"description": "A malformed id or range"},
    },
)
async def apply_config_rollback(
    impact_id: Annotated[
        str, Path(alias="id", pattern=r"^[0-9a-f]{20}$", description="The row's `id`")
    ],
    request: Request,
    user: OperatorUser,
    session: SessionDep,
    body: ConfigImpactRange | None = None,
) -> ConfigImpactApplied:
    body = body or ConfigImpactRange()
    since, until = _bounds(body)
    actor = Actor.of(request, user)
    try:
        applied = await config_impact.apply_rollback(
            session, actor, impact_id, since=since, until=until, window_minutes=body.window_minutes
        )
    except config_impact.ImpactNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except config_impact.NothingToRollBack as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    read = _impact_read(applied.row)
    write_audit_log(
        session,
        actor,
        action="config_impact.apply",
        resource_type="config_impact",
        resource_id=impact_id,
        details={
            "parameter": applied.row.parameter,
            "value": applied.row.value,
            "verdict": applied.row.verdict,
            "explanation": applied.row.explanation,
            "job_ids": applied.job_ids,
            "devices": applied.devices,
            "already_pending": applied.already_pending,
            "since": since.isoformat(),
            "until": until.isoformat(),
        },
    )
    return ConfigImpactApplied(
        impact=read,
        job_ids=applied.job_ids,
        devices=applied.devices,
        already_pending=applied.already_pending,
    )
