"""Scanning device_metrics for anomalies and storing the episodes (reading and updating them:
:mod:`homepot.insights.episodes`).

A scan evaluates the complete 5-minute bins of ``[since, until)`` (see
:mod:`homepot.insights.detectors`), site by site in chunks of devices, and reconciles what it
finds with the stored episodes: an episode that overlaps a stored one of the same subject,
metric and detector extends (or closes) that row instead of adding one, so that scanning a
range twice, or a range the server already scanned, stores each episode once. A stored
episode still open whose metric is back to normal in the scanned bins is closed.

One scan at a time: on PostgreSQL a session-level advisory lock taken with
``pg_try_advisory_lock`` on a connection of its own (as retention does); on SQLite a lock
inside the process and an exclusive ``flock`` on a file next to the database, so that a
server and ``homepot insights scan`` on one SQLite file do not both write. A scan that finds
the lock taken does nothing and says so.
"""

from __future__ import annotations

import asyncio
import logging
import time as clock
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

from sqlalchemy import Integer, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from homepot.analytics.models import DeviceMetrics, SiteOperatingSchedule
from homepot.device.models import Device
from homepot.insights import detectors as det
from homepot.insights.api_health import RouteCache, scan_routes
from homepot.insights.models import Anomaly
from homepot.insights.reconcile import extend_anomaly, new_anomaly, reconcile
from homepot.kit.offload import compute, fetch_in_slices
from homepot.kit.singleton import single_run
from homepot.kit.timebuckets import epoch_bin
from homepot.site.models import Site
from homepot.site.windows import maintenance_intervals, opening_intervals

if TYPE_CHECKING:
    from homepot.insights.detectors import BucketBaseline, Chunk, IntArray

logger = logging.getLogger(__name__)

# "HOMEPOTI" as a big-endian 64-bit integer (retention holds "HOMEPOTR").
ADVISORY_LOCK_KEY: Final = int.from_bytes(b"HOMEPOTI", "big")
SKIPPED_LOCKED: Final = "another insights scan is under way (it holds the lock); nothing was done"
DEFAULT_CHUNK_DEVICES: Final = 250
HISTORY_BINS: Final = det.BASELINE_WEEKS * det.BINS_PER_WEEK
# A scan over a long range goes in spans of this many days, to bound the memory it needs.
SPAN_BINS: Final = 7 * det.BINS_PER_DAY
# Bins one statement of _load reads: a chunk's history is read a day at a time.
LOAD_SPAN_BINS: Final = det.BINS_PER_DAY
# Days before the newest whose baselines a server keeps: as many as a pass's context spans.
BASELINE_DAYS_KEPT: Final = -(-det.CONTEXT_BINS // det.BINS_PER_DAY)
# The column each metric is read from, averaged per bin (transactions: a rate, see _load).
METRIC_COLUMNS: Final = {
    "cpu": DeviceMetrics.cpu_percent,
    "memory": DeviceMetrics.memory_percent,
    "disk": DeviceMetrics.disk_percent,
    "network_latency": DeviceMetrics.network_latency_ms,
    "error_rate": DeviceMetrics.error_rate,
}


@dataclass
class ScanReport:
    since: datetime
    until: datetime
    devices: int = 0
    bins: int = 0
    inserted: int = 0
    updated: int = 0
    closed: int = 0
    seconds: float = 0.0
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "devices": self.devices,
            "bins": self.bins,
            "inserted": self.inserted,
            "updated": self.updated,
            "closed": self.closed,
            "seconds": round(self.seconds, 3),
            **({"skipped": self.skipped} if self.skipped else {}),
        }


# -- one scanner at a time --------------------------------------------------------------------


def _sqlite_lock_path(engine: AsyncEngine) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).with_name(Path(database).name + ".insights.lock")


def single_scanner(engine: AsyncEngine) -> AbstractAsyncContextManager[bool]:
    """Yields True when this caller may scan, False when another scan holds the lock: one
    scan at a time across processes (an advisory lock; on SQLite a lock file beside it)."""
    return single_run(engine, ADVISORY_LOCK_KEY, lock_file=_sqlite_lock_path(engine))


# -- loading ----------------------------------------------------------------------------------


async def _load(
    session: AsyncSession, device_ids: Sequence[str], first_bin: int, end_bin: int
) -> tuple[dict[str, Any], IntArray]:
    """Per-bin means of every metric for ``device_ids`` over bins ``[first_bin, end_bin)``,
    read a day (``LOAD_SPAN_BINS``) per statement: a chunk's two weeks of history in one
    statement hit the server's statement timeout on 10 M rows."""
    bucket = epoch_bin(DeviceMetrics.timestamp, det.BIN_SECONDS).label("bucket")
    interval = func.coalesce(DeviceMetrics.collection_interval_seconds, det.BIN_SECONDS)
    with_count = DeviceMetrics.transaction_count.is_not(None)
    connection = await session.connection()
    row_of = {device_id: index for index, device_id in enumerate(device_ids)}
    tables = []
    for span_start in range(first_bin, end_bin, LOAD_SPAN_BINS):
        span_end = min(span_start + LOAD_SPAN_BINS, end_bin)
        statement = (
            select(
                DeviceMetrics.device_id,
                bucket,
                func.count(),
                *(func.avg(column) for column in METRIC_COLUMNS.values()),
                func.sum(DeviceMetrics.transaction_count),
                func.sum(func.coalesce(interval * cast(with_count, Integer), 0)),
            )
            .where(
                DeviceMetrics.device_id.in_(device_ids),
                DeviceMetrics.timestamp >= det.bin_start(span_start),
                DeviceMetrics.timestamp < det.bin_start(span_end),
            )
            .group_by(DeviceMetrics.device_id, bucket)
        )
        # Core rows, not the ORM's: this is the bulk of a scan's reading. Each day's rows
        # become arrays (off the event loop) before the next day is read: a chunk's history
        # is a million rows, and that many Row objects alive at once made every full garbage
        # collection (it holds the GIL, so the loop) take 0.1-0.3 s.
        rows = await fetch_in_slices(connection, statement)
        if rows:
            tables.append(await compute(_row_table, rows, row_of))
    return await compute(_bins_from_tables, tables, len(device_ids), first_bin, end_bin)


def _row_table(rows: Sequence[Any], row_of: dict[str, int]) -> tuple[Any, Any, Any]:
    """The rows of one statement of :func:`_load` as arrays: each row's device (its index),
    its bin, and its values (count, the metrics' means, the transaction sums)."""
    np = det.numpy()
    return (
        _sliced_array(rows, lambda row: row_of[row[0]], np.int64),
        _sliced_array(rows, lambda row: int(row[1]), np.int64),
        _sliced_array(rows, lambda row: row[2:], np.float64),
    )


def _bins_from_tables(
    tables: Sequence[tuple[Any, Any, Any]], devices: int, first_bin: int, end_bin: int
) -> tuple[dict[str, Any], IntArray]:
    """The tables of :func:`_row_table` as one array per metric (a row per device, a column
    per bin) and the sample counts."""
    np = det.numpy()
    width = end_bin - first_bin
    values = {spec.name: np.full((devices, width), np.nan) for spec in det.METRICS}
    counts = np.zeros((devices, width), dtype=np.int64)
    if not tables:
        return values, counts
    device_rows = np.concatenate([table[0] for table in tables])
    columns = np.concatenate([table[1] for table in tables]) - first_bin
    table = np.concatenate([table[2] for table in tables])
    inside = (columns >= 0) & (columns < width)
    device_rows, columns, table = device_rows[inside], columns[inside], table[inside]
    counts[device_rows, columns] = table[:, 0]
    for offset, name in enumerate(METRIC_COLUMNS, start=1):
        values[name][device_rows, columns] = table[:, offset]
    with det._quiet():
        rate = table[:, -2] * 60 / table[:, -1]
    values["transactions"][device_rows, columns] = np.where(table[:, -1] > 0, rate, np.nan)
    return values, counts


# Rows per numpy conversion: one np.array() call over a list holds the GIL throughout (a
# chunk's million rows: ~0.3 s), and with it the event loop; between two calls it can run.
CONVERT_ROWS: Final = 10_000


def _sliced_array(rows: Sequence[Any], convert: Callable[[Any], Any], dtype: Any) -> Any:
    """``np.array([convert(row) for row in rows], dtype)``, ``CONVERT_ROWS`` at a time."""
    np = det.numpy()
    return np.concatenate(
        [
            np.array([convert(row) for row in rows[start : start + CONVERT_ROWS]], dtype=dtype)
            for start in range(0, len(rows), CONVERT_ROWS)
        ]
    )


def _bin_mask(intervals: Sequence[tuple[datetime, datetime]], first_bin: int, width: int) -> Any:
    """True for the bins whose middle lies inside one of ``intervals``."""
    np = det.numpy()
    middles = (first_bin + np.arange(width)) * det.BIN_SECONDS + det.BIN_SECONDS // 2
    mask = np.zeros(width, dtype=bool)
    for start, end in intervals:
        mask |= (middles >= start.timestamp()) & (middles < end.timestamp())
    return mask


@dataclass(frozen=True)
class _Fleet:
    devices: list[det.DeviceInfo]
    timezones: dict[str, str]
    schedules: dict[str, list[SiteOperatingSchedule]]


async def load_fleet(
    session: AsyncSession, at: datetime, device_ids: Sequence[str] | None
) -> _Fleet:
    timezones: dict[str, str] = dict(
        (await session.execute(select(Site.site_id, Site.timezone))).all()
    )
    statement = select(Device.device_id, Device.site_id, Device.device_type).order_by(
        Device.site_id, Device.device_id
    )
    if device_ids is not None:
        statement = statement.where(Device.device_id.in_(device_ids))
    shifts: dict[str, int] = {}
    for timezone in set(timezones.values()) | {"UTC"}:
        offset = at.astimezone(ZoneInfo(timezone)).utcoffset() or timedelta(0)
        shifts[timezone] = round(offset.total_seconds() / det.BIN_SECONDS)
    devices = []
    for device_id, site_id, device_type in (await session.execute(statement)).all():
        timezone = timezones.get(site_id, "UTC")
        devices.append(det.DeviceInfo(device_id, site_id, device_type, shifts[timezone], timezone))
    schedules: dict[str, list[SiteOperatingSchedule]] = {}
    for row in await session.scalars(select(SiteOperatingSchedule)):
        schedules.setdefault(row.site_id, []).append(row)
    return _Fleet(devices, timezones, schedules)


async def _fleet_fingerprint(session: AsyncSession) -> tuple[Any, ...]:
    """Changes when a device is added or removed, or a site or schedule changes.

    Not on every device update: heartbeats touch the devices all the time. A device moved
    to another site is seen at the next full re-read (FLEET_REREAD_SECONDS).
    """
    values: list[Any] = [int(clock.monotonic() // FLEET_REREAD_SECONDS)]
    for column in (Device.created_at, Site.updated_at, SiteOperatingSchedule.updated_at):
        statement = select(func.count(), func.max(column))
        values.extend((await session.execute(statement)).one())
    return tuple(values)


def _chunks(devices: list[det.DeviceInfo], size: int) -> list[list[det.DeviceInfo]]:
    """Consecutive devices, whole sites per chunk (a site's cohort and silence need them all)."""
    chunks: list[list[det.DeviceInfo]] = []
    current: list[det.DeviceInfo] = []
    for device in devices:
        if current and len(current) >= size and device.site_id != current[-1].site_id:
            chunks.append(current)
            current = []
        current.append(device)
    if current:
        chunks.append(current)
    return chunks


# -- what the server keeps between passes ---------------------------------------------------


@dataclass
class BaselineCache:
    """Hour-of-week baselines per chunk of devices and UTC day: computed once a day, not
    every pass. Holds the newest days a pass's bins reach into (its context reaches back
    ``CONTEXT_BINS``, over up to three UTC days): one missing would make a pass read two
    weeks of history again for that chunk."""

    entries: dict[tuple[tuple[str, ...], int], dict[str, BucketBaseline]] = field(
        default_factory=dict
    )

    def get(self, device_ids: Sequence[str], day: int) -> dict[str, BucketBaseline] | None:
        return self.entries.get((tuple(device_ids), day))

    def put(
        self, device_ids: Sequence[str], day: int, baselines: dict[str, BucketBaseline]
    ) -> None:
        self.entries[(tuple(device_ids), day)] = baselines
        newest = max(key[1] for key in self.entries)
        oldest = newest - BASELINE_DAYS_KEPT * det.BINS_PER_DAY
        for key in [key for key in self.entries if key[1] < oldest]:
            del self.entries[key]


@dataclass
class _Bins:
    first_bin: int
    values: dict[str, Any]
    counts: Any
    # The recent-window steps earlier passes computed over these bins (a server's).
    memo: det.RecentMemo = field(default_factory=det.RecentMemo)

    @property
    def end_bin(self) -> int:
        return self.first_bin + int(self.counts.shape[1])


@dataclass
class ScanState:
    """What a long-running scanner (the server) keeps between passes.

    ``baselines``: per chunk and day. ``bins``: each chunk's recent bins, so that a pass
    loads only the bins since the previous one, plus ``REFRESH_BINS`` re-read for samples
    that arrived late (older late samples are seen by the next command-line scan).
    ``baseline_refresh_devices`` bounds how many devices a pass computes today's baselines
    for (14 days of history each); the others keep yesterday's until their turn, or the
    recent-window fallback on a fresh start. None: no bound (a command-line scan).
    """

    baseline_refresh_devices: int | None = None
    baselines: BaselineCache = field(default_factory=BaselineCache)
    bins: dict[tuple[str, ...], _Bins] = field(default_factory=dict)
    # Devices, sites and schedules, re-read when any of them changed.
    fleet: _Fleet | None = None
    fleet_fingerprint: tuple[Any, ...] | None = None
    # API routes' history and recent bins (homepot.insights.api_health).
    api_routes: RouteCache = field(default_factory=RouteCache)


FLEET_REREAD_SECONDS: Final = 600
# Bins a pass re-reads before the newest it already has: late samples within this are counted.
REFRESH_BINS: Final = 3


# -- the scan ---------------------------------------------------------------------------------


async def scan(
    engine: AsyncEngine,
    since: datetime,
    until: datetime,
    *,
    state: ScanState | None = None,
    chunk_devices: int = DEFAULT_CHUNK_DEVICES,
    device_ids: Sequence[str] | None = None,
) -> ScanReport:
    """Find the anomaly episodes in the complete 5-minute bins of ``[since, until)``.

    Deterministic: the same stored metrics give the same episodes. Without ``state`` (the
    command line) every baseline is computed from the stored history; the server passes a
    :class:`ScanState`. Returns a report whose ``skipped`` is set when another scan held
    the lock.
    """
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware")
    report = ScanReport(since=since, until=until)
    started = clock.perf_counter()
    first_bin, end_bin = det.bin_of(since), det.bin_of(until)
    if end_bin <= first_bin:
        return report
    state = state if state is not None else ScanState()
    async with single_scanner(engine) as may_scan:
        if not may_scan:
            logger.info("insights: %s", SKIPPED_LOCKED)
            report.skipped = SKIPPED_LOCKED
            return report
        server = state.baseline_refresh_devices is not None and device_ids is None
        async with AsyncSession(engine, expire_on_commit=False) as session:
            fingerprint = await _fleet_fingerprint(session) if server else None
            fleet = state.fleet
            if fleet is None or fingerprint is None or fingerprint != state.fleet_fingerprint:
                fleet = await load_fleet(session, until, device_ids)
        if server:
            state.fleet, state.fleet_fingerprint = fleet, fingerprint
        report.bins = end_bin - first_bin
        budget = [state.baseline_refresh_devices]
        for span_start in range(first_bin, end_bin, SPAN_BINS):
            span = (span_start, min(span_start + SPAN_BINS, end_bin))
            for devices in _chunks(fleet.devices, chunk_devices):
                async with (
                    AsyncSession(engine, expire_on_commit=False) as session,
                    session.begin(),
                ):
                    await _scan_chunk(session, fleet, devices, span, state, budget, report)
                await asyncio.sleep(0)
        if device_ids is None:  # API routes: the whole range at once, under the same lock
            async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
                cache = state.api_routes if server else None
                await scan_routes(session, first_bin, end_bin, report, cache=cache)
        report.devices = len(fleet.devices)
    report.seconds = clock.perf_counter() - started
    return report


async def _chunk_bins(
    session: AsyncSession,
    state: ScanState,
    ids: list[str],
    context_bin: int,
    end_bin: int,
    history_from: int | None,
) -> tuple[_Bins, _Bins | None]:
    """The chunk's bins over ``[context_bin, end_bin)``, and over ``[history_from, end_bin)``
    when its history is needed; from the server's cache where it can."""
    np = det.numpy()
    key = tuple(ids)
    if history_from is not None:
        values, counts = await _load(session, ids, history_from, end_bin)
        everything = _Bins(history_from, values, counts)
        offset = context_bin - history_from
        # Copies: a view would keep the whole history alive in the cache.
        context = _Bins(
            context_bin,
            {name: array[:, offset:].copy() for name, array in values.items()},
            counts[:, offset:].copy(),
        )
        state.bins[key] = context
        return context, everything
    cached = state.bins.get(key)
    if cached is None or cached.first_bin > context_bin or cached.end_bin < context_bin:
        values, counts = await _load(session, ids, context_bin, end_bin)
        context = _Bins(context_bin, values, counts)
    else:
        refresh_from = max(context_bin, min(cached.end_bin, end_bin) - REFRESH_BINS)
        fresh_values, fresh_counts = await _load(session, ids, refresh_from, end_bin)
        width = end_bin - context_bin
        keep = refresh_from - context_bin
        source = slice(context_bin - cached.first_bin, refresh_from - cached.first_bin)
        values = {}
        for name, fresh in fresh_values.items():
            array = np.full((len(ids), width), np.nan)
            array[:, :keep] = cached.values[name][:, source]
            array[:, keep:] = fresh
            values[name] = array
        counts = np.zeros((len(ids), width), dtype=np.int64)
        counts[:, :keep] = cached.counts[:, source]
        counts[:, keep:] = fresh_counts
        # The bins before refresh_from are the cached ones: steps over them still hold.
        memo = cached.memo
        memo.stable_until = refresh_from
        memo.forget_before(context_bin)
        context = _Bins(context_bin, values, counts, memo)
    state.bins[key] = context
    return context, None


async def prepare_chunk(
    session: AsyncSession,
    fleet: _Fleet,
    devices: list[det.DeviceInfo],
    span: tuple[int, int],
    state: ScanState,
    budget: list[int | None],
    known_silent: dict[str, int],
) -> tuple[Chunk, dict[str, list[tuple[int, int, BucketBaseline]]]]:
    """The chunk's bins from ``CONTEXT_BINS`` before the span, and its baselines per day."""
    np = det.numpy()
    first_bin, end_bin = span
    ids = [device.device_id for device in devices]
    context_bin = first_bin - det.CONTEXT_BINS
    first_day = context_bin - context_bin % det.BINS_PER_DAY
    days = list(range(first_day, end_bin, det.BINS_PER_DAY))
    cached = {day: state.baselines.get(ids, day) for day in days}
    refresh = not all(cached.values()) and (budget[0] is None or budget[0] > 0)
    if refresh and budget[0] is not None:
        budget[0] -= len(ids)
    chunk_bins, history = await _chunk_bins(
        session, state, ids, context_bin, end_bin, first_day - HISTORY_BINS if refresh else None
    )
    day_baselines: dict[str, list[tuple[int, int, BucketBaseline]]] = {}
    fresh: dict[int, dict[str, BucketBaseline]] = {}
    if history is not None:
        shifts = np.array([device.shift_bins for device in devices], dtype=np.int64)
        missing = [day for day in days if cached[day] is None]
        fresh = await compute(_history_baselines, history, missing, shifts)
    for day in days:
        baselines = cached[day]
        if baselines is None and day in fresh:
            baselines = fresh[day]
            state.baselines.put(ids, day, baselines)
        if baselines is None:  # the server, before this chunk's turn: yesterday's will do
            baselines = state.baselines.get(ids, day - det.BINS_PER_DAY)
        if baselines is None:
            continue
        columns = (
            max(day, context_bin) - context_bin,
            min(day + det.BINS_PER_DAY, end_bin) - context_bin,
        )
        for name, base in baselines.items():
            day_baselines.setdefault(name, []).append((*columns, base))
    width = end_bin - context_bin
    open_bins, maintenance_bins = {}, {}
    window = (det.bin_start(context_bin), det.bin_start(end_bin))
    for site_id in sorted({device.site_id for device in devices}):
        timezone, schedule = fleet.timezones.get(site_id, "UTC"), fleet.schedules.get(site_id, [])
        open_bins[site_id] = _bin_mask(
            opening_intervals(schedule, timezone, *window), context_bin, width
        )
        maintenance_bins[site_id] = _bin_mask(
            maintenance_intervals(schedule, timezone, *window), context_bin, width
        )
    chunk = det.Chunk(
        devices=devices,
        first_bin=context_bin,
        values=chunk_bins.values,
        counts=chunk_bins.counts,
        open_bins=open_bins,
        maintenance_bins=maintenance_bins,
        known_silent=known_silent,
        # A server keeps its bins between passes, and with them the recent-window steps.
        memo=chunk_bins.memo,
    )
    return chunk, day_baselines


def _history_baselines(
    history: _Bins, days: Sequence[int], shifts: IntArray
) -> dict[int, dict[str, BucketBaseline]]:
    """Each day's hour-of-week baselines of every metric, from the ``HISTORY_BINS`` before
    it in ``history``: the bulk of a chunk's first pass, computed off the event loop."""
    baselines = {}
    for day in days:
        past = slice(day - HISTORY_BINS - history.first_bin, day - history.first_bin)
        baselines[day] = {
            spec.name: det.bucket_baseline(
                history.values[spec.name][:, past], day - HISTORY_BINS, shifts, spec.scale_floor
            )
            for spec in det.METRICS
        }
    return baselines


async def _scan_chunk(
    session: AsyncSession,
    fleet: _Fleet,
    devices: list[det.DeviceInfo],
    span: tuple[int, int],
    state: ScanState,
    budget: list[int | None],
    report: ScanReport,
) -> None:
    first_bin, end_bin = span
    context_start = det.bin_start(first_bin - det.CONTEXT_BINS)
    site_ids = sorted({device.site_id for device in devices})
    subjects = [device.device_id for device in devices] + [f"site:{s}" for s in site_ids]
    stored = list(
        await session.scalars(
            select(Anomaly)
            .where(
                Anomaly.subject.in_(subjects),
                Anomaly.started_at < det.bin_start(end_bin),
                or_(Anomaly.ended_at.is_(None), Anomaly.ended_at >= context_start),
            )
            .order_by(Anomaly.started_at, Anomaly.id)
        )
    )
    known_silent = {
        row.subject: det.bin_of(row.started_at)
        for row in stored
        if row.metric == det.REPORTING and row.ended_at is None
    }
    chunk, day_baselines = await prepare_chunk(
        session, fleet, devices, span, state, budget, known_silent
    )
    # The chunk is plain arrays and dataclasses; its memo is this pass's alone until it ends.
    episodes, _ = await compute(det.detect, chunk, det.CONTEXT_BINS, day_baselines)
    reconcile(
        session,
        stored,
        episodes,
        (first_bin, end_bin),
        report,
        new_row=lambda episode: new_anomaly(
            episode,
            device_id=episode.device_id,
            site_id=episode.site_id,
            expected_maintenance=episode.expected_maintenance,
        ),
        extend=lambda row, episode: extend_anomaly(
            row, episode, expected_maintenance=episode.expected_maintenance
        ),
    )
    await session.flush()
