"""The SQL of the analytics API, and the events it hands to the recorder.

Each of the eight streams is a small :class:`Stream` description (table, parameters, row
schema, filters, sort key); one query builder, :func:`read_page`, serves them all. A stream's
filters must match its query parameters name for name, which is checked when it is defined.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics import schemas
from homepot.analytics.models import (
    DEVICE,
    APIRequestLog,
    ConfigurationHistory,
    DeviceMetrics,
    DeviceStateHistory,
    ErrorLog,
    JobOutcome,
    SiteOperatingSchedule,
    Source,
    UserActivity,
)
from homepot.analytics.recorder import Recorder
from homepot.audit.service import Actor, write_audit_log
from homepot.db import utcnow
from homepot.kit.pagination import CursorPage
from homepot.kit.streams import ReadT, Stream, StreamQuery, any_of, at_least, equals, read_page

REQUESTS = Stream(
    APIRequestLog,
    schemas.RequestQuery,
    schemas.APIRequestLogRead,
    {
        "endpoint": equals(APIRequestLog.endpoint),
        "route": equals(APIRequestLog.route),
        "method": equals(APIRequestLog.method),
        "status_code": equals(APIRequestLog.status_code),
        "user_id": equals(APIRequestLog.user_id),
        "min_response_time_ms": at_least(APIRequestLog.response_time_ms),
        "source": equals(APIRequestLog.source),
    },
)
DEVICE_STATES = Stream(
    DeviceStateHistory,
    schemas.DeviceStateQuery,
    schemas.DeviceStateHistoryRead,
    {
        "device_id": equals(DeviceStateHistory.device_id),
        "previous_state": equals(DeviceStateHistory.previous_state),
        "new_state": equals(DeviceStateHistory.new_state),
        "changed_by": equals(DeviceStateHistory.changed_by),
        "source": equals(DeviceStateHistory.source),
    },
)
JOBS = Stream(
    JobOutcome,
    schemas.JobOutcomeQuery,
    schemas.JobOutcomeRead,
    {
        "job_id": equals(JobOutcome.job_id),
        "job_type": equals(JobOutcome.job_type),
        "device_id": equals(JobOutcome.device_id),
        "status": equals(JobOutcome.status),
        "source": equals(JobOutcome.source),
    },
)
ERRORS = Stream(
    ErrorLog,
    schemas.ErrorLogQuery,
    schemas.ErrorLogRead,
    {
        "category": equals(ErrorLog.category),
        "severity": equals(ErrorLog.severity),
        "error_code": equals(ErrorLog.error_code),
        "device_id": equals(ErrorLog.device_id),
        "resolved": equals(ErrorLog.resolved),
        "source": equals(ErrorLog.source),
    },
)
USER_ACTIVITIES = Stream(
    UserActivity,
    schemas.UserActivityQuery,
    schemas.UserActivityRead,
    {
        "user_id": equals(UserActivity.user_id),
        "session_id": equals(UserActivity.session_id),
        "activity_type": equals(UserActivity.activity_type),
        "page_url": equals(UserActivity.page_url),
        "source": equals(UserActivity.source),
    },
)
DEVICE_METRICS = Stream(
    DeviceMetrics,
    schemas.DeviceMetricsQuery,
    schemas.DeviceMetricsRead,
    {
        "device_id": any_of(DeviceMetrics.device_id),
        "source": equals(DeviceMetrics.source),
    },
)
CONFIG_HISTORY = Stream(
    ConfigurationHistory,
    schemas.ConfigHistoryQuery,
    schemas.ConfigurationHistoryRead,
    {
        "entity_type": equals(ConfigurationHistory.entity_type),
        "entity_id": equals(ConfigurationHistory.entity_id),
        "parameter_name": equals(ConfigurationHistory.parameter_name),
        "change_type": equals(ConfigurationHistory.change_type),
        "source": equals(ConfigurationHistory.source),
    },
)
# Schedules are configuration, not events: "newest" is the most recently changed.
SITE_SCHEDULES = Stream(
    SiteOperatingSchedule,
    schemas.SiteScheduleQuery,
    schemas.SiteOperatingScheduleRead,
    {
        "site_id": equals(SiteOperatingSchedule.site_id),
        "day_of_week": equals(SiteOperatingSchedule.day_of_week),
        "source": equals(SiteOperatingSchedule.source),
    },
    time_column="updated_at",
)


async def read_audited_page(
    session: AsyncSession,
    actor: Actor,
    stream: Stream[ReadT],
    params: StreamQuery,
    *,
    reader: AsyncSession | None = None,
) -> CursorPage[ReadT]:
    """A page of ``stream``, with an audit row of who read it, from where, with which filters.

    Every read of an analytics stream goes through here (the admin streams and the error log
    that every signed-in user sees), so the audit log answers "who looked at what". The audit
    row is written through ``session`` (the primary); the page is read through ``reader``
    when given (a read replica, see ``HOMEPOT_DATABASE_READ_URL``).
    """
    write_audit_log(
        session,
        actor,
        action="analytics.query",
        resource_type="analytics",
        resource_id=stream.model.__tablename__,
        details={
            name: value
            for name in type(params).model_fields
            if (value := getattr(params, name)) is not None
        },
    )
    return await read_page(reader if reader is not None else session, stream, params)


async def set_error_resolved(
    session: AsyncSession, error_id: int, resolved: bool
) -> ErrorLog | None:
    """Mark an error resolved (keeping the first resolved_at) or open again; None if unknown."""
    error = await session.get(ErrorLog, error_id)
    if error is None:
        return None
    if resolved and not error.resolved:
        error.resolved_at = utcnow()
    elif not resolved:
        error.resolved_at = None
    error.resolved = resolved
    await session.flush()
    return error


def record_user_activities(
    recorder: Recorder,
    user_id: str,
    events: Sequence[schemas.UserActivityCreate],
    source: Source = DEVICE,
) -> int:
    """Queue the events as ``user_id``'s; returns how many were queued."""
    accepted = 0
    for event in events:
        fields = event.model_dump(exclude={"event_id"}, exclude_none=True)
        if event.event_id is not None:
            fields["event_id"] = event.event_id.hex
        if recorder.record(UserActivity, user_id=user_id, source=source, **fields) is not None:
            accepted += 1
    return accepted


def record_client_error(
    recorder: Recorder,
    user_id: str,
    report: schemas.ClientErrorCreate,
    user_agent: str | None,
    source: Source = DEVICE,
) -> str | None:
    """Queue a browser-side error as an ``api`` error of ``user_id``; returns its event_id."""
    context: dict[str, Any] = dict(report.context or {})
    context.update(
        source="frontend",
        # Said by the browser, not observed by the server: readers weigh it accordingly.
        client_reported=True,
        page_url=report.page_url,
        user_agent=report.user_agent or user_agent,
    )
    return recorder.record(
        ErrorLog,
        category="api",
        severity=report.severity,
        error_code=report.error_code,
        error_message=report.message,
        stack_trace=report.stack,
        user_id=user_id,
        context=context,
        source=source,
    )
