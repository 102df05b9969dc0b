"""The eight analytics tables of the spec, with the spec's column names.

Event tables carry no foreign keys: events outlive the devices, users and jobs they describe,
and the tables must stay partitionable by time. Each event has a unique ``event_id`` so that
a batch written twice (a retried flush, a replayed spool, a resent telemetry batch) is stored
once. ``site_operating_schedules`` is configuration, not events.

Every table carries its rows' provenance in ``source``: ``device`` for what the running system
recorded (real terminals, the API's own requests and errors, dashboard users) and
``simulated`` for what the simulation produced (the backfill, sample data, and simulated
terminals, which say so when they register). Every analytics query can filter on it; exports,
the quality gate and model training leave simulated rows out unless asked.
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Any, ClassVar, Final, Literal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    Time,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from homepot.db import Base, BigIntId, new_event_id, utcnow

Source = Literal["device", "simulated"]
DEVICE: Final = "device"
SIMULATED: Final = "simulated"
SOURCES: Final[tuple[Source, ...]] = (DEVICE, SIMULATED)


def source_of(simulated: bool) -> Source:
    """The ``source`` of a row about something that is (or is not) simulated."""
    return SIMULATED if simulated else DEVICE


def _source_column() -> Mapped[str]:
    # Last in the table, where the migration that added it put it.
    return mapped_column(String(16), default=DEVICE, server_default=DEVICE, sort_order=1)


class AnalyticsEvent(Base):
    """Common columns of the seven event tables."""

    __abstract__ = True
    # Free-text columns that get card numbers and inline secrets masked before storage.
    free_text_columns: ClassVar[tuple[str, ...]] = ()
    # A column naming the parameter whose *_value columns are stored; when that name is
    # secret-like (api_key, password...), the values are withheld.
    secret_parameter_column: ClassVar[str | None] = None

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True, sort_order=-3)
    # Unique through each table's constraint (see event_key): on its own, or with
    # ``timestamp`` where the table is partitioned by time on PostgreSQL.
    event_id: Mapped[str] = mapped_column(String(64), default=new_event_id, sort_order=-2)
    timestamp: Mapped[datetime] = mapped_column(default=utcnow, sort_order=-1)
    # device or simulated (see the module's docstring).
    source: Mapped[str] = _source_column()


class APIRequestLog(AnalyticsEvent):
    __tablename__ = "api_request_logs"
    __table_args__ = (
        UniqueConstraint("event_id", "timestamp"),
        Index("ix_api_request_logs_timestamp", "timestamp"),
        Index("ix_api_request_logs_source_timestamp", "source", "timestamp"),
        Index("ix_api_request_logs_route_timestamp", "route", "timestamp"),
        Index("ix_api_request_logs_endpoint_timestamp", "endpoint", "timestamp"),
        Index("ix_api_request_logs_user_id_timestamp", "user_id", "timestamp"),
        Index("ix_api_request_logs_status_code_timestamp", "status_code", "timestamp"),
    )
    free_text_columns = ("error_message", "user_agent")

    request_id: Mapped[str | None] = mapped_column(String(32))
    endpoint: Mapped[str] = mapped_column(String(2048))
    route: Mapped[str | None] = mapped_column(String(512))
    method: Mapped[str] = mapped_column(String(10))
    status_code: Mapped[int] = mapped_column(SmallInteger)
    response_time_ms: Mapped[float] = mapped_column(Float)
    user_id: Mapped[str | None] = mapped_column(String(64))
    ip_address: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    error_message: Mapped[str | None] = mapped_column(Text)
    request_size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    response_size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    query_params: Mapped[dict[str, Any] | None]


class DeviceStateHistory(AnalyticsEvent):
    __tablename__ = "device_state_history"
    __table_args__ = (
        UniqueConstraint("event_id"),
        Index("ix_device_state_history_timestamp", "timestamp"),
        Index("ix_device_state_history_source_timestamp", "source", "timestamp"),
        Index("ix_device_state_history_device_id_timestamp", "device_id", "timestamp"),
        Index("ix_device_state_history_new_state_timestamp", "new_state", "timestamp"),
    )
    free_text_columns = ("reason",)

    device_id: Mapped[str] = mapped_column(String(64))
    previous_state: Mapped[str | None] = mapped_column(String(32))
    new_state: Mapped[str] = mapped_column(String(32))
    changed_by: Mapped[str] = mapped_column(String(64), default="system")
    reason: Mapped[str | None] = mapped_column(Text)
    extra_data: Mapped[dict[str, Any] | None]


class JobOutcome(AnalyticsEvent):
    __tablename__ = "job_outcomes"
    __table_args__ = (
        UniqueConstraint("event_id"),
        Index("ix_job_outcomes_timestamp", "timestamp"),
        Index("ix_job_outcomes_source_timestamp", "source", "timestamp"),
        Index("ix_job_outcomes_job_id", "job_id"),
        Index("ix_job_outcomes_device_id_timestamp", "device_id", "timestamp"),
        Index("ix_job_outcomes_job_type_timestamp", "job_type", "timestamp"),
        Index("ix_job_outcomes_status_timestamp", "status", "timestamp"),
    )
    free_text_columns = ("error_message",)

    job_id: Mapped[str] = mapped_column(String(64))
    job_type: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    initiated_by: Mapped[str | None] = mapped_column(String(64))
    extra_data: Mapped[dict[str, Any] | None]


class ErrorLog(AnalyticsEvent):
    __tablename__ = "error_logs"
    __table_args__ = (
        # With the partition column (partitioned by week on PostgreSQL); a device's error
        # report redelivered with a new arrival time is kept out by its MessageReceipt.
        UniqueConstraint("event_id", "timestamp"),
        Index("ix_error_logs_timestamp", "timestamp"),
        Index("ix_error_logs_source_timestamp", "source", "timestamp"),
        Index("ix_error_logs_category_timestamp", "category", "timestamp"),
        Index("ix_error_logs_severity_timestamp", "severity", "timestamp"),
        Index("ix_error_logs_error_code", "error_code"),
        Index("ix_error_logs_device_id_timestamp", "device_id", "timestamp"),
        Index("ix_error_logs_resolved_timestamp", "resolved", "timestamp"),
    )
    free_text_columns = ("error_message", "stack_trace")

    category: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str] = mapped_column(Text)
    stack_trace: Mapped[str | None] = mapped_column(Text)
    endpoint: Mapped[str | None] = mapped_column(String(2048))
    user_id: Mapped[str | None] = mapped_column(String(64))
    device_id: Mapped[str | None] = mapped_column(String(64))
    context: Mapped[dict[str, Any] | None]
    resolved: Mapped[bool] = mapped_column(Boolean, default=False)
    resolved_at: Mapped[datetime | None]


class UserActivity(AnalyticsEvent):
    __tablename__ = "user_activities"
    __table_args__ = (
        UniqueConstraint("event_id", "timestamp"),
        Index("ix_user_activities_timestamp", "timestamp"),
        Index("ix_user_activities_source_timestamp", "source", "timestamp"),
        Index("ix_user_activities_user_id_timestamp", "user_id", "timestamp"),
        Index("ix_user_activities_session_id_timestamp", "session_id", "timestamp"),
        Index("ix_user_activities_activity_type_timestamp", "activity_type", "timestamp"),
    )
    # A page URL can carry a token in its query string or fragment.
    free_text_columns = ("search_query", "page_url")

    user_id: Mapped[str | None] = mapped_column(String(64))
    session_id: Mapped[str | None] = mapped_column(String(64))
    activity_type: Mapped[str] = mapped_column(String(32))
    page_url: Mapped[str | None] = mapped_column(String(2048))
    element_id: Mapped[str | None] = mapped_column(String(256))
    search_query: Mapped[str | None] = mapped_column(String(512))
    extra_data: Mapped[dict[str, Any] | None]
    duration_ms: Mapped[int | None] = mapped_column(Integer)


class DeviceMetrics(AnalyticsEvent):
    __tablename__ = "device_metrics"
    __table_args__ = (
        UniqueConstraint("event_id", "timestamp"),
        Index("ix_device_metrics_timestamp", "timestamp"),
        Index("ix_device_metrics_source_timestamp", "source", "timestamp"),
        Index("ix_device_metrics_device_id_timestamp", "device_id", "timestamp"),
    )

    device_id: Mapped[str] = mapped_column(String(64))
    cpu_percent: Mapped[float | None] = mapped_column(Float)
    memory_percent: Mapped[float | None] = mapped_column(Float)
    disk_percent: Mapped[float | None] = mapped_column(Float)
    network_latency_ms: Mapped[float | None] = mapped_column(Float)
    transaction_count: Mapped[int | None] = mapped_column(Integer)
    transaction_volume: Mapped[float | None] = mapped_column(Float)
    error_rate: Mapped[float | None] = mapped_column(Float)
    active_connections: Mapped[int | None] = mapped_column(Integer)
    queue_depth: Mapped[int | None] = mapped_column(Integer)
    extra_metrics: Mapped[dict[str, Any] | None]
    # Seconds the sample covers, so rates can be computed from counts.
    collection_interval_seconds: Mapped[float | None] = mapped_column(Float)


class ConfigurationHistory(AnalyticsEvent):
    __tablename__ = "configuration_history"
    __table_args__ = (
        UniqueConstraint("event_id"),
        Index("ix_configuration_history_timestamp", "timestamp"),
        Index("ix_configuration_history_source_timestamp", "source", "timestamp"),
        Index(
            "ix_configuration_history_entity_type_entity_id_timestamp",
            "entity_type",
            "entity_id",
            "timestamp",
        ),
        Index("ix_configuration_history_parameter_name", "parameter_name"),
        Index("ix_configuration_history_change_type_timestamp", "change_type", "timestamp"),
    )
    free_text_columns = ("change_reason", "rollback_reason")
    secret_parameter_column = "parameter_name"

    entity_type: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[str] = mapped_column(String(64))
    parameter_name: Mapped[str] = mapped_column(String(128))
    old_value: Mapped[dict[str, Any] | None]
    new_value: Mapped[dict[str, Any] | None]
    changed_by: Mapped[str] = mapped_column(String(64), default="system")
    change_reason: Mapped[str | None] = mapped_column(Text)
    change_type: Mapped[str] = mapped_column(String(16), default="manual")
    performance_before: Mapped[dict[str, Any] | None]
    performance_after: Mapped[dict[str, Any] | None]
    was_successful: Mapped[bool | None] = mapped_column(Boolean)
    was_rolled_back: Mapped[bool] = mapped_column(Boolean, default=False)
    rollback_reason: Mapped[str | None] = mapped_column(Text)


class SiteOperatingSchedule(Base):
    """A site's hours for one weekday. Times are local to the site's IANA time zone."""

    __tablename__ = "site_operating_schedules"
    __table_args__ = (
        UniqueConstraint("site_id", "day_of_week"),
        Index("ix_site_operating_schedules_updated_at", "updated_at"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(String(64))
    day_of_week: Mapped[int] = mapped_column(SmallInteger)  # 0 = Monday ... 6 = Sunday
    open_time: Mapped[time | None] = mapped_column(Time)
    close_time: Mapped[time | None] = mapped_column(Time)
    is_closed: Mapped[bool] = mapped_column(Boolean, default=False)
    is_maintenance_window: Mapped[bool] = mapped_column(Boolean, default=False)
    expected_transaction_volume: Mapped[int | None] = mapped_column(Integer)
    peak_hours_start: Mapped[time | None] = mapped_column(Time)
    peak_hours_end: Mapped[time | None] = mapped_column(Time)
    notes: Mapped[str | None] = mapped_column(Text)
    special_considerations: Mapped[dict[str, Any] | None]
    source: Mapped[str] = _source_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


EVENT_MODELS: tuple[type[AnalyticsEvent], ...] = (
    APIRequestLog,
    DeviceStateHistory,
    JobOutcome,
    ErrorLog,
    UserActivity,
    DeviceMetrics,
    ConfigurationHistory,
)


# --- rollups ------------------------------------------------------------------------------

# The device metrics the charts draw; each rollup row keeps, per metric, the sum and count of
# the samples that carried it (so that an average over any set of rows is exact), its
# minimum and maximum.
CHART_METRICS: Final = (
    "cpu_percent",
    "memory_percent",
    "disk_percent",
    "network_latency_ms",
    "transaction_count",
    "error_rate",
)


class MetricsRollup(Base):
    """Samples over one interval: per chart metric the sum and count of the samples carrying
    it, its minimum and maximum."""

    __abstract__ = True

    samples: Mapped[int] = mapped_column(Integer)
    cpu_percent_sum: Mapped[float | None] = mapped_column(Float)
    cpu_percent_count: Mapped[int] = mapped_column(Integer)
    cpu_percent_min: Mapped[float | None] = mapped_column(Float)
    cpu_percent_max: Mapped[float | None] = mapped_column(Float)
    memory_percent_sum: Mapped[float | None] = mapped_column(Float)
    memory_percent_count: Mapped[int] = mapped_column(Integer)
    memory_percent_min: Mapped[float | None] = mapped_column(Float)
    memory_percent_max: Mapped[float | None] = mapped_column(Float)
    disk_percent_sum: Mapped[float | None] = mapped_column(Float)
    disk_percent_count: Mapped[int] = mapped_column(Integer)
    disk_percent_min: Mapped[float | None] = mapped_column(Float)
    disk_percent_max: Mapped[float | None] = mapped_column(Float)
    network_latency_ms_sum: Mapped[float | None] = mapped_column(Float)
    network_latency_ms_count: Mapped[int] = mapped_column(Integer)
    network_latency_ms_min: Mapped[float | None] = mapped_column(Float)
    network_latency_ms_max: Mapped[float | None] = mapped_column(Float)
    transaction_count_sum: Mapped[float | None] = mapped_column(Float)
    transaction_count_count: Mapped[int] = mapped_column(Integer)
    transaction_count_min: Mapped[float | None] = mapped_column(Float)
    transaction_count_max: Mapped[float | None] = mapped_column(Float)
    error_rate_sum: Mapped[float | None] = mapped_column(Float)
    error_rate_count: Mapped[int] = mapped_column(Integer)
    error_rate_min: Mapped[float | None] = mapped_column(Float)
    error_rate_max: Mapped[float | None] = mapped_column(Float)


class DeviceMetricsRollup(MetricsRollup):
    """One device's samples over one interval (``bucket`` is the interval's start)."""

    __abstract__ = True

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True)


class DeviceMetricsMinute(DeviceMetricsRollup):
    __tablename__ = "device_metrics_minute"
    __table_args__ = (Index("ix_device_metrics_minute_bucket", "bucket"),)


class DeviceMetricsHour(DeviceMetricsRollup):
    __tablename__ = "device_metrics_hour"
    __table_args__ = (Index("ix_device_metrics_hour_bucket", "bucket"),)


class FleetMetricsHour(MetricsRollup):
    """Every device's samples over one hour (fleet charts), and how many devices sent them."""

    __tablename__ = "fleet_metrics_hour"

    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    devices: Mapped[int] = mapped_column(Integer)


class APIRequestMinute(Base):
    """One route's requests over one minute: counts, errors and a latency histogram.

    ``latency_histogram`` maps the index of a bucket of ``LATENCY_BOUNDS_MS``
    (homepot.analytics.rollups) to how many requests took that long, so that percentiles
    over any number of minutes come from adding histograms, never from raw rows.
    Requests that matched no route have route ``""``.
    """

    __tablename__ = "api_request_minute"
    __table_args__ = (Index("ix_api_request_minute_bucket", "bucket"),)

    route: Mapped[str] = mapped_column(String(512), primary_key=True)
    method: Mapped[str] = mapped_column(String(10), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer)
    client_errors: Mapped[int] = mapped_column(Integer)
    server_errors: Mapped[int] = mapped_column(Integer)
    latency_sum_ms: Mapped[float] = mapped_column(Float)
    latency_max_ms: Mapped[float] = mapped_column(Float)
    latency_histogram: Mapped[dict[str, Any]]


class RollupProgress(Base):
    """How far each rollup has read its raw table.

    ``last_id``: every raw row with a smaller or equal id has been rolled up.
    ``covered_until``: buckets before it are complete (up to rows arriving later than the
    rollup's settling time, which the next pass adds).
    """

    __tablename__ = "rollup_progress"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)
    covered_until: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


ROLLUP_MODELS: tuple[type[Base], ...] = (
    DeviceMetricsMinute,
    DeviceMetricsHour,
    FleetMetricsHour,
    APIRequestMinute,
    RollupProgress,
)
