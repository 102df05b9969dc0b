from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from pydantic import TypeAdapter, ValidationError

from homepot.kit.timeranges import TimeRange, UtcDatetime, parse_time_bound


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-12-01", date(2025, 12, 1)),
        ("2025-12-01T13:45:00Z", datetime(2025, 12, 1, 13, 45, tzinfo=UTC)),
        ("2025-12-01T13:45:00+01:00", datetime(2025, 12, 1, 12, 45, tzinfo=UTC)),
        # A "+" left unencoded in a URL arrives as a space.
        ("2025-12-01T13:45:00 01:00", datetime(2025, 12, 1, 12, 45, tzinfo=UTC)),
        ("2025-12-01 13:45", datetime(2025, 12, 1, 13, 45, tzinfo=UTC)),
        ("2025-12-01T13:45:00.250", datetime(2025, 12, 1, 13, 45, 0, 250000, tzinfo=UTC)),
    ],
)
def test_parses_dates_and_datetimes_into_utc(text: str, expected: date | datetime) -> None:
    parsed = parse_time_bound(text)
    assert parsed == expected
    assert type(parsed) is type(expected)
    if isinstance(parsed, datetime):
        assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text", ["yesterday", "2025-13-01", "2025-12-01T25:00", "", "9999-12-31T23:00:00-05:00"]
)
def test_refuses_other_text_with_a_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"ISO 8601|outside the supported range"):
        parse_time_bound(text)


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01",
        "0001-01-01T00:00:00",
        "0001-01-01T05:00:00+14:00",  # year 0 in UTC
        "9999-12-31",
        "9999-12-31T23:00:00",
        "9999-12-31T23:00:00-05:00",  # year 10000 in UTC
    ],
)
def test_refuses_bounds_no_backend_can_hold_with_room_to_spare(text: str) -> None:
    with pytest.raises(ValueError, match="outside the supported range 0002-01-01 to 9998-12-31"):
        parse_time_bound(text)


def test_utc_datetimes_are_converted_and_bounded() -> None:
    adapter = TypeAdapter(UtcDatetime)
    assert adapter.validate_python("2025-12-01T10:00:00+01:00") == datetime(
        2025, 12, 1, 9, tzinfo=UTC
    )
    assert adapter.validate_python("2025-12-01T10:00:00").tzinfo is UTC
    for text in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "9999-06-01T00:00Z"):
        with pytest.raises(ValidationError, match="outside the supported range"):
            adapter.validate_python(text)


def test_an_end_date_includes_its_whole_day() -> None:
    time_range = TimeRange.between(date(2025, 12, 1), date(2025, 12, 5))
    assert time_range.start == datetime(2025, 12, 1, tzinfo=UTC)
    assert time_range.end == datetime(2025, 12, 6, tzinfo=UTC)
    assert time_range.end_inclusive is False
    assert TimeRange.between(None, date.max).end is None


def test_an_end_datetime_is_inclusive_and_may_equal_the_start() -> None:
    moment = datetime(2025, 12, 1, 8, tzinfo=timezone(timedelta(hours=2)))
    time_range = TimeRange.between(moment, moment)
    assert time_range.end == moment
    assert time_range.end_inclusive is True


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (date(2025, 12, 2), date(2025, 12, 1)),
        (datetime(2025, 12, 1, 0, 0, 1, tzinfo=UTC), datetime(2025, 12, 1, tzinfo=UTC)),
        (date(2025, 12, 2), datetime(2025, 12, 1, 23, 59, tzinfo=UTC)),
    ],
)
def test_start_after_end_is_refused(start: date, end: date) -> None:
    with pytest.raises(ValueError, match="start_date .* is after end_date"):
        TimeRange.between(start, end)
