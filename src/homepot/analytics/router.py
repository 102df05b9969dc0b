"""The analytics API: eight admin-only read endpoints and the dashboard's ingestion."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import HTTPException, Path, Query, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics import queries, route_summary
from homepot.analytics.models import DEVICE, ErrorLog
from homepot.analytics.schemas import (
    MAX_ACTIVITY_BATCH,
    MAX_EVENT_BYTES,
    ActivityBatchAccepted,
    APIRequestLogRead,
    ClientErrorAccepted,
    ClientErrorCreate,
    ConfigHistoryQuery,
    ConfigurationHistoryRead,
    DeviceMetricsQuery,
    DeviceMetricsRead,
    DeviceStateHistoryRead,
    DeviceStateQuery,
    ErrorLogQuery,
    ErrorLogRead,
    ErrorLogUpdate,
    JobOutcomeQuery,
    JobOutcomeRead,
    RequestQuery,
    RouteTrafficQuery,
    RouteTrafficSummary,
    SiteOperatingScheduleRead,
    SiteScheduleQuery,
    UserActivityBatch,
    UserActivityQuery,
    UserActivityRead,
)
from homepot.audit.service import Actor, write_audit_log
from homepot.auth.deps import AdminUser
from homepot.auth.models import User
from homepot.auth.throttle import IngestingUser
from homepot.config import API_PREFIX
from homepot.db import ReadSessionDep, SessionDep
from homepot.kit import streams
from homepot.kit.pagination import CursorPage
from homepot.kit.routing import api_router
from homepot.kit.streams import StreamQuery

router = api_router(prefix=f"{API_PREFIX}/analytics", tags=["analytics"])

_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid bearer token"},
}
_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH_ERRORS,
    403: {"description": "The token's user is not an admin"},
}
_READ_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ADMIN_ERRORS,
    422: {
        "description": "An unknown parameter, a malformed value (the error names it), or "
        "start_date after end_date"
    },
}
_TOO_LARGE = (
    "A request body over the ingestion limit (HOMEPOT_LIMITS__MAX_INGEST_BODY_BYTES, "
    "256 KiB by default)"
)
_TOO_MANY = (
    "More than HOMEPOT_RATE_LIMITS__INGEST_REQUESTS_PER_MINUTE batches from this user in a "
    "minute; send again after Retry-After"
)


_PAGING = (
    "Newest first, as `{items, next_cursor}`: pass `next_cursor` back as `cursor` for the "
    "next page (null on the last). `start_date`/`end_date` take a date (an end date includes "
    "that whole UTC day) or an ISO 8601 datetime. Any other parameter name is refused with "
    "422, so a mistyped filter cannot silently return unfiltered data. Admin only."
)


async def _audited_page(
    request: Request,
    admin: User,
    session: AsyncSession,
    reader: AsyncSession,
    stream: streams.Stream[streams.ReadT],
    params: StreamQuery,
) -> CursorPage[streams.ReadT]:
    return await queries.read_audited_page(
        session, Actor.of(request, admin), stream, params, reader=reader
    )


@router.get(
    "/requests/routes",
    summary="API traffic per route: requests, errors, latency percentiles",
    description="Per route template and method over `since` to `until` (default: the last "
    "24 hours; at most 92 days): requests, 4xx and 5xx answers, average, maximum and "
    "p50/p95/p99 response time. Read from the per-minute route rollups (raw request logs "
    "only for the minutes they do not cover yet), so a week costs what an hour does. "
    "Admin only.",
    responses=_READ_ERRORS,
)
async def route_traffic(
    admin: AdminUser,
    reader: ReadSessionDep,
    params: Annotated[RouteTrafficQuery, Query()],
) -> RouteTrafficSummary:
    try:
        since, until = params.span()
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return await route_summary.summarize(reader, since, until, params.source)


@router.get(
    "/requests",
    summary="API request log",
    description=f"Every API call: route, status, timing, sizes, caller. {_PAGING}",
    responses=_READ_ERRORS,
)
async def list_requests(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    reader: ReadSessionDep,
    params: Annotated[RequestQuery, Query()],
) -> CursorPage[APIRequestLogRead]:
    return await _audited_page(request, admin, session, reader, queries.REQUESTS, params)


@router.get(
    "/device-states",
    summary="Device state history",
    description=f"Each change of a device's state, who made it and why. {_PAGING}",
    responses=_READ_ERRORS,
)
async def list_device_states(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    reader: ReadSessionDep,
    params: Annotated[DeviceStateQuery, Query()],
) -> CursorPage[DeviceStateHistoryRead]:
    return await _audited_page(request, admin, session, reader, queries.DEVICE_STATES, params)


@router.get(
    "/jobs",
    summary="Job outcomes",
    description=f"How each job ended on each device, with duration and errors. {_PAGING}",
    responses=_READ_ERRORS,
)
async def list_job_outcomes(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    reader: ReadSessionDep,
    params: Annotated[JobOutcomeQuery, Query()],
) -> CursorPage[JobOutcomeRead]:
    return await _audited_page(request, admin, session, reader, queries.JOBS, params)


@router.get(
    "/errors",
    summary="Error log",
    description=f"Categorised errors from the API, devices and the dashboard. {_PAGING}",
    responses=_READ_ERRORS,
)
async def list_errors(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    reader: ReadSessionDep,
    params: Annotated[ErrorLogQuery, Query()],
) -> CursorPage[ErrorLogRead]:
    return await _audited_page(request, admin, session, reader, queries.ERRORS, params)


@router.get(
    "/user-activities",
    summary="Dashboard user activity",
    description=f"Page views, clicks, searches and form submissions. {_PAGING}",
    responses=_READ_ERRORS,
)
async def list_user_activities(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    reader: ReadSessionDep,
    params: Annotated[UserActivityQuery, Query()],
) -> CursorPage[UserActivityRead]:
    return await _audited_page(request, admin, session, reader, queries.USER_ACTIVITIES, params)


@router.get(
    "/device-metrics",
    summary="Device performance metrics",
    description=f"CPU, memory, disk, latency and transaction samples per device. {_PAGING}",
    responses=_READ_ERRORS,
)
async def list_device_metrics(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    reader: ReadSessionDep,
    params: Annotated[DeviceMetricsQuery, Query()],
) -> CursorPage[DeviceMetricsRead]:
    return await _audited_page(request, admin, session, reader, queries.DEVICE_METRICS, params)


@router.get(
    "/config-history",
    summary="Configuration history",
    description=f"Configuration changes with old and new values and their effect. {_PAGING}",
    responses=_READ_ERRORS,
)
async def list_config_history(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    reader: ReadSessionDep,
    params: Annotated[ConfigHistoryQuery, Query()],
) -> CursorPage[ConfigurationHistoryRead]:
    return await _audited_page(request, admin, session, reader, queries.CONFIG_HISTORY, params)


@router.get(
    "/site-schedules",
    summary="Site operating schedules",
    description="Each site's hours per weekday (times local to the site), most recently "
    "changed first; `start_date`/`end_date` filter on `updated_at`. " + _PAGING,
    responses=_READ_ERRORS,
)
async def list_site_schedules(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    reader: ReadSessionDep,
    params: Annotated[SiteScheduleQuery, Query()],
) -> CursorPage[SiteOperatingScheduleRead]:
    return await _audited_page(request, admin, session, reader, queries.SITE_SCHEDULES, params)


@router.post(
    "/user-activities",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Record dashboard user activity",
    description=f"A batch of 1 to {MAX_ACTIVITY_BATCH} events from the logged-in user, queued "
    "for storage. The user is always the token's: an event carrying `user_id` is refused "
    "(422). Events with an `event_id` already stored are stored once. A user who opted out "
    "of analytics (`PUT /api/v1/users/me/preferences`) gets `accepted: 0` and nothing is "
    "stored. Any logged-in user.",
    responses={
        **_AUTH_ERRORS,
        413: {
            "description": f"More than {MAX_ACTIVITY_BATCH} events in one batch, or {_TOO_LARGE}"
        },
        429: {"description": _TOO_MANY},
        422: {
            "description": "An invalid event (the error names the event's index and field): "
            f"over {MAX_EVENT_BYTES} bytes as JSON, an activity_type other than page_view, "
            "click, search or form_submit, a malformed session_id, or extra_data carrying "
            "form field values"
        },
    },
)
async def record_user_activities(
    request: Request, user: IngestingUser, batch: UserActivityBatch
) -> ActivityBatchAccepted:
    if len(batch.events) > MAX_ACTIVITY_BATCH:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"a batch holds at most {MAX_ACTIVITY_BATCH} events; got {len(batch.events)}: "
            "send them in several batches",
        )
    if user.analytics_opt_out:
        return ActivityBatchAccepted(accepted=0)
    accepted = queries.record_user_activities(
        request.app.state.recorder, user.id, batch.events, getattr(request.state, "source", DEVICE)
    )
    return ActivityBatchAccepted(accepted=accepted)


@router.post(
    "/errors",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Report a client-side error",
    description="An error caught in the dashboard, stored in the error log with category "
    "`api`, `context.source = frontend` and `context.client_reported = true`, the page and "
    "the browser. Its code starts with `FRONTEND_` and its severity is at most `error`: a "
    "browser cannot pose as a server-side alarm. Any logged-in user.",
    responses={
        **_AUTH_ERRORS,
        413: {"description": _TOO_LARGE},
        422: {
            "description": "A missing message, a field over its size limit, a code not "
            "starting with FRONTEND_ or severity critical"
        },
        429: {"description": _TOO_MANY},
    },
)
async def report_client_error(
    request: Request, user: IngestingUser, report: ClientErrorCreate
) -> ClientErrorAccepted:
    user_agent = request.headers.get("user-agent", "")[:512] or None
    event_id = queries.record_client_error(
        request.app.state.recorder,
        user.id,
        report,
        user_agent,
        getattr(request.state, "source", DEVICE),
    )
    return ClientErrorAccepted(event_id=event_id)


@router.patch(
    "/errors/{id}",
    summary="Mark an error resolved or open",
    description="`resolved: true` sets `resolved_at` to now (an error already resolved keeps "
    "its first resolution time); `false` clears it. Admin only.",
    responses={**_ADMIN_ERRORS, 404: {"description": "No error with this id"}},
)
async def update_error(
    error_id: Annotated[int, Path(alias="id", ge=1, le=2**63 - 1, description="The error's `id`")],
    body: ErrorLogUpdate,
    request: Request,
    admin: AdminUser,
    session: SessionDep,
) -> ErrorLogRead:
    error: ErrorLog | None = await queries.set_error_resolved(session, error_id, body.resolved)
    if error is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no error log entry with id {error_id}")
    write_audit_log(
        session,
        Actor.of(request, admin),
        action="error.resolve" if body.resolved else "error.reopen",
        resource_type="error_log",
        resource_id=str(error_id),
        details={"resolved": body.resolved, "error_code": error.error_code},
    )
    return ErrorLogRead.model_validate(error)
