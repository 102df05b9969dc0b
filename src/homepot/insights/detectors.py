"""The detectors: pure numpy over 5-minute bins, no database.

Every series is cut into 5-minute bins on one UTC grid (bin ``b`` covers ``[b*300, b*300+300)``
seconds since the epoch), a bin holding the mean of the samples in it. A chunk of devices is
a 2-D array per metric, one row a device, one column a bin, NaN where a device sent nothing.

What "normal" is for a device, metric and bin (first that has enough data wins):

1. ``hour_of_week``: median and MAD of the device's own bins in that local hour of the week
   over the ``BASELINE_WEEKS`` weeks before the bin's UTC day (at least 12 bins, from two
   different weeks);
2. ``hour_of_day``: the same per local hour of the day (at least 36 bins: three days);
3. ``recent``: the device's previous 12 hours (at least 24 bins); a deviation must then also
   stand out against its cohort at that moment, since a recent window cannot know the
   daily cycle and the cohort shares it;
4. ``cohort``: the other devices of its site and type at the same moment (at least 3; for
   a small site, the devices of that type in the same time zone).

The spread is ``1.4826 * MAD`` (a standard deviation for normal noise, unmoved by outliers),
never below a floor per metric, so that a perfectly flat series does not turn every wobble
into an anomaly. Three detectors read the bins:

- ``level``: the robust z of a bin is at least ``z_threshold`` on the bad side (and the
  deviation at least the metric's ``min_deviation``) for ``PERSISTENCE_BINS`` bins in a row
  (one normal bin in between is tolerated): a spike of a few minutes never qualifies;
- ``trend``: memory and disk. A robust slope (the median of the slopes between bins half a
  window apart, a Theil-Sen estimate) of the deviation from normal, significant against
  the noise, that brings the metric to its limit within the horizon: flagged with the
  projected crossing, before any threshold is reached;
- ``silence``: a device that reported in the hours before sends nothing while its site is
  open (metric ``reporting``); when every device of a site is silent, one site episode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

# The grid and its types, re-exported (see __all__): callers read them as ``detectors.<name>``.
from homepot.insights.bins import (
    BASELINE_WEEKS,
    BIN,
    BIN_SECONDS,
    BINS_PER_DAY,
    BINS_PER_HOUR,
    BINS_PER_WEEK,
    CONTEXT_BINS,
    DEVICE_SILENCE_SCORE,
    GAP_BINS,
    LOOKBACK_BINS,
    MAD_TO_SIGMA,
    METRICS,
    METRICS_BY_NAME,
    PERSISTENCE_BINS,
    RECENT_BINS,
    REPORTING,
    RUN_LOOKBACK_BINS,
    SILENCE_BINS,
    SITE_SILENCE_SCORE,
    SOURCE_COHORT,
    SOURCE_DAY,
    SOURCE_NAMES,
    SOURCE_NONE,
    SOURCE_RECENT,
    SOURCE_WEEK,
    WEEKDAYS,
    Baseline,
    Chunk,
    DeviceInfo,
    Episode,
    MetricSpec,
    RecentMemo,
    _quiet,
    bin_of,
    bin_start,
    level_score,
    nanmedian,
    nanquantile,
    numpy,
    severity_of,
    trend_score,
)

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    FloatArray = NDArray[np.float64]
    BoolArray = NDArray[np.bool_]
    IntArray = NDArray[np.int64]

__all__ = [
    "_quiet",
    "BASELINE_WEEKS",
    "BIN",
    "BINS_PER_DAY",
    "BINS_PER_HOUR",
    "BINS_PER_WEEK",
    "BIN_SECONDS",
    "Baseline",
    "BucketBaseline",
    "CONTEXT_BINS",
    "Chunk",
    "DEVICE_SILENCE_SCORE",
    "DeviceInfo",
    "Episode",
    "GAP_BINS",
    "LOOKBACK_BINS",
    "MAD_TO_SIGMA",
    "METRICS",
    "METRICS_BY_NAME",
    "MetricSpec",
    "PERSISTENCE_BINS",
    "RECENT_BINS",
    "REPORTING",
    "RUN_LOOKBACK_BINS",
    "SILENCE_BINS",
    "SITE_SILENCE_SCORE",
    "SOURCE_COHORT",
    "SOURCE_DAY",
    "SOURCE_NAMES",
    "SOURCE_NONE",
    "SOURCE_RECENT",
    "SOURCE_WEEK",
    "RecentMemo",
    "Trend",
    "WEEKDAYS",
    "baseline",
    "bin_of",
    "bin_start",
    "bucket_baseline",
    "common_shift",
    "detect",
    "duration_text",
    "level_score",
    "nanmedian",
    "nanquantile",
    "numpy",
    "runs",
    "severity_of",
    "trend_score",
]

# -- baselines --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketBaseline:
    """A device's hour-of-week and hour-of-day medians and spreads for one metric and day."""

    week_median: FloatArray  # (devices, 168)
    week_scale: FloatArray
    week_ok: BoolArray
    day_median: FloatArray  # (devices, 24)
    day_scale: FloatArray
    day_ok: BoolArray


def bucket_baseline(
    history: FloatArray, history_first_bin: int, shifts: IntArray, floor: float
) -> BucketBaseline:
    """Baselines from exactly ``BASELINE_WEEKS`` weeks of bins (devices, weeks*2016).

    ``shifts`` (per device, in bins) turns UTC bins into the site's local time.
    """
    np = numpy()
    devices, width = history.shape
    weeks = width // BINS_PER_WEEK
    assert weeks >= 1
    assert width == weeks * BINS_PER_WEEK
    with_data = ~np.isnan(history).all(axis=1)
    if not with_data.all():  # devices without history: nothing to learn, nothing to sort
        if not with_data.any():
            nothing = np.full((devices, 168), np.nan)
            none_ok = np.zeros((devices, 168), dtype=bool)
            return BucketBaseline(
                nothing, nothing, none_ok, nothing[:, :24], nothing[:, :24], none_ok[:, :24]
            )
        known = bucket_baseline(history[with_data], history_first_bin, shifts[with_data], floor)
        return _spread_rows(known, with_data)
    # Stable sorts: within a bucket the bins stay in time order, i.e. grouped by week.
    if (shifts == shifts[0]).all():  # one time zone: one permutation for every device
        local = history_first_bin + np.arange(width) + shifts[0]
        order = np.argsort((local // BINS_PER_HOUR) % 168, kind="stable")
        by_bucket = history[:, order].reshape(devices, 168, weeks, 12)
    else:
        local = history_first_bin + np.arange(width)[None, :] + shifts[:, None]
        order = np.argsort((local // BINS_PER_HOUR) % 168, axis=1, kind="stable")
        by_bucket = np.take_along_axis(history, order, axis=1).reshape(devices, 168, weeks, 12)
    with _quiet():
        flat = by_bucket.reshape(devices, 168, weeks * 12)
        week_median = nanmedian(flat, axis=2)
        week_mad = nanmedian(np.abs(flat - week_median[:, :, None]), axis=2)
        present = ~np.isnan(by_bucket)
        week_ok = (present.sum(axis=(2, 3)) >= 12) & (present.any(axis=3).sum(axis=2) >= 2)
        by_day_hour = by_bucket.reshape(devices, 7, 24, weeks * 12).transpose(0, 2, 1, 3)
        by_hour = by_day_hour.reshape(devices, 24, 7 * weeks * 12)
        day_median = nanmedian(by_hour, axis=2)
        day_mad = nanmedian(np.abs(by_hour - day_median[:, :, None]), axis=2)
        day_ok = (~np.isnan(by_hour)).sum(axis=2) >= 36
    return BucketBaseline(
        week_median,
        np.maximum(np.nan_to_num(week_mad) * MAD_TO_SIGMA, floor),
        week_ok & ~np.isnan(week_median),
        day_median,
        np.maximum(np.nan_to_num(day_mad) * MAD_TO_SIGMA, floor),
        day_ok & ~np.isnan(day_median),
    )


def _spread_rows(known: BucketBaseline, rows: BoolArray) -> BucketBaseline:
    """``known`` (for the rows marked in ``rows``) with NaN, not-ok rows for the others."""
    np = numpy()

    def spread(part: Any, fill: Any) -> Any:
        out = np.full((len(rows), *part.shape[1:]), fill, dtype=part.dtype)
        out[rows] = part
        return out

    return BucketBaseline(
        spread(known.week_median, np.nan),
        spread(known.week_scale, np.nan),
        spread(known.week_ok, False),
        spread(known.day_median, np.nan),
        spread(known.day_scale, np.nan),
        spread(known.day_ok, False),
    )


def _recent_baseline(
    values: FloatArray,
    floor: float,
    first_bin: int,
    from_column: int,
    memo: tuple[RecentMemo, str] | None = None,
    window: int = RECENT_BINS,
) -> tuple[FloatArray, FloatArray, BoolArray]:
    """Median and spread of each device's previous ``window`` bins, for the columns from
    ``from_column`` on; computed once per hour of the clock (the window moves little within
    one), so that every scan of a bin gets the same answer. With ``memo`` (a server's, and
    the metric's name), a step an earlier pass computed over bins that cannot have changed
    since is reused, not sorted again."""
    np = numpy()
    from numpy.lib.stride_tricks import sliding_window_view

    devices, width = values.shape
    expected = np.full((devices, width), np.nan)
    scale = np.full((devices, width), np.nan)
    ok = np.zeros((devices, width), dtype=bool)
    first_step = max(0, from_column - (first_bin + from_column) % BINS_PER_HOUR)
    steps = np.arange(first_step, width, BINS_PER_HOUR)
    median = np.full((devices, len(steps)), np.nan)
    mad = np.full((devices, len(steps)), np.nan)
    enough = np.zeros((devices, len(steps)), dtype=bool)
    known = np.zeros(len(steps), dtype=bool)
    if memo is not None:
        store, name = memo
        for index, step in enumerate(steps.tolist()):
            absolute = first_bin + step
            # Reusable: the whole window inside the loaded bins, and none of it re-read.
            if step >= window and absolute <= store.stable_until:
                saved = store.steps.get((name, absolute))
                if saved is not None:
                    median[:, index], mad[:, index], enough[:, index] = saved
                    known[index] = True
    todo = np.flatnonzero(~known)
    if todo.size:
        padded = np.concatenate([np.full((devices, window), np.nan), values], axis=1)
        # View j covers padded[j : j + window], i.e. the bins [j - window, j).
        windows = sliding_window_view(padded, window, axis=1)[:, steps[todo], :]
        with _quiet():
            median[:, todo] = nanmedian(windows)
            mad[:, todo] = nanmedian(np.abs(windows - median[:, todo, None]))
            enough[:, todo] = (~np.isnan(windows)).sum(axis=2) >= 24
        if memo is not None:
            store, name = memo
            for index in todo.tolist():
                step = int(steps[index])
                if step >= window:
                    store.steps[(name, first_bin + step)] = (
                        median[:, index].copy(),
                        mad[:, index].copy(),
                        enough[:, index].copy(),
                    )
    columns = np.arange(first_step, width)
    which = (columns - first_step) // BINS_PER_HOUR
    expected[:, first_step:] = median[:, which]
    scale[:, first_step:] = np.maximum(np.nan_to_num(mad) * MAD_TO_SIGMA, floor)[:, which]
    ok[:, first_step:] = enough[:, which]
    return expected, scale, ok


def _cohort_baseline(
    values: FloatArray, groups: Sequence[int], floor: float, from_column: int
) -> tuple[FloatArray, FloatArray, BoolArray]:
    """Per bin from ``from_column`` on, the median and spread over the device's cohort (all
    cohorts at once: one NaN-padded block per cohort)."""
    np = numpy()
    devices, width = values.shape
    expected = np.full(values.shape, np.nan)
    scale = np.full(values.shape, np.nan)
    ok = np.zeros(values.shape, dtype=bool)
    group_of = np.asarray(groups)
    sizes = np.bincount(group_of)
    usable = sizes >= 4  # the device itself and at least three peers
    if not usable.any():
        return expected, scale, ok
    order = np.argsort(group_of, kind="stable")
    slot = np.arange(devices) - np.concatenate([[0], np.cumsum(sizes)[:-1]])[group_of[order]]
    block = np.full((len(sizes), int(sizes.max()), width - from_column), np.nan)
    block[group_of[order], slot] = values[order, from_column:]
    with _quiet():
        median = nanmedian(block, axis=1)
        mad = nanmedian(np.abs(block - median[:, None, :]), axis=1)
        enough = ((~np.isnan(block)).sum(axis=1) >= 4) & usable[:, None]
    expected[:, from_column:] = median[group_of]
    scale[:, from_column:] = np.maximum(np.nan_to_num(mad) * MAD_TO_SIGMA, floor)[group_of]
    ok[:, from_column:] = enough[group_of]
    return expected, scale, ok


def baseline(
    chunk: Chunk,
    spec: MetricSpec,
    day_baselines: Sequence[tuple[int, int, BucketBaseline]],
    from_column: int = 0,
    groups: Sequence[int] | None = None,
) -> Baseline:
    """Normal for the bins of the chunk from ``from_column`` on, through the four-step
    cascade (the columns before are left unknown where the first two steps have nothing).

    ``day_baselines``: ``(first column, end column, baseline)`` per UTC day of the chunk.
    Where the device's recent window is the baseline, its peers at the same moment are kept
    too (``peers``): a recent window cannot know the daily cycle, its peers share it.
    ``groups``: the chunk's cohorts (:func:`_cohort_groups`), when the caller has them.
    """
    np = numpy()
    values = chunk.values[spec.name]
    devices, width = values.shape
    expected = np.full(values.shape, np.nan)
    scale = np.full(values.shape, np.nan)
    source = np.zeros(values.shape, dtype=np.int8)
    shifts = np.array([device.shift_bins for device in chunk.devices], dtype=np.int64)
    reference = np.full(values.shape, np.nan)
    rows = np.arange(devices)[:, None]
    for first, end, buckets in day_baselines:
        first = max(first, from_column)
        if first >= end or not (buckets.day_ok.any() or buckets.week_ok.any()):
            continue  # nothing learnt that day (too little history): the fallbacks decide
        local = chunk.first_bin + np.arange(first, end)[None, :] + shifts[:, None]
        hour = local // BINS_PER_HOUR
        # Where the bin's middle lies in its hour (0..1): the neighbour hour it leans towards.
        position = (local % BINS_PER_HOUR + 0.5) / BINS_PER_HOUR
        part = slice(first, end)
        for median, spread, ok, buckets_per_cycle, code in (
            (buckets.day_median, buckets.day_scale, buckets.day_ok, 24, SOURCE_DAY),
            (buckets.week_median, buckets.week_scale, buckets.week_ok, 168, SOURCE_WEEK),
        ):
            own, before, after = ((hour + shift) % buckets_per_cycle for shift in (0, -1, 1))
            usable = ok[rows, own]
            centre = median[rows, own]
            smooth, bound = _hour_blend(
                centre,
                (median[rows, before], ok[rows, before]),
                (median[rows, after], ok[rows, after]),
                position,
                spec.direction,
            )
            expected[:, part] = np.where(usable, smooth, expected[:, part])
            reference[:, part] = np.where(usable, bound, reference[:, part])
            scale[:, part] = np.where(usable, spread[rows, own], scale[:, part])
            source[:, part] = np.where(usable, code, source[:, part])
    missing = source == SOURCE_NONE
    reference = np.where(missing, expected, reference)
    if not missing.any():
        return Baseline(expected, scale, source, reference=reference)
    memo = None if chunk.memo is None else (chunk.memo, spec.name)
    recent, recent_scale, recent_ok = _recent_baseline(
        values, spec.scale_floor, chunk.first_bin, from_column, memo, spec.recent_bins
    )
    use = missing & recent_ok
    expected[use], scale[use], source[use] = recent[use], recent_scale[use], SOURCE_RECENT
    if not spec.shared_cycle:  # its peers neither share its level nor can stand in for it
        reference = np.where(source >= SOURCE_RECENT, expected, reference)
        return Baseline(expected, scale, source, reference=reference)
    cohort, cohort_scale, cohort_ok = _cohort_baseline(
        values, _cohort_groups(chunk) if groups is None else groups, spec.scale_floor, from_column
    )
    use = (source == SOURCE_NONE) & cohort_ok
    expected[use], scale[use], source[use] = cohort[use], cohort_scale[use], SOURCE_COHORT
    reference = np.where(source >= SOURCE_RECENT, expected, reference)
    return Baseline(expected, scale, source, (cohort, cohort_scale, cohort_ok), reference)


def _hour_blend(
    centre: FloatArray,
    before: tuple[FloatArray, BoolArray],
    after: tuple[FloatArray, BoolArray],
    position: FloatArray,
    direction: int,
) -> tuple[FloatArray, FloatArray]:
    """The hourly median interpolated between the middles of the hours (``expected``), and
    the bad-side bound of the hour and its two neighbours (``reference``)."""
    np = numpy()
    (previous, previous_ok), (following, following_ok) = before, after
    early = position < 0.5
    neighbour = np.where(early, previous, following)
    neighbour_ok = np.where(early, previous_ok, following_ok) & ~np.isnan(neighbour)
    weight = np.where(early, 0.5 - position, position - 0.5)
    smooth = np.where(neighbour_ok, (1 - weight) * centre + weight * neighbour, centre)
    candidates = np.stack(
        [
            centre,
            np.where(previous_ok, previous, np.nan),
            np.where(following_ok, following, np.nan),
        ]
    )
    with _quiet():
        bound = np.nanmax(candidates, axis=0) if direction > 0 else np.nanmin(candidates, axis=0)
    return smooth, np.where(np.isnan(bound), centre, bound)


def common_shift(residual: FloatArray, groups: Sequence[int]) -> FloatArray:
    """Per device and bin, the median residual of its cohort at that bin (0 where fewer than
    four of them reported): what a whole cohort does at once (a busy Saturday, a quiet
    holiday, an opening hour that moved) is the shared load, not one device's anomaly."""
    np = numpy()
    devices, width = residual.shape
    group_of = np.asarray(groups)
    sizes = np.bincount(group_of)
    if not (sizes >= 4).any():
        nothing: FloatArray = np.zeros(residual.shape)
        return nothing
    order = np.argsort(group_of, kind="stable")
    slot = np.arange(devices) - np.concatenate([[0], np.cumsum(sizes)[:-1]])[group_of[order]]
    block = np.full((len(sizes), int(sizes.max()), width), np.nan)
    block[group_of[order], slot] = residual[order]
    with _quiet():
        median = nanmedian(block, axis=1)
        enough = (~np.isnan(block)).sum(axis=1) >= 4
    shift: FloatArray = np.where(enough, np.nan_to_num(median), 0.0)[group_of]
    return shift


def _cohort_groups(chunk: Chunk) -> list[int]:
    """Its site's devices of the same type; for a site with fewer than four, every device of
    that type in the chunk whose site keeps the same local time."""
    by_site: dict[tuple[str, str], int] = {}
    for device in chunk.devices:
        key = (device.site_id, device.device_type)
        by_site[key] = by_site.get(key, 0) + 1
    keys: dict[tuple[str, str, int], int] = {}
    groups = []
    for device in chunk.devices:
        shared_site = by_site[(device.site_id, device.device_type)] >= 4
        site, shift = (device.site_id, 0) if shared_site else ("", device.shift_bins)
        groups.append(keys.setdefault((site, device.device_type, shift), len(keys)))
    return groups


# -- runs -------------------------------------------------------------------------------------


def runs(flags: BoolArray, *, gap: int, minimum: int) -> list[tuple[int, int]]:
    """``(first, last)`` columns of runs of True, joined across gaps of up to ``gap`` False
    columns, with at least ``minimum`` True columns each."""
    np = numpy()
    hits = np.flatnonzero(flags)
    if hits.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(hits) > gap + 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [hits.size - 1]])
    return [
        (int(hits[a]), int(hits[b]))
        for a, b in zip(starts, ends, strict=True)
        if b - a + 1 >= minimum
    ]


# -- explanations -----------------------------------------------------------------------------


def _number(value: float, unit: str) -> str:
    text = f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"
    return f"{text} {unit.strip()}" if unit == "%" else f"{text}{unit}"


def duration_text(hours: float) -> str:
    minutes = max(1, round(hours * 60))
    if minutes < 60:
        return f"{minutes} min"
    whole, rest = divmod(minutes, 60)
    if whole >= 48:
        return f"{round(hours / 24)} days"
    return f"{whole} h {rest} min" if rest else f"{whole} h"


def _normal_text(
    spec: MetricSpec, expected: float, scale: float, source: int, when: datetime, device: DeviceInfo
) -> str:
    usual = f"a usual {_number(expected, spec.unit)} ± {_number(scale, spec.unit)}"
    local = when.astimezone(ZoneInfo(device.timezone))
    if source == SOURCE_WEEK:
        return f"{usual} for {WEEKDAYS[local.weekday()]} {local:%H}:00"
    if source == SOURCE_DAY:
        return f"{usual} at {local:%H}:00"
    if source == SOURCE_RECENT:
        return f"{usual} over its previous {spec.recent_bins // BINS_PER_HOUR} h"
    return f"{usual} across its site's other {device.device_type} devices"


def _trend_text(spec: MetricSpec, slope: float, hours: float, now: datetime) -> str:
    assert spec.limit is not None
    crossing = now + timedelta(hours=hours)
    return (
        f"rising {slope:.1f} points/h, reaches {_number(spec.limit, spec.unit)} in "
        f"~{duration_text(hours)} (around {crossing:%Y-%m-%d %H:%M} UTC)"
    )


# -- detection --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trend:
    slope_per_hour: FloatArray  # (devices, bins)
    hours_to_limit: FloatArray
    flags: BoolArray


def _trend(
    values: FloatArray, residual: FloatArray, base: Baseline, spec: MetricSpec, from_column: int
) -> Trend:
    """Robust slope of the deviation from normal (``residual``, its cohort's shared part
    removed) over the window ending at each bin from ``from_column`` on, and the projected
    time to the limit."""
    np = numpy()
    from numpy.lib.stride_tricks import sliding_window_view

    assert spec.limit is not None
    window = spec.trend_window_bins
    half = window // 2
    devices, width = values.shape
    slopes = (residual[:, half:] - residual[:, :-half]) / half  # slopes[k]: bin k to k + half
    padded = np.concatenate([np.full((devices, window), np.nan), slopes], axis=1)
    # View j covers padded[j : j + half] = slopes[j - window : j - half]; for bin i, view
    # i + 1 holds the slopes of the pairs inside the window ending at i.
    chosen = sliding_window_view(padded, half, axis=1)[:, np.arange(from_column, width) + 1, :]
    slope = np.full(values.shape, np.nan)
    enough = np.zeros(values.shape, dtype=bool)
    with _quiet():
        enough[:, from_column:] = (~np.isnan(chosen)).sum(axis=2) >= max(2, half // 2)
        slope[:, from_column:] = nanmedian(chosen, axis=2) * BINS_PER_HOUR
        steady = np.full(values.shape, np.nan)
        steady[:, from_column:] = nanquantile(chosen, 1 - spec.rising_share) * BINS_PER_HOUR
        level = _rolling_median3(values)
        if spec.trend_against_bound:  # above the most its neighbouring hours allow
            above = _rolling_median3(residual - (base.level_reference - base.expected))
        else:
            above = _rolling_median3(residual)
        spread = base.scale
        hours = (spec.limit - level) / slope
        flags = (
            enough
            & ~np.isnan(values)
            & (steady >= spec.min_slope_per_hour)
            & (slope * window / BINS_PER_HOUR >= 3 * spread)
            & (above / spread >= spec.trend_min_z)
            & base.peer_gate(level, +1, 1.5)
            & (hours > 0)
            & (hours <= spec.trend_horizon_hours)
        )
    return Trend(slope, hours, flags)


def _rolling_median3(values: FloatArray) -> FloatArray:
    """The median of each bin and the two before it (the level, without one noisy bin)."""
    np = numpy()
    padded = np.concatenate([np.full((values.shape[0], 2), np.nan), values], axis=1)
    stacked = np.stack([padded[:, 2:], padded[:, 1:-1], padded[:, :-2]], axis=2)
    with _quiet():
        result: FloatArray = nanmedian(stacked, axis=2)
        return result


def detect(
    chunk: Chunk,
    start: int,
    day_baselines: dict[str, list[tuple[int, int, BucketBaseline]]],
) -> tuple[list[Episode], dict[str, Baseline]]:
    """Episodes that reach into the bins from column ``start`` on.

    Earlier columns are context: an anomaly that began there keeps its real start.
    ``day_baselines`` per metric name, see :func:`baseline`. Also returns each metric's
    baseline over every column (for charts).
    """
    np = numpy()
    episodes: list[Episode] = []
    baselines: dict[str, Baseline] = {}
    full_chunk, full_start = chunk, start
    groups = _cohort_groups(full_chunk)
    for spec in METRICS:
        # Runs may begin RUN_LOOKBACK_BINS before the range; a trend needs its window too.
        reach = RUN_LOOKBACK_BINS + (spec.trend_window_bins if spec.limit is not None else 0)
        lookback = max(0, full_start - reach)
        chunk, start = full_chunk.tail(lookback), full_start - lookback
        values = chunk.values[spec.name]
        base = baseline(full_chunk, spec, day_baselines.get(spec.name, []), lookback, groups)
        baselines[spec.name] = base
        base = base.tail(lookback)
        with _quiet():
            deviation = spec.direction * (values - base.level_reference)
            # Only a shared shift towards the bad side is discounted: a cohort doing better
            # than usual makes no device look worse.
            deviation -= np.maximum(common_shift(deviation, groups), 0.0)
            z = deviation / base.scale
            big_enough = deviation >= np.maximum(
                spec.min_deviation, spec.relative_deviation * np.abs(base.expected)
            )
            deviant = (z >= spec.z_threshold) & big_enough & (base.source > 0)
            deviant &= base.peer_gate(values, spec.direction, spec.z_threshold)
        trend = None
        if spec.limit is not None:
            with _quiet():
                residual = values - base.expected
                residual = residual - common_shift(residual, groups)
            trend = _trend(values, residual, base, spec, max(0, start - RUN_LOOKBACK_BINS))
        flagged = deviant.any(axis=1)
        if trend is not None:
            flagged |= trend.flags.any(axis=1)
        for row in np.flatnonzero(flagged):
            device = chunk.devices[row]
            for first, final in runs(deviant[row], gap=GAP_BINS, minimum=PERSISTENCE_BINS):
                if final < start:
                    continue
                peak = float(np.nanmax(z[row, first : final + 1]))
                episodes.append(
                    _metric_episode(
                        chunk,
                        device,
                        spec,
                        "level",
                        (first, final),
                        level_score(peak),
                        row,
                        base,
                        trend,
                    )
                )
            if trend is None:
                continue
            for first, final in runs(trend.flags[row], gap=GAP_BINS, minimum=PERSISTENCE_BINS):
                if final < start:
                    continue
                soonest = float(np.nanmin(trend.hours_to_limit[row, first : final + 1]))
                episodes.append(
                    _metric_episode(
                        chunk,
                        device,
                        spec,
                        "trend",
                        (first, final),
                        trend_score(soonest),
                        row,
                        base,
                        trend,
                    )
                )
    episodes.extend(_silence(full_chunk, full_start))
    return episodes, baselines


def _metric_episode(
    chunk: Chunk,
    device: DeviceInfo,
    spec: MetricSpec,
    detector: str,
    span: tuple[int, int],
    score: int,
    row: int,
    base: Baseline,
    trend: Trend | None,
) -> Episode:
    first, final = span
    at = bin_start(chunk.first_bin + final)
    value = float(chunk.values[spec.name][row, final])
    expected = float(base.expected[row, final])
    spread = float(base.scale[row, final])
    text = f"{spec.label} {_number(value, spec.unit)} vs " + _normal_text(
        spec, expected, spread, int(base.source[row, final]), at, device
    )
    if trend is not None:
        slope = float(trend.slope_per_hour[row, final])
        hours = float(trend.hours_to_limit[row, final])
        if trend.flags[row, final] or (detector == "level" and slope > 0 and 0 < hours <= 48):
            text += "; " + _trend_text(spec, slope, hours, at + BIN)
    return Episode(
        subject=device.device_id,
        device_id=device.device_id,
        site_id=device.site_id,
        metric=spec.name,
        detector=detector,
        started_at=bin_start(chunk.first_bin + first),
        last_seen_at=at + BIN,
        open=final >= chunk.bins - 1 - GAP_BINS,
        score=score,
        observed=round(value, 3),
        expected=round(expected, 3),
        explanation=text,
        expected_maintenance=bool(chunk.maintenance_bins[device.site_id][first : final + 1].all()),
    )


def _silence(chunk: Chunk, start: int) -> list[Episode]:
    np = numpy()
    reported = chunk.counts > 0
    # Alive: reported at some point in the loaded bins before, or already known silent.
    seen = np.maximum.accumulate(reported, axis=1)
    seen_before = np.concatenate([np.zeros((reported.shape[0], 1), dtype=bool), seen[:, :-1]], 1)
    alive = seen_before.copy()
    for row, device in enumerate(chunk.devices):
        since = [
            chunk.known_silent[subject]
            for subject in (device.device_id, f"site:{device.site_id}")
            if subject in chunk.known_silent
        ]
        if since:
            alive[row, max(0, min(since) - chunk.first_bin) :] = True
    silent = alive & ~reported
    episodes: list[Episode] = []
    by_site: dict[str, list[int]] = {}
    for row, device in enumerate(chunk.devices):
        by_site.setdefault(device.site_id, []).append(row)
    for site_id, rows in by_site.items():
        open_now = chunk.open_bins[site_id]
        alive_count = alive[rows].sum(axis=0)
        site_silent = (alive_count > 1) & (silent[rows].sum(axis=0) == alive_count) & open_now
        for first, final in runs(site_silent, gap=0, minimum=SILENCE_BINS):
            if final >= start:
                episodes.append(
                    _silence_episode(chunk, None, site_id, (first, final), int(alive_count[final]))
                )
        for row in rows:
            flags = silent[row] & open_now & ~site_silent
            for first, final in runs(flags, gap=0, minimum=SILENCE_BINS):
                if final >= start:
                    episodes.append(
                        _silence_episode(chunk, chunk.devices[row], site_id, (first, final), 1)
                    )
    return episodes


def _silence_episode(
    chunk: Chunk, device: DeviceInfo | None, site_id: str, span: tuple[int, int], devices: int
) -> Episode:
    first, final = span
    since = bin_start(chunk.first_bin + first)
    hours = (final - first + 1) * BIN_SECONDS / 3600
    where = f"for {duration_text(hours)} (since {since:%Y-%m-%d %H:%M} UTC) while the site is open"
    if device is None:
        text = f"none of site {site_id}'s {devices} reporting devices sent metrics {where}"
    else:
        text = f"{device.device_id} sent no metrics {where}"
    return Episode(
        subject=device.device_id if device else f"site:{site_id}",
        device_id=device.device_id if device else None,
        site_id=site_id,
        metric=REPORTING,
        detector="silence",
        started_at=since,
        last_seen_at=bin_start(chunk.first_bin + final) + BIN,
        open=final >= chunk.bins - 1,
        score=DEVICE_SILENCE_SCORE if device else SITE_SILENCE_SCORE,
        observed=0.0,
        expected=None,
        explanation=text,
        expected_maintenance=bool(chunk.maintenance_bins[site_id][first : final + 1].all()),
    )
