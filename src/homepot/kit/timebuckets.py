"""Group timestamps into fixed-width buckets in SQL, the same way on SQLite and PostgreSQL.

Charts want a few hundred points, not every sample: a bucket is the start of its interval in
seconds since the epoch, computed by the database so that only the aggregates travel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, cast, extract, literal
from sqlalchemy.orm import InstrumentedAttribute

MIN_BUCKET_SECONDS = 1


def epoch_bin(column: InstrumentedAttribute[datetime], seconds: int) -> ColumnElement[int]:
    """The number of the ``seconds``-wide bin since the epoch that holds ``column``.

    An integer on both backends: the remainder is taken off before dividing, so the division
    is exact (SQLAlchemy 2 renders ``/`` as true division, and SQLite may lack floor()).
    """
    epoch = extract("epoch", column)
    return cast((epoch - epoch % seconds) / seconds, BigInteger)


@dataclass(frozen=True)
class Buckets:
    """``points`` buckets of ``seconds`` each covering ``since`` to ``until``."""

    since: datetime
    until: datetime
    seconds: int

    @classmethod
    def covering(cls, since: datetime, until: datetime, points: int) -> Buckets:
        span = (until - since).total_seconds()
        seconds = max(MIN_BUCKET_SECONDS, math.ceil(span / max(points, 1)))
        return cls(since=since, until=until, seconds=seconds)

    @classmethod
    def whole_minutes(
        cls, since: datetime, until: datetime, points: int, *, at_most: bool = True
    ) -> Buckets:
        """Aligned buckets from ``since`` to ``until``, whole minutes wide (whole hours from
        an hour up), so that per-minute and per-hour rollups fill them exactly: at most
        ``points`` of them, or with ``at_most`` false, one more where the alignment adds one.
        Spans shorter than ``points`` minutes keep finer, unaligned buckets (raw rows)."""
        buckets = cls.covering(since, until, points)
        if buckets.seconds < 60:
            return buckets
        unit = 3600 if buckets.seconds >= 3600 else 60
        seconds = math.ceil(buckets.seconds / unit) * unit
        while True:
            aligned = cls(since=since, until=until, seconds=seconds).aligned()
            span = (until - aligned.since).total_seconds()
            if not at_most or math.ceil(span / seconds) <= max(points, 1):
                return aligned
            seconds += unit

    def aligned(self) -> Buckets:
        """The same buckets moved back to start on a multiple of their width since the epoch.

        Aligned buckets have the same boundaries in every call, so a finished one can be
        computed once and reused.
        """
        return Buckets(since=self.floor(self.since), until=self.until, seconds=self.seconds)

    def floor(self, moment: datetime) -> datetime:
        """The start of the (epoch-aligned) bucket holding ``moment``."""
        epoch = math.floor(moment.timestamp())
        return datetime.fromtimestamp(epoch - epoch % self.seconds, UTC)

    def start_of(
        self, column: InstrumentedAttribute[datetime] | ColumnElement[datetime]
    ) -> ColumnElement[Any]:
        """The epoch second at which the bucket holding ``column`` starts.

        Buckets are counted from ``since`` (rounded down to a second), so that the first one
        starts where the chart does.
        """
        # SQLAlchemy renders extract('epoch') as strftime('%s') on SQLite (an integer) and
        # EXTRACT(EPOCH ...) on PostgreSQL (a numeric); subtracting the remainder works on both.
        epoch = extract("epoch", column)
        # A 64-bit parameter: epoch seconds before 1901 or after 2038 overflow 32 bits.
        origin = literal(math.floor(self.since.timestamp()), BigInteger)
        return cast(epoch - (epoch - origin) % self.seconds, BigInteger)

    def moment(self, bucket_start: int) -> datetime:
        return datetime.fromtimestamp(int(bucket_start), UTC)

    def width(self) -> timedelta:
        return timedelta(seconds=self.seconds)
