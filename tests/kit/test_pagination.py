from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from homepot.kit.pagination import Position, decode_cursor, encode_cursor


def test_a_cursor_round_trips_and_is_url_safe() -> None:
    position = Position(time=datetime(2025, 12, 1, 13, 45, 0, 123456, tzinfo=UTC), id=2**40)
    cursor = encode_cursor(position)
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_cursor(cursor) == position


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not base64!",
        _b64("not json"),
        _b64("[1, 2]"),
        _b64('["2025-12-01T00:00:00", 1]'),  # naive time
        _b64('["2025-12-01T00:00:00Z", "1"]'),
        _b64('["2025-12-01T00:00:00Z", -1]'),
        _b64(f'["2025-12-01T00:00:00Z", {2**63}]'),
        _b64('["2025-12-01T00:00:00Z", 1, 2]'),
        "A" * 500,
    ],
)
def test_malformed_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(ValueError, match="malformed cursor"):
        decode_cursor(cursor)
