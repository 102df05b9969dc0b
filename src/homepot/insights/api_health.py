"""API health: error-rate and p95-latency anomalies per route, against the route's own normal.

``api_request_logs`` are cut into the detectors' 5-minute bins per route template and method
(``GET /api/v1/devices/{device_id}``). Per bin: the share of answers that were server errors
(5xx, in %) and the 95th percentile of the response time, read from a latency histogram
(``LATENCY_EDGES``: the route rollups' buckets, in ms; the p95 is the upper edge of the
bucket it falls in). A bin with fewer than ``MIN_REQUESTS`` requests says nothing.

Bins the route rollups cover (``api_request_minute``, up to their ``covered_until``;
homepot.analytics.rollups) are read from them, newer bins from raw rows: the two weeks of
history behind each day are ~4,000 rows per route, never a scan of two weeks of request
logs. Both give the same numbers (the rollup keeps the same counts and histogram).

What is normal for a route and bin comes from the same machinery as the device metrics
(:func:`homepot.insights.detectors.bucket_baseline`): the median and robust spread of that
route's bins in the same hour of the week over the two weeks before the bin's UTC day, else
in the same hour of the day, else over the route's previous 12 hours. A bin is anomalous when
it is ``Z_THRESHOLD`` spreads worse than normal and materially so (``ROUTE_METRICS``); three
such bins in a row (one normal bin tolerated) make an episode, stored in ``anomalies`` with
``metric='api:<route>'``, ``subject='api:<METHOD> <route>'``, detector ``api_error_rate`` or
``api_p95_latency`` and no device or site. The scanner runs it inside the device scan's lock
and reconciles with the stored episodes the same way, so that scanning a range twice stores
each episode once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics import rollups
from homepot.analytics.models import APIRequestLog, APIRequestMinute
from homepot.analytics.rollups import LATENCY_BOUNDS_MS
from homepot.insights import detectors as det
from homepot.insights.models import Anomaly
from homepot.insights.reconcile import extend_anomaly, new_anomaly, reconcile
from homepot.kit.offload import compute
from homepot.kit.timebuckets import epoch_bin

if TYPE_CHECKING:
    from homepot.insights.service import ScanReport

SUBJECT_PREFIX: Final = "api:"
MIN_REQUESTS: Final = 5
Z_THRESHOLD: Final = 4.0
# Upper edges (exclusive) of the latency buckets: the rollups' own, so that a bin read from
# them and one read from raw rows agree exactly.
LATENCY_EDGES: Final = LATENCY_BOUNDS_MS
MAX_ROUTE_CHARACTERS: Final = 512


@dataclass(frozen=True)
class RouteMetric:
    detector: str
    label: str
    unit: str
    min_deviation: float
    relative_deviation: float
    scale_floor: float


ROUTE_METRICS: Final = (
    RouteMetric("api_error_rate", "server errors", "%", 5.0, 0.0, 1.0),
    RouteMetric("api_p95_latency", "p95 response time", " ms", 100.0, 0.5, 10.0),
)


@dataclass(frozen=True)
class RouteBins:
    routes: list[tuple[str, str]]  # (method, route)
    first_bin: int
    values: dict[str, Any]  # detector -> (routes, bins), NaN without enough requests
    requests: Any  # (routes, bins)


# A bin's row, from either reader: method, route, bin, requests, server errors, the slowest
# request (ms), then per edge of LATENCY_EDGES how many requests were faster than it.
_BinRow = tuple[Any, ...]


async def load_route_bins(session: AsyncSession, first_bin: int, end_bin: int) -> RouteBins:
    """Per route and bin of ``[first_bin, end_bin)``: error rate (%) and p95 (ms), from the
    route rollups where they cover whole bins, from raw rows after that."""
    covered = await rollups.covered_until(session, rollups.API_REQUESTS)
    split = first_bin
    if covered is not None:
        split = min(end_bin, max(first_bin, int(covered.timestamp()) // det.BIN_SECONDS))
    rows: list[_BinRow] = []
    # A day per statement: two weeks of history in one read could meet the statement timeout.
    for start in range(first_bin, split, det.BINS_PER_DAY):
        rows += await _rolled_up_bins(session, start, min(start + det.BINS_PER_DAY, split))
    for start in range(split, end_bin, det.BINS_PER_DAY):
        rows += await raw_bins(session, start, min(start + det.BINS_PER_DAY, end_bin))
    return await compute(_route_bins, rows, first_bin, end_bin)


async def raw_bins(session: AsyncSession, first_bin: int, end_bin: int) -> list[_BinRow]:
    """The bins of ``[first_bin, end_bin)`` counted from ``api_request_logs``."""
    bucket = epoch_bin(APIRequestLog.timestamp, det.BIN_SECONDS).label("bucket")
    time = APIRequestLog.response_time_ms
    statement = (
        select(
            APIRequestLog.method,
            APIRequestLog.route,
            bucket,
            func.count(),
            func.sum(case((APIRequestLog.status_code >= 500, 1), else_=0)),
            func.max(time),
            *(func.sum(case((time < edge, 1), else_=0)) for edge in LATENCY_EDGES),
        )
        .where(
            APIRequestLog.route.is_not(None),
            APIRequestLog.timestamp >= det.bin_start(first_bin),
            APIRequestLog.timestamp < det.bin_start(end_bin),
        )
        .group_by(APIRequestLog.method, APIRequestLog.route, bucket)
    )
    return [tuple(row) for row in (await (await session.connection()).execute(statement))]


async def _rolled_up_bins(session: AsyncSession, first_bin: int, end_bin: int) -> list[_BinRow]:
    """The bins of ``[first_bin, end_bin)`` added up from ``api_request_minute``: its
    histogram keeps per bucket index how many requests fell in it, so the count faster than
    edge ``i`` is the sum of buckets ``0..i``."""
    minute = APIRequestMinute
    bucket = epoch_bin(minute.bucket, det.BIN_SECONDS).label("bucket")
    per_bucket = [
        func.sum(func.coalesce(minute.latency_histogram[str(index)].as_integer(), 0))
        for index in range(len(LATENCY_EDGES))
    ]
    statement = (
        select(
            minute.method,
            minute.route,
            bucket,
            func.sum(minute.requests),
            func.sum(minute.server_errors),
            func.max(minute.latency_max_ms),
            *per_bucket,
        )
        .where(
            minute.route != "",  # requests that matched no route
            minute.bucket >= det.bin_start(first_bin),
            minute.bucket < det.bin_start(end_bin),
        )
        .group_by(minute.method, minute.route, bucket)
    )
    rows = []
    for row in await (await session.connection()).execute(statement):
        below, faster = 0, []
        for count in row[6:]:
            below += int(count or 0)
            faster.append(below)
        rows.append((*row[:6], *faster))
    return rows


def _route_bins(rows: Sequence[_BinRow], first_bin: int, end_bin: int) -> RouteBins:
    np = det.numpy()
    routes = sorted({(row[0], row[1][:MAX_ROUTE_CHARACTERS]) for row in rows})
    index = {route: position for position, route in enumerate(routes)}
    width = end_bin - first_bin
    requests = np.zeros((len(routes), width))
    values = {spec.detector: np.full((len(routes), width), np.nan) for spec in ROUTE_METRICS}
    edges = np.array(LATENCY_EDGES, dtype=float)
    for row in rows:
        column = int(row[2]) - first_bin
        if not 0 <= column < width:
            continue
        place = index[(row[0], row[1][:MAX_ROUTE_CHARACTERS])]
        count, errors = int(row[3]), int(row[4] or 0)
        requests[place, column] += count
        if count < MIN_REQUESTS:
            continue
        values["api_error_rate"][place, column] = 100.0 * errors / count
        cumulative = np.array([int(value or 0) for value in row[6:]])
        reached = np.flatnonzero(cumulative >= 0.95 * count)
        p95 = float(edges[reached[0]]) if reached.size else float(row[5])
        values["api_p95_latency"][place, column] = p95
    return RouteBins(routes, first_bin, values, requests)


# -- what is normal ---------------------------------------------------------------------------


def _expected(
    values: Any, first_bin: int, start: int, floor: float, history: Any | None, history_bin: int
) -> tuple[Any, Any]:
    """Expected value and spread for every (route, column) from ``start`` on: hour of week /
    hour of day from ``history`` (exactly two weeks of bins before the first evaluated day),
    else the route's previous 12 hours."""
    np = det.numpy()
    routes, width = values.shape
    expected = np.full(values.shape, np.nan)
    scale = np.full(values.shape, np.nan)
    if history is not None and routes:
        base = det.bucket_baseline(history, history_bin, np.zeros(routes, dtype=np.int64), floor)
        columns = np.arange(start, width)
        hours = ((first_bin + columns) // det.BINS_PER_HOUR) % 168
        rows = np.arange(routes)[:, None]
        for median, spread, ok, bucket in (
            (base.day_median, base.day_scale, base.day_ok, hours % 24),
            (base.week_median, base.week_scale, base.week_ok, hours),
        ):
            usable = ok[rows, bucket[None, :]]
            part = slice(start, width)
            expected[:, part] = np.where(usable, median[rows, bucket[None, :]], expected[:, part])
            scale[:, part] = np.where(usable, spread[rows, bucket[None, :]], scale[:, part])
    with det._quiet():
        for column in range(start, width):
            missing = np.isnan(expected[:, column])
            if not missing.any():
                continue
            window = values[missing, max(0, column - det.RECENT_BINS) : column]
            enough = (~np.isnan(window)).sum(axis=1) >= 24
            median = det.nanmedian(window, axis=1)
            mad = det.nanmedian(np.abs(window - median[:, None]), axis=1)
            rows_missing = np.flatnonzero(missing)
            expected[rows_missing, column] = np.where(enough, median, np.nan)
            scale[rows_missing, column] = np.where(
                enough, np.maximum(np.nan_to_num(mad) * det.MAD_TO_SIGMA, floor), np.nan
            )
    return expected, scale


@dataclass(frozen=True)
class RouteEpisode:
    subject: str
    metric: str
    detector: str
    started_at: datetime
    last_seen_at: datetime
    open: bool
    score: int
    observed: float
    expected: float
    explanation: str


def _number(value: float, unit: str) -> str:
    text = f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"
    return f"{text} %" if unit == "%" else f"{text}{unit}"


def detect_routes(
    bins: RouteBins, start: int, history: RouteBins | None = None
) -> list[RouteEpisode]:
    """Episodes that reach into the columns from ``start`` on (earlier ones are context).

    ``history``: exactly two weeks of bins ending at the UTC day of column ``start``, for the
    hour-of-week baseline; without it the recent window stands in.
    """
    np = det.numpy()
    episodes = []
    for spec in ROUTE_METRICS:
        values = bins.values[spec.detector]
        past = None
        if history is not None:
            rows = {route: row for row, route in enumerate(history.routes)}
            past = np.full((len(bins.routes), history.values[spec.detector].shape[1]), np.nan)
            for row, route in enumerate(bins.routes):
                if route in rows:
                    past[row] = history.values[spec.detector][rows[route]]
        lookback = max(0, start - det.RUN_LOOKBACK_BINS)
        expected, scale = _expected(
            values,
            bins.first_bin,
            lookback,
            spec.scale_floor,
            past,
            history.first_bin if history is not None else 0,
        )
        with det._quiet():
            deviation = values - expected
            z = deviation / scale
            deviant = (
                (z >= Z_THRESHOLD)
                & (deviation >= np.maximum(spec.min_deviation, spec.relative_deviation * expected))
                & ~np.isnan(expected)
            )
        deviant[:, :lookback] = False
        for row in np.flatnonzero(deviant.any(axis=1)):
            method, route = bins.routes[row]
            for first, final in det.runs(
                deviant[row], gap=det.GAP_BINS, minimum=det.PERSISTENCE_BINS
            ):
                if final < start:
                    continue
                peak = float(np.nanmax(z[row, first : final + 1]))
                value, normal = float(values[row, final]), float(expected[row, final])
                spread = float(scale[row, final])
                at = det.bin_start(bins.first_bin + final)
                episodes.append(
                    RouteEpisode(
                        subject=f"{SUBJECT_PREFIX}{method} {route}",
                        metric=f"{SUBJECT_PREFIX}{route}",
                        detector=spec.detector,
                        started_at=det.bin_start(bins.first_bin + first),
                        last_seen_at=at + det.BIN,
                        open=final >= values.shape[1] - 1 - det.GAP_BINS,
                        score=det.level_score(peak),
                        observed=round(value, 3),
                        expected=round(normal, 3),
                        explanation=f"{method} {route}: {spec.label} "
                        f"{_number(value, spec.unit)} vs a usual {_number(normal, spec.unit)} "
                        f"± {_number(spread, spec.unit)} "
                        f"({int(bins.requests[row, final])} requests in the last 5 min)",
                    )
                )
    return episodes


# -- the scan ---------------------------------------------------------------------------------


HISTORY_BINS: Final = det.BASELINE_WEEKS * det.BINS_PER_WEEK
CONTEXT_BINS: Final = det.RECENT_BINS + det.RUN_LOOKBACK_BINS


@dataclass
class RouteCache:
    """What the server keeps between passes: each day's history (two weeks of request logs,
    read once a day) and the bins read last time (a pass reads only the newest few)."""

    history: dict[int, RouteBins] = field(default_factory=dict)
    recent: RouteBins | None = None


async def _history(session: AsyncSession, day: int, cache: RouteCache | None) -> RouteBins:
    if cache is not None and day in cache.history:
        return cache.history[day]
    history = await load_route_bins(session, day - HISTORY_BINS, day)
    if cache is not None:
        for old in [d for d in cache.history if d < day]:
            del cache.history[old]
        cache.history[day] = history
    return history


# Bins re-read before the newest one already held: late request logs within this count.
REFRESH_BINS: Final = 3


def _splice(old: RouteBins, fresh: RouteBins, first_bin: int, end_bin: int) -> RouteBins:
    """``old``'s bins from ``first_bin`` up to ``fresh.first_bin``, then ``fresh``'s."""
    np = det.numpy()
    routes = sorted(set(old.routes) | set(fresh.routes))
    width = end_bin - first_bin
    values = {spec.detector: np.full((len(routes), width), np.nan) for spec in ROUTE_METRICS}
    requests = np.zeros((len(routes), width))
    for part, until in ((old, fresh.first_bin), (fresh, end_bin)):
        start = max(first_bin, part.first_bin)
        stop = min(until, part.first_bin + part.requests.shape[1])
        if stop <= start:
            continue
        rows = [routes.index(route) for route in part.routes]
        target = slice(start - first_bin, stop - first_bin)
        source = slice(start - part.first_bin, stop - part.first_bin)
        requests[rows, target] = part.requests[:, source]
        for name, array in part.values.items():
            values[name][rows, target] = array[:, source]
    return RouteBins(routes, first_bin, values, requests)


async def _recent(
    session: AsyncSession, first_bin: int, end_bin: int, cache: RouteCache | None
) -> RouteBins:
    cached = cache.recent if cache is not None else None
    held_end = cached.first_bin + cached.requests.shape[1] if cached is not None else None
    if cached is None or held_end is None or not first_bin <= held_end <= end_bin:
        bins = await load_route_bins(session, first_bin, end_bin)
    else:
        refresh_from = max(first_bin, held_end - REFRESH_BINS)
        fresh = await load_route_bins(session, refresh_from, end_bin)
        bins = await compute(_splice, cached, fresh, first_bin, end_bin)
    if cache is not None:
        cache.recent = bins
    return bins


async def scan_routes(
    session: AsyncSession,
    first_bin: int,
    end_bin: int,
    report: ScanReport,
    *,
    cache: RouteCache | None = None,
) -> None:
    """Find the route episodes in bins ``[first_bin, end_bin)`` and store them, day by day
    (each day against the two weeks before it). ``cache``: the server's, kept between
    passes."""
    day_first = first_bin - first_bin % det.BINS_PER_DAY
    for day in range(day_first, end_bin, det.BINS_PER_DAY):
        span = (max(first_bin, day), min(end_bin, day + det.BINS_PER_DAY))
        context_bin = span[0] - CONTEXT_BINS
        bins = await _recent(session, context_bin, span[1], cache)
        if not bins.routes:
            continue
        history = await _history(session, day, cache)
        episodes = await compute(detect_routes, bins, span[0] - context_bin, history)
        await _reconcile(session, episodes, context_bin, span, report)
    await session.flush()


async def _reconcile(
    session: AsyncSession,
    episodes: Sequence[RouteEpisode],
    context_bin: int,
    span: tuple[int, int],
    report: ScanReport,
) -> None:
    first_bin, end_bin = span
    context_start = det.bin_start(context_bin)
    stored = list(
        await session.scalars(
            select(Anomaly)
            .where(
                Anomaly.subject.startswith(SUBJECT_PREFIX, autoescape=True),
                Anomaly.started_at < det.bin_start(end_bin),
                or_(Anomaly.ended_at.is_(None), Anomaly.ended_at >= context_start),
            )
            .order_by(Anomaly.started_at, Anomaly.id)
        )
    )
    reconcile(session, stored, episodes, span, report, new_row=new_anomaly, extend=extend_anomaly)
