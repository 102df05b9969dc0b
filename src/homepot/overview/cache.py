"""Fleet metric buckets that have settled, computed once per process.

The overview's fleet chart averages every device's samples over hours, and dashboards
refresh it every 30 seconds; with thousands of terminals that is millions of rows each time.
A bucket that ended more than ``settle`` ago no longer changes (samples arrive within seconds),
so it is kept here and only the newest buckets are read again. Late samples (a terminal
replaying hours of buffered telemetry) still reach the device charts, which are not cached,
and this cache's buckets are recomputed when the process restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from homepot.device.history import bucketed_metrics
from homepot.device.schemas import MetricPoint
from homepot.kit.timebuckets import Buckets

SETTLE = timedelta(minutes=2)
# Bucket widths kept at once (each period and point count of the overview gives one).
MAX_WIDTHS = 16


@dataclass
class _SettledSeries:
    """The buckets of one width from ``start`` to ``end`` (exclusive), all settled."""

    start: datetime
    end: datetime
    points: dict[datetime, MetricPoint] = field(default_factory=dict)


@dataclass
class FleetMetricsCache:
    settle: timedelta = SETTLE
    _series: dict[int, _SettledSeries] = field(default_factory=dict)

    async def points(
        self, session: AsyncSession, buckets: Buckets, now: datetime
    ) -> list[MetricPoint]:
        """Fleet-wide points of ``buckets`` (which must be aligned), oldest first."""
        settled_end = buckets.floor(min(now - self.settle, buckets.until))
        series = self._series.get(buckets.seconds)
        if series is None or not series.start <= buckets.since <= series.end:
            if len(self._series) >= MAX_WIDTHS:
                self._series.clear()
            series = _SettledSeries(start=buckets.since, end=buckets.since)
            self._series[buckets.seconds] = series
        read_from = series.end
        fresh = await bucketed_metrics(
            session, Buckets(since=read_from, until=buckets.until, seconds=buckets.seconds)
        )
        for point in fresh:
            if point.timestamp < settled_end:
                series.points[point.timestamp] = point
        if settled_end > series.end:
            series.end = settled_end
        # Buckets before the window are not needed again by this width.
        for moment in [m for m in series.points if m < buckets.since]:
            del series.points[moment]
        series.start = buckets.since
        cached = [series.points[m] for m in sorted(series.points) if m < read_from]
        return cached + fresh
