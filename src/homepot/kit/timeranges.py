"""Time ranges from what people type: a date (``2025-12-01``) or an ISO 8601 datetime.

A date used as an end bound means "up to and including that whole day", so ``end_date``
``2025-12-05`` covers everything before ``2025-12-06T00:00:00Z``. Dates are UTC days. A
datetime without an offset is taken as UTC. In a URL an unencoded ``+`` arrives as a space,
so ``2025-12-01T10:00:00 01:00`` is read as ``2025-12-01T10:00:00+01:00``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, PlainSerializer, PlainValidator, WithJsonSchema

# What every backend and Python's datetime can hold with room to spare: an offset, a default
# span or a day added to a bound inside this range never leaves Python's years 1 to 9999.
EARLIEST = datetime(2, 1, 1, tzinfo=UTC)
LATEST = datetime(9998, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# A time followed by a space and an offset: the "+" of "+01:00" decoded as a space.
_SPACE_FOR_PLUS = re.compile(r"^(.+[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")


def _outside(value: date | datetime) -> ValueError:
    return ValueError(
        f"{value.isoformat()} is outside the supported range "
        f"{EARLIEST.date().isoformat()} to {LATEST.date().isoformat()} (UTC)"
    )


def representable_utc(value: datetime) -> datetime:
    """``value`` in UTC (a naive one taken as UTC), or ValueError when outside EARLIEST..LATEST.

    The pydantic validator behind :data:`UtcDatetime`.
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise _outside(value) from None
    if not EARLIEST <= value <= LATEST:
        raise _outside(value)
    return value


UtcDatetime = Annotated[datetime, AfterValidator(representable_utc)]
"""A datetime from a client, as UTC, within the range every backend and Python can hold."""


def parse_time_bound(value: Any) -> date | datetime:
    """A date, or a datetime in UTC (naive ones are taken as UTC).

    Raises ValueError with a message that says which forms are accepted.
    """
    if isinstance(value, date) and not isinstance(value, datetime):
        if not EARLIEST.date() <= value <= LATEST.date():
            raise _outside(value)
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if _DATE_ONLY.match(text):
                value = date.fromisoformat(text)
            else:
                value = datetime.fromisoformat(_SPACE_FOR_PLUS.sub(r"\1+\2", text))
        except ValueError:
            raise ValueError(
                f"{value!r} is neither a date (YYYY-MM-DD) nor an ISO 8601 datetime "
                "(e.g. 2025-12-01T13:45:00Z or 2025-12-01T13:45:00+01:00)"
            ) from None
        if not isinstance(value, datetime):
            return parse_time_bound(value)
    if not isinstance(value, datetime):
        raise ValueError(f"expected a date or datetime string, got {type(value).__name__}")
    return representable_utc(value)


TimeBound = Annotated[
    date | datetime,
    PlainValidator(parse_time_bound),
    # Serialized as written back (ISO 8601): the union's own serializer cannot tell a datetime
    # from a date (one is a subclass of the other) and warns on every dump.
    PlainSerializer(lambda value: value.isoformat(), return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "description": "A date (YYYY-MM-DD, a UTC day) or an ISO 8601 datetime "
            "(UTC when it has no offset)",
            "examples": ["2025-12-01", "2025-12-01T13:45:00Z"],
        }
    ),
]
"""A query parameter type: a date or a datetime, validated with a message naming the forms."""


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


@dataclass(frozen=True)
class TimeRange:
    """``start <= t`` and ``t < end`` (or ``t <= end`` when ``end_inclusive``); None is open."""

    start: datetime | None = None
    end: datetime | None = None
    end_inclusive: bool = True

    @classmethod
    def between(cls, start: date | datetime | None, end: date | datetime | None) -> TimeRange:
        """The range from two bounds as typed: a date ``end`` includes that whole day.

        Raises ValueError when the range is empty because ``start`` lies after ``end``.
        """
        lower = start if isinstance(start, datetime) or start is None else _start_of(start)
        upper: datetime | None
        if end is None or isinstance(end, datetime):
            upper, end_inclusive = end, True
        elif end == date.max:  # the day after it does not exist: nothing lies beyond
            upper, end_inclusive = None, True
        else:
            upper, end_inclusive = _start_of(end) + timedelta(days=1), False
        if lower is not None and upper is not None:
            empty = lower > upper if end_inclusive else lower >= upper
            if empty:
                raise ValueError(
                    f"start_date ({lower.isoformat()}) is after end_date ({_describe(end)})"
                )
        return cls(start=lower, end=upper, end_inclusive=end_inclusive)


def _describe(bound: date | datetime | None) -> str:
    if bound is None or isinstance(bound, datetime):
        return bound.isoformat() if bound is not None else "open"
    return f"{bound.isoformat()}, the whole day"
