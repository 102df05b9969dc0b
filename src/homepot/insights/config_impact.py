"""Configuration impact across the fleet: did a parameter's new value help or hurt?

Every ``configuration_history`` row is one device (or site) receiving one value of one
parameter. Rows are grouped by (parameter, new value): a config version is a parameter like
any other. For each change, each metric (error rate, network latency, CPU) is averaged over
the ``window`` before and the ``window`` after it on a grid of 5-minute bins (the bin that
holds the change belongs to neither side), and the effect is a difference in differences:

1. The device's change across the moment, ``after - before``;
2. minus its own usual change across the same clock time: the median of that difference at
   the same moment on the alike days within ``HISTORY_DAYS`` either side (days whose
   declared opening hours at the device's site are the same as the change's day; every day
   for a site without declared hours), at least ``MIN_HISTORY_DAYS`` of them. A change made
   every day just before opening then does not take the blame for the opening rush;
3. minus the same, averaged over the control devices (at least ``MIN_CONTROLS``): every
   device with metrics around that moment and no configuration change within a window of
   it, so that a fleet-wide busy day (or a quiet one) cancels out.

A change whose device lacks the alike days (a young fleet, a Saturday in a history shorter
than two weeks) is not measurable: with fewer than ``MIN_DEVICES`` measurable devices the
verdict is ``not_enough_data`` rather than a guess. A device that received the same value
more than once counts once (the mean of its effects). Across devices the effect is their
mean, with a 95 % confidence interval from Student's t over the devices, and the verdict:

- ``not_enough_data``: fewer than ``MIN_DEVICES`` devices with a measurable effect;
- ``regression``: for some metric the whole interval lies above zero and the effect is at
  least that metric's material size (``MATERIAL``);
- ``improvement``: no regression, and for some metric the whole interval lies below zero by
  at least the material size;
- ``no_effect`` otherwise.

Rows are sorted by harm: the largest effect of any metric in units of its material size
(``not_enough_data`` last).

A regression carries a rollback proposal: each device that received the value through a
device change and still has it gets the value it had before. Nothing is applied until an
operator accepts it (:func:`apply_rollback`): one ``config_change`` job per device, marked with
the proposal's id, so that each device's success is recorded in ``configuration_history``
with ``change_type='ai_recommended'`` (see :mod:`homepot.job.executions`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics.models import ConfigurationHistory, DeviceMetrics, SiteOperatingSchedule
from homepot.audit.service import Actor, same_value
from homepot.device.models import Device
from homepot.job.models import Job, JobStatus, JobTargetType
from homepot.kit.offload import compute, fetch_in_slices
from homepot.kit.redaction import REDACTED
from homepot.kit.timebuckets import epoch_bin
from homepot.site.models import Site

BIN_SECONDS: Final = 300
BINS_PER_DAY: Final = 24 * 3600 // BIN_SECONDS
HISTORY_DAYS: Final = 7
MIN_HISTORY_DAYS: Final = 3
MIN_DEVICES: Final = 3
MIN_CONTROLS: Final = 3
# The share of a window's bins that must hold samples for its mean to count.
MIN_COVERAGE: Final = 0.5
# metric -> (device_metrics column, unit, the smallest effect that matters)
METRICS: Final = {
    "error_rate": ("error_rate", "points", 0.5),
    "network_latency_ms": ("network_latency_ms", "ms", 20.0),
    "cpu_percent": ("cpu_percent", "points", 5.0),
}
MATERIAL: Final = {name: spec[2] for name, spec in METRICS.items()}
PROPOSAL_MARK: Final = "recommendation_id"
# Intervals read per query: each is one OR term.
_INTERVALS_PER_QUERY: Final = 50
_T_975: Final = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip

Verdict = Literal["regression", "improvement", "no_effect", "not_enough_data"]


def t_quantile(degrees: int) -> float:
    """Student's t at 97.5 % (a two-sided 95 % interval)."""
    if degrees < 1:
        return math.inf
    return _T_975[degrees - 1] if degrees <= len(_T_975) else 1.96 + 2.4 / degrees


def value_key(stored: dict[str, Any] | None) -> str:
    """A stored history value as canonical JSON ("null" for a removed key)."""
    value = None if stored is None else stored.get("value")
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def impact_id(parameter: str, key: str) -> str:
    """The stable id of a (parameter, new value) row: the same for every request."""
    digest = hashlib.sha256(f"{parameter}\x00{key}".encode()).hexdigest()
    return digest[:20]


def _withheld(key: str) -> bool:
    return REDACTED in key or "****" in key


@dataclass(frozen=True)
class Change:
    device_id: str
    bin: int
    parameter: str
    key: str  # the new value as canonical JSON
    old_key: str
    by_device: bool  # a change of the device's own config (not its site's)


@dataclass(frozen=True)
class MetricEffect:
    metric: str
    unit: str
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    devices: int


@dataclass
class ImpactRow:
    id: str
    parameter: str
    value: Any
    key: str
    devices: int
    changes: int
    first_at: datetime
    last_at: datetime
    metrics: list[MetricEffect]
    verdict: Verdict
    harm: float
    explanation: str
    restore: dict[str, list[str]] = field(default_factory=dict)  # old value key -> devices


@dataclass
class ImpactReport:
    since: datetime
    until: datetime
    window_minutes: int
    rows: list[ImpactRow]


# -- reading ----------------------------------------------------------------------------------


def _bin_of(moment: datetime) -> int:
    return math.floor(moment.timestamp() / BIN_SECONDS)


def _bin_start(index: int) -> datetime:
    from datetime import UTC

    return datetime.fromtimestamp(index * BIN_SECONDS, UTC)


async def _changes(
    session: AsyncSession, since: datetime, until: datetime, parameter: str | None
) -> list[Change]:
    """Every device-level change in ``[since, until)`` (a site's change: each of its devices)."""
    statement = select(
        ConfigurationHistory.timestamp,
        ConfigurationHistory.entity_type,
        ConfigurationHistory.entity_id,
        ConfigurationHistory.parameter_name,
        ConfigurationHistory.old_value,
        ConfigurationHistory.new_value,
    ).where(ConfigurationHistory.timestamp >= since, ConfigurationHistory.timestamp < until)
    if parameter is not None:
        statement = statement.where(ConfigurationHistory.parameter_name == parameter)
    rows = (await session.execute(statement.order_by(ConfigurationHistory.timestamp))).all()
    site_ids = {row.entity_id for row in rows if row.entity_type == "site"}
    devices_of: dict[str, list[str]] = {}
    if site_ids:
        for device_id, site_id in await session.execute(
            select(Device.device_id, Device.site_id).where(Device.site_id.in_(site_ids))
        ):
            devices_of.setdefault(site_id, []).append(device_id)
    changes = []
    for row in rows:
        by_device = row.entity_type == "device"
        targets = [row.entity_id] if by_device else devices_of.get(row.entity_id, [])
        for device_id in targets:
            changes.append(
                Change(
                    device_id=device_id,
                    bin=_bin_of(row.timestamp),
                    parameter=row.parameter_name,
                    key=value_key(row.new_value),
                    old_key=value_key(row.old_value),
                    by_device=by_device,
                )
            )
    return changes


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for first, end in sorted(spans):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((first, end))
    return merged


@dataclass
class _Deltas:
    """Per moment (a bin): each device's ``after - before`` per metric (NaN: not measurable)."""

    devices: list[str]
    row_of: dict[str, int]
    by_bin: dict[int, Any]  # bin -> array (devices, metrics)


async def _deltas(
    session: AsyncSession, moments: set[int], window: int, devices: list[str]
) -> _Deltas:
    """``after - before`` of every device at each of ``moments`` (bins)."""
    row_of = {device_id: index for index, device_id in enumerate(devices)}
    names = list(METRICS)
    spans = _merge((moment - window, moment + 1 + window) for moment in moments)
    bucket = epoch_bin(DeviceMetrics.timestamp, BIN_SECONDS).label("bucket")
    by_bin: dict[int, Any] = {}
    ordered = sorted(moments)
    for offset in range(0, len(spans), _INTERVALS_PER_QUERY):
        group = spans[offset : offset + _INTERVALS_PER_QUERY]
        statement = (
            select(
                DeviceMetrics.device_id,
                bucket,
                *(func.avg(getattr(DeviceMetrics, METRICS[name][0])) for name in names),
            )
            .where(
                or_(
                    *(
                        and_(
                            DeviceMetrics.timestamp >= _bin_start(first),
                            DeviceMetrics.timestamp < _bin_start(end),
                        )
                        for first, end in group
                    )
                )
            )
            .group_by(DeviceMetrics.device_id, bucket)
        )
        rows = await fetch_in_slices(await session.connection(), statement)
        # Up to devices x bins rows, placed and differenced off the event loop.
        by_bin.update(await compute(_group_deltas, rows, group, row_of, window, ordered))
    return _Deltas(devices, row_of, by_bin)


def _group_deltas(
    rows: Sequence[Any],
    group: Sequence[tuple[int, int]],
    row_of: dict[str, int],
    window: int,
    ordered: Sequence[int],
) -> dict[int, Any]:
    """``after - before`` per device at each moment of ``ordered`` inside ``group``'s spans,
    from the per-bin means in ``rows`` (device, bin, a mean per metric)."""
    from homepot.insights.detectors import _quiet, numpy

    np = numpy()
    starts = [first for first, _ in group]
    arrays = [np.full((len(row_of), end - first, len(METRICS)), np.nan) for first, end in group]
    for row in rows:
        index = row_of.get(row[0])
        if index is None:
            continue
        bin_index = int(row[1])
        where = bisect.bisect_right(starts, bin_index) - 1
        if where < 0 or bin_index >= group[where][1]:
            continue
        arrays[where][index, bin_index - starts[where]] = [
            np.nan if v is None else float(v) for v in row[2:]
        ]
    needed = math.ceil(window * MIN_COVERAGE)
    by_bin: dict[int, Any] = {}
    for (first, end), values in zip(group, arrays, strict=True):
        low = bisect.bisect_left(ordered, first + window)
        high = bisect.bisect_left(ordered, end - window)
        for moment in ordered[low:high]:
            column = moment - first
            before = values[:, column - window : column]
            after = values[:, column + 1 : column + 1 + window]
            with _quiet():
                delta = np.nanmean(after, axis=1) - np.nanmean(before, axis=1)
            enough = ((~np.isnan(before)).sum(axis=1) >= needed) & (
                (~np.isnan(after)).sum(axis=1) >= needed
            )
            by_bin[moment] = np.where(enough, delta, np.nan)
    return by_bin


# -- the estimate -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Calendar:
    """Which days are alike for each device: its site's time zone and declared hours."""

    site_of_row: list[int]  # device row -> site index
    timezones: list[str]
    # site index -> its 7 weekdays' (open, close, closed); None: no declared hours
    hours: list[tuple[Any, ...] | None]

    def alike(self, moment: int, offsets: Sequence[int]) -> Any:
        """(devices, offsets): True where the day ``offset`` days from ``moment`` has the
        same declared hours as the moment's day, at the device's site (local weekdays)."""
        from zoneinfo import ZoneInfo

        from homepot.insights.detectors import numpy

        np = numpy()
        per_site = np.ones((len(self.timezones) + 1, len(offsets)), dtype=bool)
        when = _bin_start(moment)
        for site, (zone, hours) in enumerate(zip(self.timezones, self.hours, strict=True)):
            if hours is None:
                continue
            weekday = when.astimezone(ZoneInfo(zone)).weekday()
            per_site[site] = [hours[(weekday + k) % 7] == hours[weekday] for k in offsets]
        return per_site[np.array(self.site_of_row, dtype=np.int64)]


async def _calendar(session: AsyncSession, devices: Sequence[str]) -> _Calendar:
    timezones = dict((await session.execute(select(Site.site_id, Site.timezone))).all())
    sites = sorted(timezones)
    index = {site_id: position for position, site_id in enumerate(sites)}
    declared: dict[str, dict[int, tuple[Any, ...]]] = {}
    for row in await session.scalars(select(SiteOperatingSchedule)):
        declared.setdefault(row.site_id, {})[row.day_of_week] = (
            row.open_time,
            row.close_time,
            row.is_closed,
        )
    hours = [
        tuple(declared[s].get(day) for day in range(7)) if s in declared else None for s in sites
    ]
    site_of = dict((await session.execute(select(Device.device_id, Device.site_id))).all())
    # A device of an unknown site: the extra last row, every day alike.
    rows = [index.get(site_of.get(device_id, ""), len(sites)) for device_id in devices]
    return _Calendar(rows, [timezones[s] or "UTC" for s in sites], hours)


def _adjusted(deltas: _Deltas, calendar: _Calendar, moment: int) -> Any:
    """Each device's delta at ``moment`` less its usual delta at the same clock time on the
    alike days within ``HISTORY_DAYS`` either side (NaN with fewer than MIN_HISTORY_DAYS)."""
    from homepot.insights.detectors import _quiet, nanmedian, numpy

    np = numpy()
    raw = deltas.by_bin[moment]
    offsets = [
        k
        for k in range(-HISTORY_DAYS, HISTORY_DAYS + 1)
        if k and moment + k * BINS_PER_DAY in deltas.by_bin
    ]
    if not offsets:
        return np.full(raw.shape, np.nan)
    stacked = np.stack([deltas.by_bin[moment + k * BINS_PER_DAY] for k in offsets], axis=2)
    alike = calendar.alike(moment, offsets)  # (devices, offsets)
    stacked = np.where(alike[:, None, :], stacked, np.nan)
    with _quiet():
        usual = nanmedian(stacked, axis=2)
    days = (~np.isnan(stacked)).sum(axis=2)
    return np.where(days >= MIN_HISTORY_DAYS, raw - usual, np.nan)


def _effects(
    changes: Sequence[Change],
    deltas: _Deltas,
    calendar: _Calendar,
    changed_near: dict[str, list[int]],
    window: int,
) -> dict[str, Any]:
    """Per device, the mean difference in differences of its changes (metrics array)."""
    from homepot.insights.detectors import _quiet, numpy

    np = numpy()
    per_device: dict[str, list[Any]] = {}
    cache: dict[int, tuple[Any, Any]] = {}
    for change in changes:
        if change.bin not in deltas.by_bin or change.device_id not in deltas.row_of:
            continue
        if change.bin not in cache:
            quiet = np.array(
                [_quiet_around(changed_near.get(d, []), change.bin, window) for d in deltas.devices]
            )
            cache[change.bin] = (_adjusted(deltas, calendar, change.bin), quiet)
        adjusted, quiet = cache[change.bin]
        row = deltas.row_of[change.device_id]
        controls = adjusted[quiet]
        counted = (~np.isnan(controls)).sum(axis=0)
        with _quiet():
            control_mean = np.nanmean(controls, axis=0)
        did = np.where(counted >= MIN_CONTROLS, adjusted[row] - control_mean, np.nan)
        per_device.setdefault(change.device_id, []).append(did)
    with _quiet():
        return {d: np.nanmean(np.stack(v), axis=0) for d, v in per_device.items()}


def _judge_groups(
    groups: dict[tuple[str, str], list[Change]],
    deltas: _Deltas,
    calendar: _Calendar,
    changed_near: dict[str, list[int]],
    window: int,
) -> list[tuple[list[MetricEffect], tuple[Verdict, float, str]]]:
    """Each group's effects on the metrics and its verdict, in the order of ``groups``."""
    judged = []
    for changes in groups.values():
        metrics = _summarise(_effects(changes, deltas, calendar, changed_near, window))
        judged.append((metrics, judge(metrics)))
    return judged


def _quiet_around(bins: list[int], moment: int, window: int) -> bool:
    """True when none of ``bins`` (sorted) lies within a window and a bin of ``moment``."""
    at = bisect.bisect_left(bins, moment - window - 1)
    return at == len(bins) or bins[at] > moment + window + 1


def _summarise(per_device: dict[str, Any]) -> list[MetricEffect]:
    from homepot.insights.detectors import numpy

    np = numpy()
    out = []
    for index, (name, (_, unit, _material)) in enumerate(METRICS.items()):
        values = np.array([v[index] for v in per_device.values()], dtype=float)
        values = values[~np.isnan(values)]
        n = int(values.size)
        if n == 0:
            out.append(MetricEffect(name, unit, None, None, None, 0))
            continue
        mean = float(values.mean())
        if n < 2:
            out.append(MetricEffect(name, unit, round(mean, 3), None, None, n))
            continue
        half = t_quantile(n - 1) * float(values.std(ddof=1)) / math.sqrt(n)
        out.append(
            MetricEffect(
                name, unit, round(mean, 3), round(mean - half, 3), round(mean + half, 3), n
            )
        )
    return out


def judge(metrics: Sequence[MetricEffect]) -> tuple[Verdict, float, str]:
    """The verdict, the harm (largest effect in material sizes) and why, in words."""
    measured = [m for m in metrics if m.effect is not None and m.devices >= MIN_DEVICES]
    if not measured:
        most = max((m.devices for m in metrics), default=0)
        return (
            "not_enough_data",
            0.0,
            f"measurable on {most} device(s); at least {MIN_DEVICES} are needed",
        )
    harm = max(m.effect / MATERIAL[m.metric] for m in measured if m.effect is not None)
    worse = [
        m
        for m in measured
        if m.ci_low is not None and m.ci_low > 0 and m.effect >= MATERIAL[m.metric]  # type: ignore[operator]
    ]
    better = [
        m
        for m in measured
        if m.ci_high is not None and m.ci_high < 0 and m.effect <= -MATERIAL[m.metric]  # type: ignore[operator]
    ]

    def said(m: MetricEffect) -> str:
        return (
            f"{m.metric.replace('_', ' ')} {m.effect:+.2f} {m.unit} "
            f"(95 % CI {m.ci_low:+.2f} to {m.ci_high:+.2f}, {m.devices} devices)"
        )

    if worse:
        return "regression", harm, "worse than unchanged devices: " + "; ".join(map(said, worse))
    if better:
        return (
            "improvement",
            harm,
            "better than unchanged devices: " + "; ".join(map(said, better)),
        )
    return "no_effect", harm, "no material difference from unchanged devices"


async def config_impact(
    session: AsyncSession,
    *,
    since: datetime,
    until: datetime,
    parameter: str | None = None,
    window_minutes: int = 30,
) -> ImpactReport:
    """The fleet-wide effect of each (parameter, new value) changed in ``[since, until)``."""
    window = max(1, window_minutes * 60 // BIN_SECONDS)
    margin = timedelta(days=HISTORY_DAYS, seconds=2 * window * BIN_SECONDS)
    every_change = await _changes(session, since - margin, until + margin, None)
    changed_near: dict[str, list[int]] = {}
    for change in every_change:
        changed_near.setdefault(change.device_id, []).append(change.bin)
    for bins in changed_near.values():
        bins.sort()
    first_bin = _bin_of(since)
    analysed = [
        c
        for c in every_change
        if first_bin <= c.bin < _bin_of(until) and (parameter is None or c.parameter == parameter)
    ]
    groups: dict[tuple[str, str], list[Change]] = {}
    for change in analysed:
        groups.setdefault((change.parameter, change.key), []).append(change)
    moments = {
        c.bin + day * BINS_PER_DAY
        for c in analysed
        for day in range(-HISTORY_DAYS, HISTORY_DAYS + 1)
    }
    devices = list(
        (await session.scalars(select(Device.device_id).order_by(Device.device_id))).all()
    )
    deltas = await _deltas(session, moments, window, devices) if analysed else _Deltas([], {}, {})
    calendar = await _calendar(session, devices)
    current: dict[str, Any] = dict(
        (await session.execute(select(Device.device_id, Device.config))).all()
    )
    # Each group's difference in differences over the fleet: off the event loop.
    judged = await compute(_judge_groups, groups, deltas, calendar, changed_near, window)
    rows = []
    for ((name, key), changes), (metrics, (verdict, harm, explanation)) in zip(
        groups.items(), judged, strict=True
    ):
        row = ImpactRow(
            id=impact_id(name, key),
            parameter=name,
            value=json.loads(key),
            key=key,
            devices=len({c.device_id for c in changes}),
            changes=len(changes),
            first_at=_bin_start(min(c.bin for c in changes)),
            last_at=_bin_start(max(c.bin for c in changes)),
            metrics=metrics,
            verdict=verdict,
            harm=round(harm, 3),
            explanation=explanation,
        )
        if verdict == "regression":
            row.restore = _restore_plan(changes, current)
        rows.append(row)
    rows.sort(key=lambda r: (r.verdict == "not_enough_data", -r.harm, r.parameter, r.key))
    return ImpactReport(since, until, window_minutes, rows)


def _restore_plan(changes: Sequence[Change], current: dict[str, Any]) -> dict[str, list[str]]:
    """Old value -> the devices to give it back: those that received the value through their
    own config, still have it, and whose previous value was stored (not withheld)."""
    latest: dict[str, Change] = {}
    for change in sorted(changes, key=lambda c: c.bin):
        if change.by_device:
            latest[change.device_id] = change
    plan: dict[str, list[str]] = {}
    for device_id, change in sorted(latest.items()):
        config = current.get(device_id)
        if not isinstance(config, dict) or change.parameter not in config:
            continue
        if not same_value(config[change.parameter], json.loads(change.key)):
            continue
        if _withheld(change.old_key) or _withheld(change.key):
            continue
        plan.setdefault(change.old_key, []).append(device_id)
    return plan


# -- accepting a rollback ---------------------------------------------------------------------


class ImpactNotFound(LookupError):
    pass


class NothingToRollBack(ValueError):
    pass


@dataclass(frozen=True)
class AppliedRollback:
    row: ImpactRow
    job_ids: list[str]
    devices: list[str]
    already_pending: list[str]


async def apply_rollback(
    session: AsyncSession,
    actor: Actor,
    impact: str,
    *,
    since: datetime,
    until: datetime,
    window_minutes: int,
) -> AppliedRollback:
    """Accept the rollback proposal of row ``impact``: one config_change job per device.

    The evidence is computed again (same ``since`` and window) so that what is applied is what
    the data says now. Raises ImpactNotFound for an unknown id, NothingToRollBack when the row
    is not a regression with a proposal. A device that already has an unfinished rollback job
    of this proposal gets no second one. Services flush, the caller commits.
    """
    from homepot.job.schemas import JobCreate, JobType
    from homepot.job.service import create_job

    report = await config_impact(session, since=since, until=until, window_minutes=window_minutes)
    row = next((r for r in report.rows if r.id == impact), None)
    if row is None:
        raise ImpactNotFound(
            f"no configuration change with id {impact} between {since.isoformat()} and "
            f"{until.isoformat()}"
        )
    if row.verdict != "regression":
        raise NothingToRollBack(
            f"{row.parameter}={row.key} is {row.verdict}, not a regression: nothing to roll back"
        )
    if not row.restore:
        raise NothingToRollBack(
            f"no device still has {row.parameter}={row.key} through its own configuration"
        )
    pending = set(
        (
            await session.scalars(
                select(Job.target_id).where(
                    Job.job_type == "config_change",
                    Job.target_type == JobTargetType.device,
                    Job.status.in_([JobStatus.pending, JobStatus.scheduled, JobStatus.running]),
                    Job.description.like(f"%[{impact}]%"),
                )
            )
        ).all()
    )
    job_ids, devices, skipped = [], [], []
    for old_key, targets in row.restore.items():
        for device_id in targets:
            if device_id in pending:
                skipped.append(device_id)
                continue
            job = await create_job(
                session,
                actor,
                JobCreate(
                    job_type=JobType.config_change,
                    target_type=JobTargetType.device,
                    target_id=device_id,
                    payload={"config": {row.parameter: json.loads(old_key)}, PROPOSAL_MARK: impact},
                    description=f"Rollback recommended by configuration impact [{impact}]: "
                    f"{row.parameter} {row.key} -> {old_key}; {row.explanation}",
                ),
            )
            job_ids.append(job.job_id)
            devices.append(device_id)
    return AppliedRollback(row, job_ids, devices, skipped)
