"""Version 7 message ids: the bits RFC 9562 fixes, the time they carry, their order."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from homepot.kit.ids import uuid7, uuid7_time


def test_a_uuid7_has_the_version_and_variant_bits_and_carries_its_time() -> None:
    before = datetime.now(UTC)
    value = uuid7()
    after = datetime.now(UTC)

    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    made = uuid7_time(value)
    assert made is not None
    assert before - timedelta(milliseconds=1) <= made <= after
    # The same value read back from its text, as a device's JSON carries it.
    assert uuid7_time(uuid.UUID(str(value))) == made


def test_a_given_time_is_kept_to_the_millisecond() -> None:
    at = datetime(2026, 12, 2, 23, 59, 59, 999_999, tzinfo=UTC)
    assert uuid7_time(uuid7(at)) == datetime(2026, 12, 2, 23, 59, 59, 999_000, tzinfo=UTC)


def test_ids_sort_by_their_time_and_never_repeat() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [uuid7(start + timedelta(milliseconds=n)) for n in range(200)]
    assert sorted(ids) == ids
    assert len({uuid7(start) for _ in range(1000)}) == 1000


def test_other_versions_carry_no_time() -> None:
    assert uuid7_time(uuid.uuid4()) is None
    assert uuid7_time(uuid.uuid5(uuid.NAMESPACE_DNS, "homepot")) is None
    assert uuid7_time(uuid.UUID(int=0)) is None
