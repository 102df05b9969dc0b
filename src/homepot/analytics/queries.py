"""The SQL of the analytics API, and the events it hands to the recorder.

Each of the eight streams is a small :class:`Stream` description (table, parameters, row
schema, filters, sort key); one query builder, :func:`read_page`, serves them all. A stream's
filters must match its query parameters name for name, which is checked when it is defined.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from homepot.analytics import schemas
from homepot.analytics.models import (
    APIRequestLog,
    ConfigurationHistory,
    DeviceMetrics,
    DeviceStateHistory,
    ErrorLog,
    JobOutcome,
    SiteOperatingSchedule,
    UserActivity,
)
from homepot.analytics.recorder import Recorder
from homepot.audit.service import Actor, write_audit_log
from homepot.db import Base, utcnow
from homepot.kit.pagination import CursorPage, Keyset

ReadT = TypeVar("ReadT", bound=BaseModel)
Filter = Callable[[Any], ColumnElement[bool]]


def equals(column: InstrumentedAttribute[Any]) -> Filter:
    return lambda value: column == value


def at_least(column: InstrumentedAttribute[Any]) -> Filter:
    return lambda value: column >= value


def any_of(column: InstrumentedAttribute[Any]) -> Filter:
    return lambda values: column.in_(values)


@dataclass(frozen=True)
class Stream(Generic[ReadT]):
    """How one analytics table is read."""

    model: type[Base]
    query: type[schemas.StreamQuery]
    read: type[ReadT]
    filters: Mapping[str, Filter]
    time_column: str = "timestamp"
    id_column: str = "id"

    def __post_init__(self) -> None:
        parameters = set(self.query.filter_names())
        if parameters != set(self.filters):
            raise TypeError(
                f"{self.model.__tablename__}: query parameters "
                f"{sorted(parameters - set(self.filters))} have no filter and filters "
                f"{sorted(set(self.filters) - parameters)} have no query parameter"
            )

    @property
    def keyset(self) -> Keyset:
        time_column: InstrumentedAttribute[datetime] = getattr(self.model, self.time_column)
        id_column: InstrumentedAttribute[int] = getattr(self.model, self.id_column)
        return Keyset(time_column, id_column)


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
    },
)
DEVICE_METRICS = Stream(
    DeviceMetrics,
    schemas.DeviceMetricsQuery,
    schemas.DeviceMetricsRead,
    {"device_id": any_of(DeviceMetrics.device_id)},
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
    },
    time_column="updated_at",
)


async def read_audited_page(
    session: AsyncSession,
    actor: Actor,
    stream: Stream[ReadT],
    params: schemas.StreamQuery,
) -> CursorPage[ReadT]:
    """A page of ``stream``, with an audit row of who read it, from where, with which filters.

    Every read of an analytics stream goes through here (the admin streams and the error log
    that every signed-in user sees), so the audit log answers "who looked at what".
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
    return await read_page(session, stream, params)


async def read_page(
    session: AsyncSession, stream: Stream[ReadT], params: schemas.StreamQuery
) -> CursorPage[ReadT]:
    """One page of ``stream`` matching ``params``, newest first."""
    if not isinstance(params, stream.query):
        raise TypeError(f"{stream.model.__tablename__} is read with {stream.query.__name__}")
    keyset = stream.keyset
    statement = select(stream.model)
    for name, value in params.filters().items():
        statement = statement.where(stream.filters[name](value))
    time_range = params.time_range
    if time_range.start is not None:
        statement = statement.where(keyset.time_column >= time_range.start)
    if time_range.end is not None:
        statement = statement.where(
            keyset.time_column <= time_range.end
            if time_range.end_inclusive
            else keyset.time_column < time_range.end
        )
    if params.cursor is not None:
        statement = statement.where(keyset.after(params.cursor))
    statement = statement.order_by(*keyset.order_by()).limit(params.limit + 1)
    rows: Sequence[Any] = (await session.scalars(statement)).all()
    items, next_cursor = keyset.page(rows, params.limit)
    return CursorPage(
        items=[stream.read.model_validate(row) for row in items], next_cursor=next_cursor
    )


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
    recorder: Recorder, user_id: str, events: Sequence[schemas.UserActivityCreate]
) -> int:
    """Queue the events as ``user_id``'s; returns how many were queued."""
    accepted = 0
    for event in events:
        fields = event.model_dump(exclude={"event_id"}, exclude_none=True)
        if event.event_id is not None:
            fields["event_id"] = event.event_id.hex
        if recorder.record(UserActivity, user_id=user_id, **fields) is not None:
            accepted += 1
    return accepted


def record_client_error(
    recorder: Recorder,
    user_id: str,
    report: schemas.ClientErrorCreate,
    user_agent: str | None,
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
    )
