"""What the analytics recorder knows of each event table, and how it cleans values.

:class:`_TableShape` is one table's columns, defaults and limits, computed once
(``_SHAPES``, by table name); it completes and redacts a producer's fields into a row.
Values are made JSON-safe when an event is recorded (:func:`json_safe`,
:func:`clean_json`), so that no value can fail a batch later, in the database or in the
spool. :func:`_encode` and :func:`_decode_row` carry a row's datetimes through the spool's
JSON.
"""

from __future__ import annotations

import base64
import enum
import math
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, String, Table
from sqlalchemy.sql.schema import ColumnDefault

from homepot.analytics.models import EVENT_MODELS, AnalyticsEvent
from homepot.db import UTCDateTime, new_event_id, utcnow
from homepot.kit.jsonlimits import MAX_DEPTH
from homepot.kit.redaction import REDACTED, TOO_DEEP, is_sensitive_key, mask_text

Row = dict[str, Any]
QueuedEvent = tuple[str, Row]  # (table name, complete row)


@dataclass(frozen=True)
class _TableShape:
    """What the recorder needs to know about one event table, computed once."""

    model: type[AnalyticsEvent]
    table: Table
    columns: tuple[str, ...]
    static_defaults: dict[str, Any]
    json_columns: frozenset[str]
    text_columns: frozenset[str]
    datetime_columns: frozenset[str]
    max_lengths: dict[str, int]
    column_set: frozenset[str] = frozenset()
    # Text columns that are not free text: their length limit (unbounded: a huge number).
    plain_text_limits: dict[str, int] = field(default_factory=dict)
    # Every column with its static default (None where there is none), already storable.
    template: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: type[AnalyticsEvent]) -> _TableShape:
        table = model.__table__
        assert isinstance(table, Table)
        columns = tuple(c.name for c in table.columns if c.name != "id")
        static_defaults: dict[str, Any] = {}
        for column in table.columns:
            default = column.default
            if isinstance(default, ColumnDefault) and not default.is_callable:
                static_defaults[column.name] = default.arg
        shape = cls(
            model=model,
            table=table,
            columns=columns,
            column_set=frozenset(columns),
            static_defaults=static_defaults,
            json_columns=frozenset(c.name for c in table.columns if isinstance(c.type, JSON)),
            text_columns=frozenset(model.free_text_columns),
            datetime_columns=frozenset(
                c.name for c in table.columns if isinstance(c.type, UTCDateTime)
            ),
            max_lengths={
                c.name: c.type.length
                for c in table.columns
                if isinstance(c.type, String) and c.type.length and c.name != "event_id"
            },
        )
        for column in table.columns:
            if isinstance(column.type, String) and column.name not in shape.text_columns:
                limit = column.type.length if column.name != "event_id" else None
                shape.plain_text_limits[column.name] = limit or sys.maxsize
        for name in columns:
            default = static_defaults.get(name)
            shape.template[name] = None if default is None else shape.storable_value(name, default)
        return shape

    def complete(self, fields: Row) -> Row:
        """A full, redacted row: every column present, defaults applied, secrets removed."""
        if not fields.keys() <= self.column_set:
            unknown = fields.keys() - self.column_set
            raise ValueError(f"{self.table.name} has no column(s) {', '.join(sorted(unknown))}")
        row = self.template.copy()
        isfinite = math.isfinite
        plain_text_limits = self.plain_text_limits
        for name, value in fields.items():
            # The common plain values inline; the rest (text, JSON, others) in storable_value.
            kind = type(value)
            if kind is float:
                row[name] = value if isfinite(value) else None
            elif value is None or kind is int or kind is datetime or kind is bool:
                row[name] = value
            elif (
                kind is str
                and name in plain_text_limits
                and len(value) <= plain_text_limits[name]
                and "\x00" not in value
            ):
                row[name] = value  # an identifier or a code: nothing to mask, cut or strip
            else:
                row[name] = self.storable_value(name, value)
        secret_parameter = self.model.secret_parameter_column
        if secret_parameter and is_sensitive_key(str(row.get(secret_parameter) or "")):
            # The parameter itself is a secret (e.g. a config key "api_key"): keep that it
            # changed, never what it changed from or to.
            for name in self.json_columns:
                if row[name] is not None and name.endswith("_value"):
                    row[name] = {"value": REDACTED}
        if row["event_id"] is None:
            row["event_id"] = new_event_id()
        if row["timestamp"] is None:
            row["timestamp"] = utcnow()
        elif row["timestamp"].tzinfo is None:
            raise ValueError("timestamp must be timezone-aware (UTC)")
        return row

    def complete_value(self, name: str, value: Any) -> Any:
        """One column's value as :meth:`complete` stores it (the plain cases inline)."""
        kind = type(value)
        if kind is float:
            return value if math.isfinite(value) else None
        if value is None or kind is int or kind is datetime or kind is bool:
            return value
        if (
            kind is str
            and name in self.plain_text_limits
            and len(value) <= self.plain_text_limits[name]
            and "\x00" not in value
        ):
            return value
        return self.storable_value(name, value)

    def storable_value(self, name: str, value: Any) -> Any:
        """One column's value made JSON-safe, redacted, NUL-free and cut to the column."""
        kind = type(value)
        if kind is float:
            return value if math.isfinite(value) else None  # neither backend stores NaN/inf
        if kind is int or kind is bool or kind is datetime:
            return value
        if name in self.json_columns:
            return clean_json(value)
        if not isinstance(value, str | int | float | datetime):
            value = _scalar(value)
        elif isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, str):
            if name in self.text_columns:
                value = mask_text(value)
            if "\x00" in value:
                value = value.replace("\x00", "")
            limit = self.max_lengths.get(name)
            if limit is not None and len(value) > limit:
                value = value[:limit]
        return value


def clean_json(value: Any, depth: int = 0) -> Any:
    """``redact(json_safe(value))`` without NUL characters, in one pass (see both)."""
    if type(value) is dict and depth < MAX_DEPTH:
        return _clean_mapping(value, depth)
    if isinstance(value, str):
        value = mask_text(value)
        return value.replace("\x00", "") if "\x00" in value else value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= MAX_DEPTH:
        return TOO_DEEP
    if isinstance(value, Mapping):
        return _clean_mapping(value, depth)
    if isinstance(value, list | tuple):
        return [clean_json(item, depth + 1) for item in value]
    if isinstance(value, set | frozenset):
        return [clean_json(item, depth + 1) for item in json_safe(value, depth)]
    return clean_json(_scalar(value), depth)


def _clean_mapping(value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
    cleaned: dict[str, Any] = {}
    for key, item in value.items():
        if type(key) is not str:
            key = _key(key)
        name = key.replace("\x00", "") if "\x00" in key else key
        if is_sensitive_key(key):
            cleaned[name] = REDACTED
            continue
        # The common leaves inline (a call each is most of a small object's cost).
        kind = type(item)
        if kind is float:
            cleaned[name] = item if math.isfinite(item) else None
        elif item is None or kind is int or kind is bool:
            cleaned[name] = item
        elif kind is str and "\x00" not in item:
            cleaned[name] = mask_text(item)
        else:
            cleaned[name] = clean_json(item, depth + 1)
    return cleaned


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON (dict, list, str, int, float, bool, None), decided at record
    time so that no value can fail its batch later:

    - ``uuid.UUID`` -> its text (``"0f1e..."`` with dashes); enums -> their value;
    - ``Decimal`` -> float (a non-finite one -> null); float NaN / Infinity -> null;
    - ``datetime``, ``date``, ``time`` -> ISO 8601 text; ``timedelta`` -> seconds (float);
    - ``bytes`` -> UTF-8 text, or ``"base64:..."`` when it is not UTF-8;
    - sets and tuples -> lists (a set sorted when its items can be); other keys -> text;
    - anything else -> ``str(value)``; nesting deeper than ``MAX_DEPTH`` -> ``TOO_DEEP``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= MAX_DEPTH:
        return TOO_DEEP
    if isinstance(value, Mapping):
        return {_key(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, depth + 1) for v in value]
    if isinstance(value, set | frozenset):
        try:
            items = sorted(value)
        except TypeError:
            items = list(value)
        return [json_safe(v, depth + 1) for v in items]
    return _scalar(value)


def _key(key: Any) -> str:
    return key if isinstance(key, str) else str(json_safe(key, MAX_DEPTH - 1))


def _scalar(value: Any) -> Any:
    """One value that is not plain JSON (see :func:`json_safe`)."""
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


_SHAPES: dict[str, _TableShape] = {m.__tablename__: _TableShape.of(m) for m in EVENT_MODELS}


def _encode(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    raise TypeError(f"cannot spool a value of type {type(value).__name__}")


def _decode_row(shape: _TableShape, row: Row) -> Row:
    for name in shape.datetime_columns:
        if isinstance(row.get(name), str):
            row[name] = datetime.fromisoformat(row[name]).astimezone(UTC)
    return row
