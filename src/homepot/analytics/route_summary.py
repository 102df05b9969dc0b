"""API traffic per route over a time range: requests, errors, latency and its percentiles.

Read from the route rollups (``api_request_minute``, homepot.analytics.rollups) for the
whole minutes they cover (up to ``covered_until``), from raw ``api_request_logs`` for the
rest (a range's partial first minute, and the minutes after the last rollup pass), and
added up per route and method. A 7-day summary therefore reads at most 10,080 minute rows
per route, never 7 days of request logs. Both parts keep the same counts and the same
latency histogram (``LATENCY_BOUNDS_MS``), so the figures equal those counted from raw rows;
percentiles come from the histogram, within one bucket's width of the exact ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics import rollups
from homepot.analytics.models import APIRequestLog, APIRequestMinute
from homepot.analytics.schemas import RouteTrafficRead, RouteTrafficSummary

# Requests that matched no route are stored under this route in the rollups.
UNMATCHED: Final = ""


@dataclass
class RouteTraffic:
    """One route and method's requests over a range."""

    method: str
    route: str
    requests: int = 0
    client_errors: int = 0
    server_errors: int = 0
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0
    histogram: dict[str, int] = field(default_factory=dict)

    @property
    def latency_avg_ms(self) -> float | None:
        return self.latency_sum_ms / self.requests if self.requests else None

    def percentile(self, fraction: float) -> float | None:
        return rollups.latency_percentile(self.histogram, fraction)

    def add(
        self,
        requests: int,
        client_errors: int,
        server_errors: int,
        latency_sum_ms: float,
        latency_max_ms: float,
        histogram: dict[str, int],
    ) -> None:
        self.requests += requests
        self.client_errors += client_errors
        self.server_errors += server_errors
        self.latency_sum_ms += latency_sum_ms
        self.latency_max_ms = max(self.latency_max_ms, latency_max_ms)
        self.histogram = rollups.merge_histograms([self.histogram, histogram])


async def summarize(
    session: AsyncSession, since: datetime, until: datetime, source: str | None = None
) -> RouteTrafficSummary:
    """:func:`route_traffic` as the API answers it."""
    routes = [
        RouteTrafficRead(
            method=traffic.method,
            route=traffic.route,
            requests=traffic.requests,
            client_errors=traffic.client_errors,
            server_errors=traffic.server_errors,
            server_error_percent=round(100.0 * traffic.server_errors / traffic.requests, 3)
            if traffic.requests
            else 0.0,
            latency_avg_ms=traffic.latency_avg_ms,
            latency_max_ms=traffic.latency_max_ms,
            latency_p50_ms=traffic.percentile(0.5),
            latency_p95_ms=traffic.percentile(0.95),
            latency_p99_ms=traffic.percentile(0.99),
        )
        for traffic in await route_traffic(session, since, until, source)
    ]
    return RouteTrafficSummary(since=since, until=until, routes=routes)


def _minute_ceiling(moment: datetime) -> datetime:
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + rollups.MINUTE


async def route_traffic(
    session: AsyncSession, since: datetime, until: datetime, source: str | None = None
) -> list[RouteTraffic]:
    """Per route and method, the requests from ``since`` (inclusive) to ``until``
    (exclusive), busiest first; ``source``: only that provenance."""
    covered = await rollups.covered_until(session, rollups.API_REQUESTS)
    start = _minute_ceiling(since)
    split = start
    if covered is not None:
        split = max(start, min(covered, until.replace(second=0, microsecond=0)))
    parts: list[tuple[str, datetime, datetime]] = []
    if split > start:
        parts += [("raw", since, start), ("rollup", start, split), ("raw", split, until)]
    else:
        parts.append(("raw", since, until))
    found: dict[tuple[str, str], RouteTraffic] = {}
    for kind, lo, hi in parts:
        if lo >= hi:
            continue
        reader = _from_rollups if kind == "rollup" else _from_raw_rows
        for method, route, counts, histogram in await reader(session, lo, hi, source):
            key = (method, route)
            if key not in found:
                found[key] = RouteTraffic(method, route)
            found[key].add(*counts, histogram)
    return sorted(found.values(), key=lambda t: (-t.requests, t.route, t.method))


_Part = tuple[str, str, tuple[int, int, int, float, float], dict[str, int]]


async def _from_rollups(
    session: AsyncSession, since: datetime, until: datetime, source: str | None
) -> list[_Part]:
    minute = APIRequestMinute
    where = [minute.bucket >= since, minute.bucket < until]
    if source is not None:
        where.append(minute.source == source)
    buckets = len(rollups.LATENCY_BOUNDS_MS) + 1
    rows = (
        await session.execute(
            select(
                minute.method,
                minute.route,
                func.sum(minute.requests),
                func.sum(minute.client_errors),
                func.sum(minute.server_errors),
                func.sum(minute.latency_sum_ms),
                func.max(minute.latency_max_ms),
                # The histograms added up in the database, bucket by bucket.
                *(
                    func.sum(func.coalesce(minute.latency_histogram[str(i)].as_integer(), 0))
                    for i in range(buckets)
                ),
            )
            .where(*where)
            .group_by(minute.method, minute.route)
        )
    ).all()
    return [
        (
            method,
            route,
            (int(n or 0), int(c or 0), int(s or 0), float(t or 0.0), float(m or 0.0)),
            {str(i): int(count) for i, count in enumerate(counts) if count},
        )
        for method, route, n, c, s, t, m, *counts in rows
    ]


async def _from_raw_rows(
    session: AsyncSession, since: datetime, until: datetime, source: str | None
) -> list[_Part]:
    log = APIRequestLog
    route = func.coalesce(log.route, UNMATCHED)
    where = [log.timestamp >= since, log.timestamp < until]
    if source is not None:
        where.append(log.source == source)
    totals = (
        await session.execute(
            select(
                log.method,
                route,
                func.count(),
                func.sum(case(((log.status_code >= 400) & (log.status_code < 500), 1), else_=0)),
                func.sum(case((log.status_code >= 500, 1), else_=0)),
                func.sum(log.response_time_ms),
                func.max(log.response_time_ms),
            )
            .where(*where)
            .group_by(log.method, route)
        )
    ).all()
    index = case(
        *(
            (log.response_time_ms < bound, position)
            for position, bound in enumerate(rollups.LATENCY_BOUNDS_MS)
        ),
        else_=len(rollups.LATENCY_BOUNDS_MS),
    )
    histograms = (
        await session.execute(
            select(log.method, route, index, func.count())
            .where(*where)
            .group_by(log.method, route, index)
        )
    ).all()
    return _parts(totals, histograms)


def _parts(totals: Iterable[Any], histograms: Iterable[Any]) -> list[_Part]:
    by_route: dict[tuple[str, str], dict[str, int]] = {}
    for method, route, index, count in histograms:
        by_route.setdefault((method, route), {})[str(index)] = int(count or 0)
    return [
        (
            method,
            route,
            (int(n or 0), int(c or 0), int(s or 0), float(t or 0.0), float(m or 0.0)),
            by_route.get((method, route), {}),
        )
        for method, route, n, c, s, t, m in totals
    ]
