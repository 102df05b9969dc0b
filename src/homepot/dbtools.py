"""Read-only inspection of the 23 tables: row counts and the newest rows of one table.

This is what ``homepot db count`` / ``homepot db show`` and ``scripts/query-db.sh`` print.
Table and column names are checked against the ORM metadata before any SQL is built, and
filter values are bound parameters converted to the column's type, never spliced into SQL.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any, Final

from sqlalchemy import JSON, ColumnElement, Enum, Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from homepot.kit.redaction import REDACTED, is_sensitive_key
from homepot.models import (
    ALL_MODELS,
    CORE_MODELS,
    DERIVED_MODELS,
    INSIGHTS_MODELS,
    MODELS_BY_TABLE,
    OPERATIONAL_MODELS,
)

# The spec's grouping: 6 core tables, 5 operational analytics tables, 3 AI-focused tables;
# then the orchestrator's job_executions, in a group "operational" of its own.
AI_FOCUSED_TABLES: Final = frozenset(
    {"device_metrics", "configuration_history", "site_operating_schedules"}
)
TABLE_NAMES: Final = tuple(model.__tablename__ for model in ALL_MODELS)
# Weekly schedules are configuration, read per site and day; everything else newest first.
_NATURAL_ORDER: Final = {"site_operating_schedules": ("site_id", "day_of_week")}
_TIME_COLUMNS: Final = ("timestamp", "created_at", "bucket")
_TRUE: Final = frozenset({"true", "t", "yes", "y", "1"})
_FALSE: Final = frozenset({"false", "f", "no", "n", "0"})


class InspectionError(ValueError):
    """A table, column or filter that cannot be used; the message says what would work."""


@dataclass(frozen=True)
class TableCount:
    table: str
    group: str  # "core", "analytics", "AI-focused", "operational", "insights" or "rollups"
    rows: int


@dataclass(frozen=True)
class TableRows:
    table: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    order: str  # how the rows are sorted, for the reader


def table_group(table: str) -> str:
    if MODELS_BY_TABLE[table] in CORE_MODELS:
        return "core"
    if MODELS_BY_TABLE[table] in OPERATIONAL_MODELS:
        return "operational"
    if MODELS_BY_TABLE[table] in INSIGHTS_MODELS:
        return "insights"
    if MODELS_BY_TABLE[table] in DERIVED_MODELS:
        return "rollups"
    return "AI-focused" if table in AI_FOCUSED_TABLES else "analytics"


def _table(name: str) -> Table:
    model = MODELS_BY_TABLE.get(name)
    if model is None:
        raise InspectionError(f"unknown table {name!r}; the tables are: {', '.join(TABLE_NAMES)}")
    table = model.__table__
    assert isinstance(table, Table)
    return table


async def count_rows(connection: AsyncConnection | AsyncSession) -> list[TableCount]:
    """Every table with its row count: core tables first, in the order of the spec."""
    counts = []
    for name in TABLE_NAMES:
        rows = await connection.scalar(select(func.count()).select_from(_table(name)))
        counts.append(TableCount(table=name, group=table_group(name), rows=int(rows or 0)))
    return counts


_EXPECTED: Final[dict[type, str]] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    datetime: "an ISO 8601 date-time",
    time: "a time of day (HH:MM[:SS])",
}


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered not in _TRUE | _FALSE:
        raise ValueError(raw)
    return lowered in _TRUE


def _parse_datetime(raw: str) -> datetime:
    moment = datetime.fromisoformat(raw)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_PARSERS: Final[dict[type, Any]] = {
    bool: _parse_bool,
    int: int,
    float: float,
    datetime: _parse_datetime,
    time: time.fromisoformat,
}


def _convert(table: Table, column_name: str, raw: str) -> Any:
    """The filter value as the column's Python type, or an error naming what is expected."""
    column_type = table.c[column_name].type
    if isinstance(column_type, Enum) and column_type.enum_class is not None:
        allowed = [member.value for member in column_type.enum_class]
        if raw not in allowed:
            raise InspectionError(
                f"{table.name}.{column_name} must be one of {', '.join(allowed)}; got {raw!r}"
            )
        return column_type.enum_class(raw)
    try:
        python_type = column_type.python_type
    except NotImplementedError:
        return raw
    if isinstance(column_type, JSON) or python_type in (dict, list):
        raise InspectionError(f"{table.name}.{column_name} holds JSON and cannot be filtered")
    parser = _PARSERS.get(python_type)
    if parser is None:
        return raw
    try:
        return parser(raw)
    except ValueError:
        raise InspectionError(
            f"{table.name}.{column_name} expects {_EXPECTED[python_type]}; got {raw!r}"
        ) from None


def parse_filters(table_name: str, terms: Sequence[str]) -> list[ColumnElement[bool]]:
    """``column=value`` terms as equality conditions (all must hold) with bound values."""
    table = _table(table_name)
    conditions: list[ColumnElement[bool]] = []
    for term in terms:
        column_name, sep, raw = term.partition("=")
        column_name = column_name.strip()
        if not sep or not column_name:
            raise InspectionError(f"filter {term!r} is not of the form column=value")
        if column_name not in table.c:
            raise InspectionError(
                f"table {table.name} has no column {column_name!r}; its columns are: "
                f"{', '.join(table.c.keys())}"
            )
        conditions.append(table.c[column_name] == _convert(table, column_name, raw))
    return conditions


def _shown(column: str, value: Any) -> Any:
    if value is not None and is_sensitive_key(column):
        return REDACTED
    if isinstance(value, enum.Enum):
        return value.value
    return value


async def show_rows(
    connection: AsyncConnection | AsyncSession,
    table_name: str,
    *,
    limit: int = 20,
    where: Sequence[str] = (),
) -> TableRows:
    """The newest ``limit`` rows of a table that match every ``column=value`` filter.

    Secret columns (a user's password hash) are shown as ``[REDACTED]``.
    """
    table = _table(table_name)
    conditions = parse_filters(table_name, where)
    order_by: list[ColumnElement[Any]]
    if table.name in _NATURAL_ORDER:
        order_names = _NATURAL_ORDER[table.name]
        order_by = [table.c[name] for name in order_names]
        order = "by " + ", ".join(order_names)
    else:
        time_column = next((name for name in _TIME_COLUMNS if name in table.c), None)
        order_by = [table.c[time_column].desc()] if time_column else []
        order = f"newest first by {time_column}" if time_column else "by primary key, newest first"
        order_by += [column.desc() for column in table.primary_key.columns]
    statement = select(table).where(*conditions).order_by(*order_by).limit(limit)
    result = await connection.execute(statement)
    columns = tuple(table.c.keys())
    rows = [{name: _shown(name, row[name]) for name in columns} for row in result.mappings()]
    return TableRows(table=table.name, columns=columns, rows=rows, order=order)
