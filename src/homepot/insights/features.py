"""Failure-risk features and targets, computed from the database's own history.

A device "fails" when it enters ``error`` outside its site's maintenance window, goes
``offline`` while its site is open and outside that window (``device_state_history``; a
terminal switched off at closing time is not broken), or logs a ``critical`` error. For a
device at a moment ``t`` the features describe only what was known at ``t``:

- per metric (cpu, memory, disk, network latency, error rate): the last value, the mean of
  the last hour, the slope of the last three hours (per hour), how far the last hour is
  from the device's own normal over the day before (robust z: median and MAD), and how far
  it is above the highest the device usually reached that day (its 95th percentile);
  "the day before" is the device's *baseline* (:func:`baseline_at`): the 23 hours up to one
  hour before the device's latest hourly anchor, so that a server computes it once an hour
  per device and reads only the last three hours of raw samples in between
  (homepot.insights.risk_reads);
- the hours until memory reaches 98 % at the slope of the last three hours;
- error reports of the last hour (critical) and the last 6 h by severity, and
  external-service errors;
- failed jobs in the last 24 h, state changes and configuration changes in the last 6 h;
- the device's own failures (as defined above) in the last 2 h and 24 h, and the minutes
  since its last one: failures come in bursts (a flapping link, a gateway that keeps timing
  out);
- hours since the device last came online, minutes since it last reported, and hours until
  its site closes (a terminal switched off at closing cannot fail while it is off);
- how unsteady its network latency is over the last 30 minutes and hour against its own
  normal of the day before (the median step between readings, on a log scale: a degrading
  link jitters before it drops), and its warnings of the last 30 minutes and hour by
  category (``api``: retransmissions to the server; ``external_service``: a payment gateway
  answering slowly, among other things);
- its site's other devices ("peers", sharing the store's uplink and payment gateway): the
  share of them that failed in the last hour, their critical errors and their
  external-service warnings of the last hour per peer.

The target of a training sample is whether a failure starts in ``(t, t + horizon]``. Samples
are taken every 15 minutes while the device is up (a device already down cannot fail again).

numpy is imported here, so import this module only where insights run.
"""

from __future__ import annotations

import bisect
import math
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics.models import (
    DEVICE,
    ConfigurationHistory,
    DeviceMetrics,
    DeviceStateHistory,
    ErrorLog,
    JobOutcome,
    SiteOperatingSchedule,
)
from homepot.device.models import Device
from homepot.kit.offload import compute, stream_in_slices
from homepot.site.models import Site
from homepot.site.windows import next_maintenance_window, opening_intervals

METRICS = (
    ("cpu", "cpu_percent"),
    ("memory", "memory_percent"),
    ("disk", "disk_percent"),
    ("latency", "network_latency_ms"),
    ("error_rate", "error_rate"),
)
FEATURES: tuple[str, ...] = tuple(
    f"{name}_{kind}"
    for name, _ in METRICS
    for kind in ("last", "mean_1h", "slope_3h", "dev_24h", "excess_24h")
) + (
    "memory_hours_to_limit",
    "errors_critical_1h",
    "errors_critical_6h",
    "errors_error_6h",
    "errors_warning_6h",
    "errors_external_6h",
    "jobs_failed_24h",
    "state_changes_6h",
    "config_changes_6h",
    "failures_2h",
    "failures_24h",
    "minutes_since_failure",
    "hours_since_online",
    "minutes_since_report",
    "hours_until_close",
    "latency_jitter_30m",
    "latency_jitter_1h",
    "warnings_api_30m",
    "warnings_api_1h",
    "warnings_external_30m",
    "warnings_external_1h",
    "peers_failed_1h",
    "peers_critical_1h",
    "peers_warnings_external_1h",
)
DOWN_STATES = frozenset({"error", "offline"})
SAMPLE_STEP = timedelta(minutes=15)
# How much history before a moment its features read (the baseline, up to one
# BASELINE_PERIOD older than the moment, reads this much before its anchor).
HISTORY = timedelta(hours=24)
# How often a device's baseline (its own normal of the day before) moves on: at its anchors,
# one BASELINE_PERIOD apart, each device at its own phase within the period (from its id),
# so that a server's passes recompute the baselines of a slice of the fleet at a time.
BASELINE_PERIOD = timedelta(hours=1)
# The raw samples the features read outside the baseline: the last three hours (the slope).
RECENT = timedelta(hours=3)
_HOUR = 3600.0
_CAP_HOURS_SINCE_ONLINE = 72.0
_CAP_MINUTES_SINCE_REPORT = 360.0
_CAP_MINUTES_SINCE_FAILURE = 24 * 60.0
_CAP_HOURS_TO_LIMIT = 48.0
_CAP_HOURS_UNTIL_CLOSE = 24.0
MEMORY_LIMIT = 98.0
# The smallest usual jitter a ratio divides by (median step of log latency, about 2 %).
_MIN_JITTER = 0.02


@dataclass
class SiteEvents:
    """What a site's devices went through, for the features of each one's peers: sorted
    (epoch seconds, device_id) pairs."""

    devices: set[str] = field(default_factory=set)
    failures: list[tuple[float, str]] = field(default_factory=list)
    critical: list[tuple[float, str]] = field(default_factory=list)
    external_warnings: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class DeviceHistory:
    """One device's rows, as sorted arrays of epoch seconds and values."""

    device_id: str
    site_id: str | None
    metric_times: np.ndarray = field(default_factory=lambda: np.empty(0))
    metric_values: dict[str, np.ndarray] = field(default_factory=dict)
    states: list[tuple[float, str]] = field(default_factory=list)  # (time, new_state)
    errors: list[tuple[float, str, str]] = field(default_factory=list)  # (time, severity, cat)
    failed_jobs: list[float] = field(default_factory=list)
    config_changes: list[float] = field(default_factory=list)
    failures: list[float] = field(default_factory=list)  # starts of failures (targets)
    # The site's opening hours as sorted (open, close) epoch seconds; None: always open.
    open_intervals: list[tuple[float, float]] | None = None
    site: SiteEvents | None = None  # shared by the devices of its site
    # Baselines by anchor (computed from the arrays when first asked, or given by the
    # server's cache, homepot.insights.risk_reads).
    baselines: dict[float, Baseline] = field(default_factory=dict)
    # The newest sample at or before the moment scored, when the arrays hold only the last
    # RECENT of the samples (a server's pass): a device silent for 3-6 h is still scored.
    last_report: float | None = None

    @property
    def reported(self) -> bool:
        return bool(self.metric_times.size) or self.last_report is not None


@dataclass(frozen=True)
class Baseline:
    """A device's own normal over the day before its anchor: per metric (median, spread,
    95th percentile) of ``(anchor - HISTORY, anchor - 1 h]``, None with fewer than 12
    values; and its usual latency jitter (NaN with fewer than 12 samples)."""

    anchor: float
    levels: dict[str, tuple[float, float, float] | None]
    jitter: float


@dataclass
class History:
    devices: dict[str, DeviceHistory]
    since: datetime
    until: datetime
    # device_metrics rows read to build it (what a risk pass costs the database).
    metric_rows: int = 0


def history_start(since: datetime) -> datetime:
    """The oldest moment the features of moments from ``since`` on read: a day before the
    baseline anchor, which is up to one BASELINE_PERIOD before the moment."""
    return since - HISTORY - BASELINE_PERIOD


def baseline_anchor(device_id: str, moment: float) -> float:
    """The device's latest baseline anchor at or before ``moment`` (epoch seconds): anchors
    come every BASELINE_PERIOD, at a phase within it fixed by the device's id."""
    period = BASELINE_PERIOD.total_seconds()
    phase = zlib.crc32(device_id.encode()) % int(period)
    return math.floor((moment - phase) / period) * period + phase


def median_of(values: np.ndarray) -> float:
    """``np.median`` of a 1-d array without NaN, the same value: the middle of the sorted
    values, or the mean of the two middle ones (their sum halved, as ``np.mean`` computes
    it); only a zero's sign may differ where -0.0 and 0.0 tie in the middle. ``np.median``
    spends most of its time in its wrappers on a device's arrays (tens of values to a few
    thousand): a risk pass called it 13 times a device (benchmarks/risk_baselines.py)."""
    ordered = np.sort(values)
    return median_of_sorted(ordered)


def median_of_sorted(ordered: np.ndarray) -> float:
    """:func:`median_of` values already sorted."""
    middle = ordered.size // 2
    if ordered.size % 2:
        return float(ordered[middle])
    return float((ordered[middle - 1] + ordered[middle]) / 2)


def percentile_of_sorted(ordered: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (its default, linear interpolation) of values already
    sorted and without NaN, the same value: the same virtual index ``(n - 1) * q / 100``,
    and the same two-sided interpolation between its neighbours (from the upper one when
    the fraction is at least one half, as numpy's ``_lerp`` does)."""
    last = ordered.size - 1
    virtual = last * (q / 100)
    below = math.floor(virtual)
    if below >= last:
        return float(ordered[last])
    lower, upper = float(ordered[below]), float(ordered[below + 1])
    fraction = virtual - below
    difference = upper - lower
    if fraction >= 0.5:
        return upper - difference * (1 - fraction)
    return lower + difference * fraction


def compute_baseline(times: np.ndarray, values: dict[str, np.ndarray], anchor: float) -> Baseline:
    """The baseline at ``anchor`` from sorted sample times and each metric's values (which
    must hold every sample of ``(anchor - HISTORY, anchor - 1 h]``)."""
    first = int(np.searchsorted(times, anchor - HISTORY.total_seconds(), side="right"))
    end = int(np.searchsorted(times, anchor - _HOUR, side="right"))
    levels: dict[str, tuple[float, float, float] | None] = {}
    for name, _ in METRICS:
        before = values.get(name, np.empty(0))[first:end]
        before = before[~np.isnan(before)]
        if before.size >= 12:
            ordered = np.sort(before)
            middle = median_of_sorted(ordered)
            spread = 1.4826 * median_of(np.abs(before - middle))
            levels[name] = (middle, spread, percentile_of_sorted(ordered, 95))
        else:
            levels[name] = None
    latency = values.get("latency", np.empty(0))
    jitter = _jitter(latency[first:end]) if end - first >= 12 else math.nan
    return Baseline(anchor=anchor, levels=levels, jitter=jitter)


def baseline_at(entry: DeviceHistory, moment: float) -> Baseline:
    """The device's baseline for the features at ``moment``: the one at its latest anchor,
    computed from its arrays the first time it is asked for."""
    anchor = baseline_anchor(entry.device_id, moment)
    found = entry.baselines.get(anchor)
    if found is None:
        found = entry.baselines[anchor] = compute_baseline(
            entry.metric_times, entry.metric_values, anchor
        )
    return found


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


async def load_history(
    session: AsyncSession,
    since: datetime,
    until: datetime,
    *,
    include_simulated: bool = False,
) -> History:
    """Every device's rows needed to compute features over ``[since, until]``.

    Reads ``HISTORY`` and a ``BASELINE_PERIOD`` before ``since`` too, so that the first
    moments have their context (:func:`history_start`). Without ``include_simulated`` only
    real rows count (``source = device``) and simulated terminals are left out, so that a
    model never learns the simulator for the real fleet.
    """
    start = history_start(since)
    devices = await fleet_histories(session, include_simulated=include_simulated)
    statement = metric_rows(start, until, include_simulated=include_simulated)
    metrics, count = await read_metrics(session, statement)
    for device_id, (times, values) in metrics.items():
        if device_id not in devices:  # samples of a device not (or no longer) registered
            devices[device_id] = DeviceHistory(device_id, None)
        entry = devices[device_id]
        entry.metric_times = times
        entry.metric_values.update(values)
    await read_events(session, devices, start, until, include_simulated=include_simulated)
    return History(devices=devices, since=since, until=until, metric_rows=count)


async def fleet_histories(
    session: AsyncSession, *, include_simulated: bool
) -> dict[str, DeviceHistory]:
    """An empty history for every device (real ones only, unless ``include_simulated``)."""
    fleet = select(Device.device_id, Device.site_id)
    if not include_simulated:
        fleet = fleet.where(Device.simulated.is_(False))
    return {
        device_id: DeviceHistory(device_id, site_id)
        for device_id, site_id in (await session.execute(fleet)).all()
    }


def metric_rows(
    start: datetime,
    until: datetime,
    *,
    include_simulated: bool,
    start_inclusive: bool = True,
    device_ids: Sequence[str] | None = None,
) -> Any:
    """The statement of the samples in ``[start, until]`` (``(start, until]`` without
    ``start_inclusive``), of the given devices or all, ordered by device and time."""
    columns = [getattr(DeviceMetrics, column) for _, column in METRICS]
    after = DeviceMetrics.timestamp >= start if start_inclusive else DeviceMetrics.timestamp > start
    statement = (
        select(DeviceMetrics.device_id, DeviceMetrics.timestamp, *columns)
        .where(after, DeviceMetrics.timestamp <= until)
        .order_by(DeviceMetrics.device_id, DeviceMetrics.timestamp)
    )
    if not include_simulated:
        statement = statement.where(DeviceMetrics.source == DEVICE)
    if device_ids is not None:
        statement = statement.where(DeviceMetrics.device_id.in_(device_ids))
    return statement


async def read_metrics(
    session: AsyncSession, statement: Any
) -> tuple[dict[str, tuple[np.ndarray, dict[str, np.ndarray]]], int]:
    """The samples of a :func:`metric_rows` statement as each device's arrays, and how many
    rows were read."""
    # Every device's day of samples (5,000 devices: ~1 s of Python) made into arrays off the
    # event loop, a slice of rows at a time: a million Row objects alive at once made every
    # full garbage collection (it holds the GIL, so the loop) take 0.1-0.3 s.
    metrics: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    count = 0
    async for part in stream_in_slices(session, statement):
        count += len(part)
        for device_id, (times, values) in (await compute(_metric_arrays, part)).items():
            if device_id in metrics:  # its rows began in the previous slice
                earlier_times, earlier = metrics[device_id]
                later = values
                times = np.concatenate([earlier_times, times])
                values = {name: np.concatenate([earlier[name], later[name]]) for name in later}
            metrics[device_id] = (times, values)
    return metrics, count


async def read_events(
    session: AsyncSession,
    devices: dict[str, DeviceHistory],
    start: datetime,
    until: datetime,
    *,
    include_simulated: bool,
) -> None:
    """Each device's state changes, failures, errors, failed jobs and configuration changes
    of ``[start, until]``, its site's opening hours, and its peers' events."""
    real: dict[type[Any], list[Any]] = {
        model: [] if include_simulated else [model.source == DEVICE]
        for model in (DeviceStateHistory, ErrorLog, JobOutcome, ConfigurationHistory)
    }

    def history(device_id: str | None) -> DeviceHistory | None:
        if device_id is None:
            return None
        if device_id not in devices:
            devices[device_id] = DeviceHistory(device_id, None)
        return devices[device_id]

    expected_downtime, opening = await _site_calendar(session)
    for device in devices.values():
        device.open_intervals = opening(device.site_id, start, until + timedelta(days=1))
    for device_id, moment, new_state in (
        await session.execute(
            select(
                DeviceStateHistory.device_id,
                DeviceStateHistory.timestamp,
                DeviceStateHistory.new_state,
            )
            .where(DeviceStateHistory.timestamp >= start, DeviceStateHistory.timestamp <= until)
            .where(*real[DeviceStateHistory])
            .order_by(DeviceStateHistory.timestamp)
        )
    ).all():
        entry = history(device_id)
        assert entry is not None
        if entry.open_intervals is None and entry.site_id is not None:
            entry.open_intervals = opening(entry.site_id, start, until + timedelta(days=1))
        entry.states.append((_epoch(moment), new_state))
        if new_state in DOWN_STATES and not expected_downtime(entry.site_id, moment, new_state):
            entry.failures.append(_epoch(moment))
    for reporter, moment, severity, category in (
        await session.execute(
            select(ErrorLog.device_id, ErrorLog.timestamp, ErrorLog.severity, ErrorLog.category)
            .where(
                ErrorLog.device_id.is_not(None),
                ErrorLog.timestamp >= start,
                ErrorLog.timestamp <= until,
                *real[ErrorLog],
            )
            .order_by(ErrorLog.timestamp)
        )
    ).all():
        entry = history(reporter)
        assert entry is not None
        entry.errors.append((_epoch(moment), severity, category))
        if severity == "critical":
            entry.failures.append(_epoch(moment))
    for target, moment in (
        await session.execute(
            select(JobOutcome.device_id, JobOutcome.timestamp)
            .where(
                JobOutcome.device_id.is_not(None),
                JobOutcome.status.in_(("failed", "timeout")),
                JobOutcome.timestamp >= start,
                JobOutcome.timestamp <= until,
                *real[JobOutcome],
            )
            .order_by(JobOutcome.timestamp)
        )
    ).all():
        entry = history(target)
        assert entry is not None
        entry.failed_jobs.append(_epoch(moment))
    for device_id, moment in (
        await session.execute(
            select(ConfigurationHistory.entity_id, ConfigurationHistory.timestamp)
            .where(
                ConfigurationHistory.entity_type == "device",
                ConfigurationHistory.timestamp >= start,
                ConfigurationHistory.timestamp <= until,
                *real[ConfigurationHistory],
            )
            .order_by(ConfigurationHistory.timestamp)
        )
    ).all():
        entry = history(device_id)
        assert entry is not None
        entry.config_changes.append(_epoch(moment))
    for entry in devices.values():
        entry.failures.sort()
    _index_sites(devices.values())


def _metric_arrays(
    metric_rows: Sequence[Any],
) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The rows of :func:`load_history` (device, timestamp, a column per metric; ordered by
    device and time) as each device's sample times and values, in the order of the rows."""
    rows: defaultdict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in metric_rows:
        rows[row[0]].append(row[1:])
    arrays = {}
    for device_id, samples in rows.items():
        times = np.array([_epoch(sample[0]) for sample in samples])
        values = {
            name: np.array(
                [np.nan if sample[index] is None else float(sample[index]) for sample in samples]
            )
            for index, (name, _) in enumerate(METRICS, start=1)
        }
        arrays[device_id] = (times, values)
    return arrays


def _index_sites(entries: Iterable[DeviceHistory]) -> None:
    """Give each device with a site the events of that site's devices (its peers')."""
    sites: dict[str, SiteEvents] = {}
    for entry in entries:
        if entry.site_id is None:
            continue
        site = entry.site = sites.setdefault(entry.site_id, SiteEvents())
        if entry.reported:
            site.devices.add(entry.device_id)
        site.failures += [(at, entry.device_id) for at in entry.failures]
        for at, severity, category in entry.errors:
            if severity == "critical":
                site.critical.append((at, entry.device_id))
            elif severity == "warning" and category == "external_service":
                site.external_warnings.append((at, entry.device_id))
    for site in sites.values():
        site.failures.sort()
        site.critical.sort()
        site.external_warnings.sort()


async def _site_calendar(session: AsyncSession) -> tuple[Any, Any]:
    """``expected(site_id, moment, state)``: is a device going to ``state`` then no failure?
    And ``opening(site_id, start, end)``: the site's opening hours in epoch seconds (None for
    a site without schedules: always open).

    Inside its site's maintenance window nothing is a failure (updates restart terminals). A
    terminal going ``offline`` while its site is closed is switched off for the night, not
    broken; an ``error`` is a failure whenever it happens.
    """
    zones = dict((await session.execute(select(Site.site_id, Site.timezone))).all())
    schedules: defaultdict[str, list[SiteOperatingSchedule]] = defaultdict(list)
    for schedule in await session.scalars(select(SiteOperatingSchedule)):
        schedules[schedule.site_id].append(schedule)

    def expected(site_id: str | None, moment: datetime, state: str) -> bool:
        if site_id is None or not schedules.get(site_id):
            return False
        zone = zones.get(site_id, "UTC")
        if next_maintenance_window(schedules[site_id], zone, moment) == moment:
            return True
        if state != "offline":
            return False
        around = timedelta(seconds=1)
        return not opening_intervals(schedules[site_id], zone, moment, moment + around)

    # A site's hours over a range, computed once for all its devices (read, never changed).
    known: dict[tuple[str, datetime, datetime], list[tuple[float, float]]] = {}

    def opening(
        site_id: str | None, start: datetime, end: datetime
    ) -> list[tuple[float, float]] | None:
        if site_id is None or not schedules.get(site_id):
            return None
        key = (site_id, start, end)
        if key not in known:
            zone = zones.get(site_id, "UTC")
            known[key] = [
                (_epoch(a), _epoch(b))
                for a, b in opening_intervals(schedules[site_id], zone, start, end)
            ]
        return known[key]

    return expected, opening


def _count(times: Sequence[float], start: float, end: float) -> int:
    return bisect.bisect_right(times, end) - bisect.bisect_right(times, start)


def _slope(times: np.ndarray, values: np.ndarray) -> float:
    mask = ~np.isnan(values)
    if mask.sum() < 3:
        return math.nan
    x = (times[mask] - times[mask].mean()) / _HOUR
    y = values[mask]
    denominator = float((x * x).sum())
    if denominator == 0:
        return math.nan
    return float((x * (y - y.mean())).sum() / denominator)


def _jitter(values: np.ndarray) -> float:
    """The median step between consecutive readings on a log scale (NaN below 3 readings)."""
    values = values[values > 0]  # NaN compares False: dropped too
    if values.size < 3:
        return math.nan
    return median_of(np.abs(np.diff(np.log(values))))


def _peer_events(
    events: list[tuple[float, str]], device_id: str, start: float, end: float
) -> list[str]:
    """The devices other than ``device_id`` of the events in ``(start, end]``."""
    first = bisect.bisect_right(events, (start, "\uffff"))
    last = bisect.bisect_right(events, (end, "\uffff"))
    return [device for _, device in events[first:last] if device != device_id]


def _peer_features(entry: DeviceHistory, moment: float) -> list[float]:
    site = entry.site
    peers = len(site.devices - {entry.device_id}) if site is not None else 0
    if site is None or peers == 0:
        return [math.nan, math.nan, math.nan]
    start = moment - _HOUR
    failed = set(_peer_events(site.failures, entry.device_id, start, moment))
    return [
        len(failed) / peers,
        len(_peer_events(site.critical, entry.device_id, start, moment)) / peers,
        len(_peer_events(site.external_warnings, entry.device_id, start, moment)) / peers,
    ]


def _warning_counts(entry: DeviceHistory, moment: float) -> list[float]:
    """Warnings of the last 30 minutes and hour: api ones, then external-service ones."""
    counts = {("api", 30): 0, ("api", 60): 0, ("external_service", 30): 0,
              ("external_service", 60): 0}  # fmt: skip
    start = bisect.bisect_right(entry.errors, (moment - _HOUR, "\uffff", ""))
    for at, severity, category in entry.errors[start:]:
        if at > moment:
            break
        if severity != "warning" or category not in ("api", "external_service"):
            continue
        counts[(category, 60)] += 1
        if at > moment - _HOUR / 2:
            counts[(category, 30)] += 1
    return [float(count) for count in counts.values()]


def state_at(entry: DeviceHistory, moment: float) -> str | None:
    index = bisect.bisect_right(entry.states, (moment, "\uffff")) - 1
    return entry.states[index][1] if index >= 0 else None


def features_at(entry: DeviceHistory, moment: float) -> list[float]:
    """The feature vector (in FEATURES order) of one device at one moment (epoch seconds)."""
    values: list[float] = []
    times = entry.metric_times
    last_index = int(np.searchsorted(times, moment, side="right"))
    hour_start = int(np.searchsorted(times, moment - _HOUR, side="right"))
    three_hours = int(np.searchsorted(times, moment - RECENT.total_seconds(), side="right"))
    baseline = baseline_at(entry, moment)
    memory_mean = memory_slope = math.nan
    for name, _ in METRICS:
        series = entry.metric_values.get(name, np.empty(0))
        recent = series[hour_start:last_index]
        recent = recent[~np.isnan(recent)]
        last = float(recent[-1]) if recent.size else math.nan
        mean = float(recent.mean()) if recent.size else math.nan
        slope = _slope(times[three_hours:last_index], series[three_hours:last_index])
        level = baseline.levels.get(name)
        if level is not None and recent.size:
            median, spread, highest = level
            deviation = (mean - median) / max(spread, 0.5)
            excess = mean - highest
        else:
            deviation = excess = math.nan
        values += [last, mean, slope, deviation, excess]
        if name == "memory":
            memory_mean, memory_slope = mean, slope
    if memory_slope > 0 and not math.isnan(memory_mean):
        to_limit = max(0.0, MEMORY_LIMIT - memory_mean) / memory_slope
        values.append(min(to_limit, _CAP_HOURS_TO_LIMIT))
    else:
        values.append(math.nan if math.isnan(memory_mean) else _CAP_HOURS_TO_LIMIT)
    six_hours = moment - 6 * _HOUR
    severities = {"critical": 0, "error": 0, "warning": 0}
    external = critical_last_hour = 0
    for at, severity, category in entry.errors[
        bisect.bisect_right(entry.errors, (six_hours, "\uffff", "")) :
    ]:
        if at > moment:
            break
        if severity in severities:
            severities[severity] += 1
        if category == "external_service":
            external += 1
        if severity == "critical" and at > moment - _HOUR:
            critical_last_hour += 1
    past = bisect.bisect_right(entry.failures, moment)
    values += [
        float(critical_last_hour),
        float(severities["critical"]),
        float(severities["error"]),
        float(severities["warning"]),
        float(external),
        float(_count(entry.failed_jobs, moment - 24 * _HOUR, moment)),
        float(_count([at for at, _ in entry.states], six_hours, moment)),
        float(_count(entry.config_changes, six_hours, moment)),
        float(_count(entry.failures, moment - 2 * _HOUR, moment)),
        float(_count(entry.failures, moment - 24 * _HOUR, moment)),
        min((moment - entry.failures[past - 1]) / 60, _CAP_MINUTES_SINCE_FAILURE)
        if past
        else _CAP_MINUTES_SINCE_FAILURE,
    ]
    online = [at for at, state in entry.states if state == "online" and at <= moment]
    values.append(
        min((moment - online[-1]) / _HOUR, _CAP_HOURS_SINCE_ONLINE)
        if online
        else _CAP_HOURS_SINCE_ONLINE
    )
    reported = _last_report(entry, moment, last_index)
    values.append(
        min((moment - reported) / 60, _CAP_MINUTES_SINCE_REPORT)
        if reported is not None
        else _CAP_MINUTES_SINCE_REPORT
    )
    values.append(_hours_until_close(entry.open_intervals, moment))
    latency = entry.metric_values.get("latency", np.empty(0))
    usual = baseline.jitter
    half_hour = int(np.searchsorted(times, moment - _HOUR / 2, side="right"))
    for first in (half_hour, hour_start):
        recent_jitter = _jitter(latency[first:last_index])
        values.append(recent_jitter / max(usual, _MIN_JITTER))
    values += _warning_counts(entry, moment)
    values += _peer_features(entry, moment)
    return values


def _last_report(entry: DeviceHistory, moment: float, last_index: int) -> float | None:
    """When the device last reported at or before ``moment`` (None: not in its history)."""
    if last_index:
        return float(entry.metric_times[last_index - 1])
    if entry.last_report is not None and entry.last_report <= moment:
        return entry.last_report
    return None


def _hours_until_close(intervals: list[tuple[float, float]] | None, moment: float) -> float:
    """Hours until the site's current opening ends (0 while closed; the cap for a site that
    never closes or whose schedule is unknown)."""
    if intervals is None:
        return _CAP_HOURS_UNTIL_CLOSE
    index = bisect.bisect_right(intervals, (moment, math.inf)) - 1
    if index < 0 or intervals[index][1] <= moment:
        return 0.0
    return min((intervals[index][1] - moment) / _HOUR, _CAP_HOURS_UNTIL_CLOSE)


def fails_within(entry: DeviceHistory, moment: float, horizon: timedelta) -> bool:
    index = bisect.bisect_right(entry.failures, moment)
    return index < len(entry.failures) and entry.failures[index] <= moment + horizon.total_seconds()


@dataclass
class Samples:
    matrix: np.ndarray  # rows × FEATURES
    labels: np.ndarray  # 1 = a failure started within the horizon
    moments: np.ndarray  # epoch seconds of each row
    device_ids: list[str]


def training_samples(history: History, horizon: timedelta) -> Samples:
    """One row per device every 15 minutes while it is up and has reported recently."""
    rows: list[list[float]] = []
    labels: list[int] = []
    moments: list[float] = []
    device_ids: list[str] = []
    last = _epoch(history.until) - horizon.total_seconds()
    first = _epoch(history.since)
    step = SAMPLE_STEP.total_seconds()
    for entry in history.devices.values():
        if entry.metric_times.size == 0:
            continue
        moment = first
        while moment <= last:
            if state_at(entry, moment) not in DOWN_STATES:
                times = entry.metric_times
                reported = np.searchsorted(times, moment, side="right") - np.searchsorted(
                    times, moment - _HOUR, side="right"
                )
                if reported > 0:
                    rows.append(features_at(entry, moment))
                    labels.append(int(fails_within(entry, moment, horizon)))
                    moments.append(moment)
                    device_ids.append(entry.device_id)
            moment += step
    matrix = np.array(rows, dtype=float) if rows else np.empty((0, len(FEATURES)))
    return Samples(matrix, np.array(labels, dtype=int), np.array(moments), device_ids)


def current_features(history: History, device_ids: Iterable[str], moment: datetime) -> Samples:
    """Feature rows at ``moment`` for the given devices (those that reported in the last 6 h)."""
    at = _epoch(moment)
    rows: list[list[float]] = []
    ids: list[str] = []
    for device_id in device_ids:
        entry = history.devices.get(device_id)
        if entry is None:
            continue
        reported = _last_report(
            entry, at, int(np.searchsorted(entry.metric_times, at, side="right"))
        )
        if reported is None or at - reported > 6 * _HOUR:
            continue
        rows.append(features_at(entry, at))
        ids.append(device_id)
    matrix = np.array(rows, dtype=float) if rows else np.empty((0, len(FEATURES)))
    return Samples(matrix, np.zeros(len(ids), dtype=int), np.full(len(ids), at), ids)
