"""The Phase 3 gate: is there enough clean, fresh data in each of the eight analytics tables?

For every table the report gives its rows (and whether the 1,000-row target is met), the time
span covered, freshness (the age of the newest row), the null rate of every column, values out
of range (percentages outside 0-100, negative durations, sizes and counts, timestamps in the
future), duplicate events and, for ``device_metrics``, the devices that stopped reporting.

Everything is computed with aggregate SQL, a few statements per table whatever its size: one
pass for counts, null counts, time bounds and out-of-range counts, one grouped pass for
duplicates and one for each device's newest sample.

Duplicate events are rows sharing a table's *natural key* (:attr:`TableCheck.natural_key`),
the facts that identify one event whatever its ``event_id``: a device's sample at one instant,
one job's outcome on one device and attempt, one configuration parameter changed at one
instant. The unique ``event_id`` already stops a replayed batch; this catches the same event
recorded twice under two ids.

Only real rows (``source = device``) are judged unless simulated ones are included: the
simulation's rows (demo, backfill, sample data, simulated terminals) say nothing about the
data a model would be trained on. The report says how many simulated rows were left out, and
says so plainly when there is nothing but simulated data.

A device *stopped reporting* when its newest sample is older than ``stopped_after`` compared
with the newest sample of the other terminals of its site. Comparing with its own site, not
with the clock, keeps a store that is closed for the night (every terminal silent) from being
flagged, while one dead terminal in an open store is.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Table, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

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
from homepot.analytics.provenance import left_out_note, real_rows_only, simulated_rows
from homepot.db import Base, utcnow
from homepot.device.models import Device

DEFAULT_MIN_ROWS = 1000
DEFAULT_MAX_STALENESS = timedelta(hours=24)
DEFAULT_MAX_NULL_RATE = 0.05
DEFAULT_STOPPED_AFTER = timedelta(minutes=15)
# A timestamp this far ahead of the server's clock is "in the future" (devices' clocks drift;
# the device protocol refuses samples more than 5 minutes ahead).
FUTURE_TOLERANCE = timedelta(minutes=5)


@dataclass(frozen=True)
class RangeCheck:
    """Values of ``column`` below ``minimum`` or above ``maximum`` are out of range."""

    name: str
    column: str
    minimum: float | None = None
    maximum: float | None = None
    # The minimum itself is out of range too (a collection interval of 0 s).
    exclusive_minimum: bool = False

    def condition(self, table: Table) -> ColumnElement[bool]:
        column = table.c[self.column]
        conditions: list[ColumnElement[bool]] = []
        if self.minimum is not None:
            conditions.append(
                column <= self.minimum if self.exclusive_minimum else column < self.minimum
            )
        if self.maximum is not None:
            conditions.append(column > self.maximum)
        return or_(*conditions)


def _percent(column: str) -> RangeCheck:
    return RangeCheck(f"{column} outside 0-100", column, 0, 100)


def _non_negative(column: str) -> RangeCheck:
    return RangeCheck(f"{column} negative", column, 0)


@dataclass(frozen=True)
class TableCheck:
    """What is checked in one analytics table."""

    model: type[Base]
    natural_key: tuple[str, ...]
    time_column: str = "timestamp"
    # Configuration (site schedules) is not expected to change every day: no freshness check.
    is_event_stream: bool = True
    ranges: tuple[RangeCheck, ...] = ()
    # Nullable columns a row is of little use without: their null rate is held to the
    # threshold. Every column's null rate is reported.
    required: tuple[str, ...] = ()

    @property
    def table(self) -> Table:
        table = self.model.__table__
        assert isinstance(table, Table)
        return table

    @property
    def name(self) -> str:
        return self.table.name


CHECKS: tuple[TableCheck, ...] = (
    TableCheck(
        APIRequestLog,
        natural_key=("request_id",),
        ranges=(
            _non_negative("response_time_ms"),
            _non_negative("request_size_bytes"),
            _non_negative("response_size_bytes"),
            RangeCheck("status_code outside 100-599", "status_code", 100, 599),
        ),
        required=("route",),
    ),
    TableCheck(DeviceStateHistory, natural_key=("device_id", "timestamp", "new_state")),
    TableCheck(
        JobOutcome,
        natural_key=("job_id", "device_id", "retry_count", "status"),
        ranges=(_non_negative("duration_ms"), _non_negative("retry_count")),
    ),
    TableCheck(ErrorLog, natural_key=("timestamp", "error_code", "device_id", "user_id")),
    TableCheck(
        UserActivity,
        natural_key=("user_id", "session_id", "timestamp", "activity_type", "element_id"),
        ranges=(_non_negative("duration_ms"),),
    ),
    TableCheck(
        DeviceMetrics,
        natural_key=("device_id", "timestamp"),
        ranges=(
            _percent("cpu_percent"),
            _percent("memory_percent"),
            _percent("disk_percent"),
            _percent("error_rate"),
            _non_negative("network_latency_ms"),
            _non_negative("transaction_count"),
            _non_negative("transaction_volume"),
            _non_negative("active_connections"),
            _non_negative("queue_depth"),
            RangeCheck(
                "collection_interval_seconds not positive",
                "collection_interval_seconds",
                0,
                exclusive_minimum=True,
            ),
        ),
        required=("cpu_percent", "memory_percent", "disk_percent"),
    ),
    TableCheck(
        ConfigurationHistory,
        natural_key=("entity_type", "entity_id", "parameter_name", "timestamp"),
    ),
    TableCheck(
        SiteOperatingSchedule,
        natural_key=("site_id", "day_of_week"),
        time_column="updated_at",
        is_event_stream=False,
        ranges=(
            RangeCheck("day_of_week outside 0-6", "day_of_week", 0, 6),
            _non_negative("expected_transaction_volume"),
        ),
    ),
)
TABLE_NAMES: tuple[str, ...] = tuple(check.name for check in CHECKS)


@dataclass(frozen=True)
class Thresholds:
    min_rows: int = DEFAULT_MIN_ROWS
    max_staleness: timedelta = DEFAULT_MAX_STALENESS
    max_null_rate: float = DEFAULT_MAX_NULL_RATE
    stopped_after: timedelta = DEFAULT_STOPPED_AFTER


class ThresholdsRead(BaseModel):
    min_rows: int
    max_staleness_hours: float
    max_null_rate: float
    stopped_after_minutes: float
    max_out_of_range: int = Field(0, description="Any value out of range fails the gate")
    max_duplicates: int = Field(0, description="Any duplicate event fails the gate")

    @classmethod
    def of(cls, thresholds: Thresholds) -> ThresholdsRead:
        return cls(
            min_rows=thresholds.min_rows,
            max_staleness_hours=thresholds.max_staleness.total_seconds() / 3600,
            max_null_rate=thresholds.max_null_rate,
            stopped_after_minutes=thresholds.stopped_after.total_seconds() / 60,
        )


class StoppedDevice(BaseModel):
    device_id: str
    site_id: str | None = Field(description="Null when the device is not in the devices table")
    last_sample_at: datetime
    site_last_sample_at: datetime = Field(
        description="The newest sample of the other terminals it is compared with"
    )
    silent_minutes: float = Field(description="How long it has been silent while they reported")


class TableQuality(BaseModel):
    table: str
    rows: int
    min_rows: int
    target_met: bool
    oldest: datetime | None
    newest: datetime | None
    span_hours: float | None = Field(description="From the oldest to the newest row")
    freshness_hours: float | None = Field(
        description="Age of the newest row; null for configuration tables and empty tables"
    )
    null_rates: dict[str, float] = Field(description="Share of rows (0-1) with NULL, per column")
    required_columns: list[str] = Field(description="Columns whose null rate is gated")
    simulated_rows_left_out: int = Field(
        description="Rows with source 'simulated' not judged (0 when they are included)"
    )
    out_of_range: dict[str, int] = Field(description="Rows failing each range check (>0 only)")
    future_timestamps: int
    duplicate_key: list[str] = Field(description="The natural key duplicates are counted on")
    duplicates: int = Field(description="Rows beyond the first sharing a natural key")
    stopped_devices: list[StoppedDevice] = Field(default_factory=list)
    problems: list[str] = Field(description="Why the table fails the gate; empty when it passes")
    passed: bool


class QualityReport(BaseModel):
    generated_at: datetime
    thresholds: ThresholdsRead
    passed: bool
    failing_tables: list[str]
    include_simulated: bool = Field(
        description="Whether rows of the simulation (source 'simulated') were judged too"
    )
    simulated_rows_left_out: int = Field(description="Simulated rows not judged, all tables")
    provenance_note: str | None = Field(
        description="Set when simulated rows were left out: how many, and how to include "
        "them; it says so plainly when every row is simulated"
    )
    tables: list[TableQuality]
    elapsed_ms: float = Field(description="Time the report took to compute")

    def summary(self) -> str:
        """Each problem of each failing table, e.g. ``error_logs has 0 rows (< 1,000)``."""
        return "; ".join(
            f"{table.table} {problem}"
            for table in self.tables
            if not table.passed
            for problem in table.problems
        )


Connection = AsyncConnection | AsyncSession


@dataclass
class _Aggregates:
    rows: int = 0
    non_null: dict[str, int] = field(default_factory=dict)
    oldest: datetime | None = None
    newest: datetime | None = None
    out_of_range: dict[str, int] = field(default_factory=dict)
    future: int = 0


async def _simulated_rows(connection: Connection, check: TableCheck) -> int:
    table = check.table
    statement = select(func.count()).select_from(table).where(simulated_rows(table))
    return int(await connection.scalar(statement) or 0)


async def _aggregates(
    connection: Connection, check: TableCheck, now: datetime, judged: list[ColumnElement[bool]]
) -> _Aggregates:
    """Counts, non-null counts, time bounds and out-of-range counts in one statement."""
    table = check.table
    time_column = table.c[check.time_column]
    columns: list[Any] = [
        func.count().label("rows"),
        func.min(time_column).label("oldest"),
        func.max(time_column).label("newest"),
        _count_where(time_column > now + FUTURE_TOLERANCE).label("future"),
    ]
    names = [c.name for c in table.c]
    columns += [func.count(table.c[name]).label(f"nn_{index}") for index, name in enumerate(names)]
    columns += [
        _count_where(rc.condition(table)).label(f"oor_{index}")
        for index, rc in enumerate(check.ranges)
    ]
    statement = select(*columns).select_from(table).where(*judged)
    row = (await connection.execute(statement)).one()._mapping
    return _Aggregates(
        rows=int(row["rows"] or 0),
        non_null={name: int(row[f"nn_{index}"] or 0) for index, name in enumerate(names)},
        oldest=row["oldest"],
        newest=row["newest"],
        out_of_range={rc.name: int(row[f"oor_{i}"] or 0) for i, rc in enumerate(check.ranges)},
        future=int(row["future"] or 0),
    )


def _count_where(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


async def _duplicates(
    connection: Connection, check: TableCheck, judged: list[ColumnElement[bool]]
) -> int:
    """Rows beyond the first of each natural key (a NULL single-column key is no key).

    A grouped count, not COUNT(DISTINCT): SQLite runs it several times faster.
    """
    table = check.table
    key = [table.c[name] for name in check.natural_key]
    groups = select(func.count().label("n")).select_from(table).where(*judged)
    if len(key) == 1:
        groups = groups.where(key[0].is_not(None))
    duplicated = groups.group_by(*key).having(func.count() > 1).subquery()
    statement = select(func.coalesce(func.sum(duplicated.c.n - 1), 0))
    return int(await connection.scalar(statement) or 0)


async def _stopped_devices(
    connection: Connection, stopped_after: timedelta, judged: list[ColumnElement[bool]]
) -> list[StoppedDevice]:
    """Devices silent for ``stopped_after`` while the other terminals of their site reported."""
    metrics = DeviceMetrics.__table__
    devices = Device.__table__
    assert isinstance(metrics, Table)
    assert isinstance(devices, Table)
    latest = (
        select(metrics.c.device_id, func.max(metrics.c.timestamp).label("last_sample_at"))
        .where(*judged)
        .group_by(metrics.c.device_id)
        .subquery()
    )
    statement = select(latest.c.device_id, latest.c.last_sample_at, devices.c.site_id).join_from(
        latest, devices, devices.c.device_id == latest.c.device_id, isouter=True
    )
    result = await connection.execute(statement)
    by_site: dict[str | None, list[tuple[str, datetime]]] = defaultdict(list)
    for device_id, last_sample_at, site_id in result.all():
        by_site[site_id].append((device_id, last_sample_at))
    stopped: list[StoppedDevice] = []
    for site_id, members in by_site.items():
        if len(members) < 2:
            continue  # nothing to compare a lone terminal with
        for device_id, last in members:
            others = max(moment for other, moment in members if other != device_id)
            if others - last > stopped_after:
                stopped.append(
                    StoppedDevice(
                        device_id=device_id,
                        site_id=site_id,
                        last_sample_at=last,
                        site_last_sample_at=others,
                        silent_minutes=round((others - last).total_seconds() / 60, 1),
                    )
                )
    return sorted(stopped, key=lambda device: (device.site_id or "", device.device_id))


def _rows(count: int) -> str:
    return f"{count:,} row" if count == 1 else f"{count:,} rows"


def _hours(delta: timedelta) -> float:
    return round(delta.total_seconds() / 3600, 2)


def _judge(
    check: TableCheck,
    data: _Aggregates,
    thresholds: Thresholds,
    now: datetime,
    duplicates: int,
    stopped: Sequence[StoppedDevice],
    simulated_left_out: int,
) -> TableQuality:
    null_rates = {
        name: round(1 - count / data.rows, 4) if data.rows else 0.0
        for name, count in data.non_null.items()
    }
    problems: list[str] = []
    target_met = data.rows >= thresholds.min_rows
    if not target_met:
        besides = f", not counting {simulated_left_out:,} simulated" if simulated_left_out else ""
        problems.append(f"has {_rows(data.rows)} (< {thresholds.min_rows:,}{besides})")
    freshness = None
    if check.is_event_stream and data.newest is not None:
        age = max(now - data.newest, timedelta(0))
        freshness = _hours(age)
        if age > thresholds.max_staleness:
            problems.append(
                f"newest row is {freshness:g} h old (> {_hours(thresholds.max_staleness):g} h)"
            )
    for column in check.required:
        if data.rows and null_rates[column] > thresholds.max_null_rate:
            problems.append(
                f"{column} is null in {null_rates[column]:.1%} of rows "
                f"(> {thresholds.max_null_rate:.1%})"
            )
    out_of_range = {name: count for name, count in data.out_of_range.items() if count}
    for name, count in out_of_range.items():
        problems.append(f"has {_rows(count)} with {name}")
    if data.future:
        problems.append(f"has {_rows(data.future)} with {check.time_column} in the future")
    if duplicates:
        problems.append(
            f"has {duplicates:,} duplicate event{'' if duplicates == 1 else 's'} "
            f"(same {', '.join(check.natural_key)})"
        )
    return TableQuality(
        table=check.name,
        rows=data.rows,
        min_rows=thresholds.min_rows,
        target_met=target_met,
        oldest=data.oldest,
        newest=data.newest,
        span_hours=_hours(data.newest - data.oldest) if data.newest and data.oldest else None,
        freshness_hours=freshness,
        null_rates=null_rates,
        required_columns=list(check.required),
        out_of_range=out_of_range,
        simulated_rows_left_out=simulated_left_out,
        future_timestamps=data.future,
        duplicate_key=list(check.natural_key),
        duplicates=duplicates,
        stopped_devices=list(stopped),
        problems=problems,
        passed=not problems,
    )


async def assess_quality(
    connection: Connection,
    thresholds: Thresholds | None = None,
    *,
    now: datetime | None = None,
    include_simulated: bool = False,
) -> QualityReport:
    """The quality report of the eight analytics tables; ``passed`` is the gate's verdict.

    Only real rows are judged unless ``include_simulated``. Stopped devices are reported,
    not gated: a terminal can be switched off on purpose.
    """
    thresholds = thresholds or Thresholds()
    started = utcnow()
    now = now or started
    tables: list[TableQuality] = []
    for check in CHECKS:
        judged = real_rows_only(check.table, include_simulated)
        data = await _aggregates(connection, check, now, judged)
        duplicates = await _duplicates(connection, check, judged) if data.rows else 0
        stopped: list[StoppedDevice] = []
        if check.model is DeviceMetrics and data.rows:
            stopped = await _stopped_devices(connection, thresholds.stopped_after, judged)
        left_out = 0 if include_simulated else await _simulated_rows(connection, check)
        tables.append(_judge(check, data, thresholds, now, duplicates, stopped, left_out))
    failing = [table.table for table in tables if not table.passed]
    counts = {table.table: (table.rows, table.simulated_rows_left_out) for table in tables}
    return QualityReport(
        generated_at=now,
        thresholds=ThresholdsRead.of(thresholds),
        passed=not failing,
        failing_tables=failing,
        include_simulated=include_simulated,
        simulated_rows_left_out=sum(left_out for _, left_out in counts.values()),
        provenance_note=left_out_note(counts, done="judged", doing="judge"),
        tables=tables,
        elapsed_ms=round((utcnow() - started).total_seconds() * 1000, 1),
    )
