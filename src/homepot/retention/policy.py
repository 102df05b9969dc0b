"""Which tables are pruned, after how many days, and the settings and flags that say so.

- The seven analytics event tables, ``health_checks`` and the chart rollups keep
  ``HOMEPOT_RETENTION_DAYS`` days (90 by default).
- ``message_receipts`` (which device messages were received, so that a redelivery is
  stored once) keeps RECEIPT_DAYS (8) days: longer than any redelivery, whatever the rest.
- ``audit_logs`` is the record of who read and changed what; it keeps 365 days, or
  ``HOMEPOT_RETENTION_DAYS`` when that is longer.
- ``site_operating_schedules`` is configuration, not events: it is kept forever (a schedule
  goes when its site is deleted), and only "forever" is accepted for it.

``HOMEPOT_RETENTION__TABLES`` (settings) and ``homepot retention run --table NAME=DAYS``
(command line, over the settings) override single tables; ``forever`` (or null in the
settings) keeps a table forever. Other tables (sites, devices, users, jobs and their
executions) are state, not history, and are never pruned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from homepot.analytics.models import (
    EVENT_MODELS,
    APIRequestMinute,
    DeviceMetricsHour,
    DeviceMetricsMinute,
    FleetMetricsHour,
    SiteOperatingSchedule,
)
from homepot.audit.models import AuditLog
from homepot.config import Settings
from homepot.db import Base
from homepot.device.models import RECEIPT_DAYS, HealthCheck, MessageReceipt

AUDIT_LOG_MIN_DAYS: Final = 365
# Rollups age like the rows they summarise (homepot.analytics.rollups).
ROLLUP_TABLES: Final[tuple[type[Base], ...]] = (
    DeviceMetricsMinute,
    DeviceMetricsHour,
    FleetMetricsHour,
    APIRequestMinute,
)
FOREVER: Final = "forever"

Source = Literal["default", "table default", "settings", "command line"]


class RetentionPolicyError(ValueError):
    """A retention setting or flag that cannot be applied; the message says what would."""


@dataclass(frozen=True)
class RetainedTable:
    """A table whose rows age out, judged by ``time_column``."""

    model: type[Base]
    time_column: str = "timestamp"
    # False: configuration that may only be kept forever.
    prunable: bool = True

    @property
    def name(self) -> str:
        return str(self.model.__tablename__)


RETAINED_TABLES: Final[tuple[RetainedTable, ...]] = (
    *(RetainedTable(model) for model in EVENT_MODELS),
    RetainedTable(HealthCheck),
    RetainedTable(MessageReceipt, time_column="received_at"),
    *(RetainedTable(model, time_column="bucket") for model in ROLLUP_TABLES),
    RetainedTable(AuditLog),
    RetainedTable(SiteOperatingSchedule, time_column="updated_at", prunable=False),
)
TABLES_BY_NAME: Final = {table.name: table for table in RETAINED_TABLES}


@dataclass(frozen=True)
class TablePolicy:
    """How long one table keeps its rows (``days`` None: forever), and who decided it."""

    table: RetainedTable
    days: int | None
    source: Source

    @property
    def name(self) -> str:
        return self.table.name

    def cutoff(self, as_of: datetime) -> datetime | None:
        """Rows strictly older than this go; None when the table is kept forever."""
        return None if self.days is None else as_of - timedelta(days=self.days)


def _default_days(table: RetainedTable, retention_days: int) -> tuple[int | None, Source]:
    if not table.prunable:
        return None, "table default"
    if table.model is MessageReceipt:
        return RECEIPT_DAYS, "table default"
    if table.model is AuditLog:
        return max(AUDIT_LOG_MIN_DAYS, retention_days), "table default"
    return retention_days, "default"


def _checked(name: str, days: int | None, where: str) -> RetainedTable:
    table = TABLES_BY_NAME.get(name)
    if table is None:
        raise RetentionPolicyError(
            f"{where}: {name!r} is not a table with a retention period; "
            f"choose from {', '.join(TABLES_BY_NAME)}"
        )
    if days is not None and days < 1:
        raise RetentionPolicyError(f"{where}: {name} must keep at least 1 day, got {days}")
    if days is not None and not table.prunable:
        raise RetentionPolicyError(
            f"{where}: {name} is configuration, not events, and is kept forever "
            f"(its rows go with their site); only {FOREVER!r} is accepted"
        )
    return table


def resolve_policy(
    settings: Settings, overrides: Mapping[str, int | None] | None = None
) -> list[TablePolicy]:
    """Every retained table's period: defaults, then the settings, then ``overrides``.

    Raises RetentionPolicyError for an unknown table or an impossible period.
    """
    chosen: dict[str, tuple[int | None, Source]] = {
        table.name: _default_days(table, settings.retention_days) for table in RETAINED_TABLES
    }
    for name, days in settings.retention.tables.items():
        _checked(name, days, "HOMEPOT_RETENTION__TABLES")
        chosen[name] = (days, "settings")
    for name, days in (overrides or {}).items():
        _checked(name, days, "--table")
        chosen[name] = (days, "command line")
    return [TablePolicy(table, *chosen[table.name]) for table in RETAINED_TABLES]


def parse_overrides(values: Iterable[str]) -> dict[str, int | None]:
    """``NAME=DAYS`` or ``NAME=forever`` pairs, as typed after ``--table``."""
    overrides: dict[str, int | None] = {}
    for value in values:
        name, sep, days_text = value.partition("=")
        name, days_text = name.strip(), days_text.strip()
        if not sep or not name or not days_text:
            raise RetentionPolicyError(
                f"--table {value!r}: expected NAME=DAYS or NAME={FOREVER}, e.g. device_metrics=30"
            )
        days: int | None
        if days_text.lower() == FOREVER:
            days = None
        else:
            try:
                days = int(days_text)
            except ValueError:
                raise RetentionPolicyError(
                    f"--table {value!r}: {days_text!r} is neither a whole number of days "
                    f"nor {FOREVER!r}"
                ) from None
        _checked(name, days, f"--table {value}")
        overrides[name] = days
    return overrides
