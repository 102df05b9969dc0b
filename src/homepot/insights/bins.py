"""The grid the detectors work on: 5-minute bins, the metrics, and a chunk of devices.

Every series is cut into 5-minute bins on one UTC grid (bin ``b`` covers ``[b*300, b*300+300)``
seconds since the epoch), a bin holding the mean of the samples in it. A chunk of devices is
a 2-D array per metric, one row a device, one column a bin, NaN where a device sent nothing.
Also here: what a metric is (:class:`MetricSpec`), what is normal for each bin
(:class:`Baseline`), an episode, and the numpy helpers the detectors share. The detectors
themselves are in :mod:`homepot.insights.detectors`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    FloatArray = NDArray[np.float64]
    BoolArray = NDArray[np.bool_]
    IntArray = NDArray[np.int64]

BIN_SECONDS: Final = 300
BIN = timedelta(seconds=BIN_SECONDS)
BINS_PER_HOUR: Final = 12
BINS_PER_DAY: Final = 24 * BINS_PER_HOUR
BINS_PER_WEEK: Final = 7 * BINS_PER_DAY
BASELINE_WEEKS: Final = 2
RECENT_BINS: Final = 12 * BINS_PER_HOUR
# How far before the first evaluated bin a run may begin (an episode under way keeps its
# start), and the longest look back: that and the longest trend window.
RUN_LOOKBACK_BINS: Final = 2 * BINS_PER_HOUR
LOOKBACK_BINS: Final = 8 * BINS_PER_HOUR
# The longest recent window of a metric (the disk's: a day, over a night switched off).
LONGEST_RECENT_BINS: Final = 2 * RECENT_BINS
# Bins loaded before the first evaluated one: the look back, and a recent window before it.
CONTEXT_BINS: Final = LONGEST_RECENT_BINS + LOOKBACK_BINS + BINS_PER_HOUR
PERSISTENCE_BINS: Final = 3
SILENCE_BINS: Final = 3
# How many normal bins may sit inside one episode without splitting it in two.
GAP_BINS: Final = 1
MAD_TO_SIGMA: Final = 1.4826
WEEKDAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

SOURCE_NONE, SOURCE_WEEK, SOURCE_DAY, SOURCE_RECENT, SOURCE_COHORT = range(5)
SOURCE_NAMES: Final = ("none", "hour_of_week", "hour_of_day", "recent", "cohort")

DEVICE_SILENCE_SCORE: Final = 60
SITE_SILENCE_SCORE: Final = 85


@dataclass(frozen=True)
class MetricSpec:
    """One metric: where it comes from, which side is bad, and how big a deviation matters."""

    name: str
    label: str
    unit: str
    direction: int  # +1: high is bad; -1: low is bad
    min_deviation: float
    scale_floor: float
    z_threshold: float = 4.0
    # The deviation must also be at least this share of the expected value.
    relative_deviation: float = 0.0
    # Trend detection (memory, disk): the level whose crossing is projected.
    limit: float | None = None
    trend_window_bins: int = 24
    trend_horizon_hours: float = 6.0
    min_slope_per_hour: float = 0.0
    # The share of the window's pair slopes that must rise at least ``min_slope_per_hour``:
    # a leak climbs between almost any two moments, noise only between some.
    rising_share: float = 0.5
    # How far above normal (in spreads) the level must already be.
    trend_min_z: float = 1.5
    # ... and whether above the bad-side bound of its hour and the hours either side, as a
    # level is judged (a disk: a log rotation a little later than usual leaves the disk
    # above its usual for that hour and falling towards it, a climb of its residual).
    trend_against_bound: bool = False
    # Whether a store's day moves the metric on every device of a cohort at once (CPU,
    # sales): then a device's recent window is judged next to its peers, and its peers can
    # stand in for it. A disk follows its own logs, not the store: only its own past counts.
    shared_cycle: bool = True
    # How far back the recent-window fallback looks (a metric without a daily cycle can look
    # back over a night the terminal was switched off).
    recent_bins: int = RECENT_BINS


METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec("cpu", "CPU", "%", +1, min_deviation=20, scale_floor=3),
    MetricSpec(
        "memory",
        "memory",
        "%",
        +1,
        min_deviation=10,
        scale_floor=2,
        limit=98,
        trend_window_bins=36,
        trend_horizon_hours=6,
        min_slope_per_hour=2,
        rising_share=0.75,
        trend_min_z=2.5,
    ),
    MetricSpec(
        "disk",
        "disk",
        "%",
        +1,
        min_deviation=3,
        scale_floor=1,
        z_threshold=3.0,
        limit=99,
        trend_window_bins=36,
        trend_horizon_hours=48,
        min_slope_per_hour=0.3,
        trend_against_bound=True,
        shared_cycle=False,
        recent_bins=LONGEST_RECENT_BINS,
    ),
    MetricSpec(
        "network_latency",
        "network latency",
        " ms",
        +1,
        min_deviation=50,
        scale_floor=5,
        relative_deviation=1.0,
    ),
    MetricSpec("error_rate", "error rate", "%", +1, min_deviation=2, scale_floor=0.3),
    MetricSpec(
        "transactions",
        "transactions",
        "/min",
        -1,
        min_deviation=0.5,
        scale_floor=0.3,
        z_threshold=2.5,
        relative_deviation=0.75,
    ),
)
METRICS_BY_NAME: Final = {spec.name: spec for spec in METRICS}
REPORTING: Final = "reporting"


def numpy() -> Any:
    """numpy, imported on first use: a server without insights never loads it."""
    import numpy

    return numpy


@contextmanager
def _quiet() -> Iterator[None]:
    """All-NaN slices are expected (a device silent for a while): their median is NaN."""
    np = numpy()
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def nanmedian(values: Any, axis: int = -1) -> Any:
    """The median along ``axis`` ignoring NaN (NaN where all are NaN).

    numpy's own goes through masked arrays for short axes, ten times slower on the many short
    rows (one per device) a scan reduces.
    """
    np = numpy()
    moved = np.moveaxis(values, axis, -1)
    ordered = np.sort(moved, axis=-1)  # NaN sorts last
    present = (~np.isnan(moved)).sum(axis=-1)
    low = np.take_along_axis(ordered, np.maximum(present - 1, 0)[..., None] // 2, axis=-1)
    high = np.take_along_axis(ordered, (present // 2)[..., None], axis=-1)
    result = (low[..., 0] + high[..., 0]) / 2
    return np.where(present > 0, result, np.nan)


def nanquantile(values: Any, quantile: float) -> Any:
    """The ``quantile`` (0..1, the lower of the two nearest) along the last axis ignoring
    NaN (NaN where all are NaN); the same sort as :func:`nanmedian`."""
    np = numpy()
    ordered = np.sort(values, axis=-1)
    present = (~np.isnan(values)).sum(axis=-1)
    index = np.floor(np.maximum(present - 1, 0) * quantile).astype(np.int64)
    result = np.take_along_axis(ordered, index[..., None], axis=-1)[..., 0]
    return np.where(present > 0, result, np.nan)


def bin_of(moment: datetime) -> int:
    return math.floor(moment.timestamp() / BIN_SECONDS)


def bin_start(index: int) -> datetime:
    return datetime.fromtimestamp(index * BIN_SECONDS, UTC)


def severity_of(score: int) -> str:
    if score >= 75:
        return "critical"
    if score >= 45:
        return "warning"
    return "info"


def level_score(z: float) -> int:
    return max(0, min(100, round(100 * (1 - 2 ** (-z / 5)))))


def trend_score(hours_to_limit: float) -> int:
    return max(10, min(95, round(95 - 12 * math.log2(max(hours_to_limit, 1.0)))))


# -- the chunk --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    site_id: str
    device_type: str
    # The site's UTC offset in whole bins at the scanned day: hour-of-week buckets are local.
    shift_bins: int
    timezone: str


@dataclass
class RecentMemo:
    """Recent-window medians and spreads an earlier pass computed for the same devices, per
    metric and hour step (the step's absolute bin): a server's pass reuses those whose whole
    window lies before ``stable_until`` (bins no newer sample can change any more) instead of
    sorting the same 12 hours again. Exact: a reused step is what recomputing it would give.
    """

    stable_until: int = -(2**62)
    steps: dict[tuple[str, int], tuple[Any, Any, Any]] = field(default_factory=dict)

    def forget_before(self, first_bin: int) -> None:
        """Drop the steps older than ``first_bin`` (a chunk never looks at them again)."""
        for key in [key for key in self.steps if key[1] < first_bin]:
            del self.steps[key]


@dataclass
class Chunk:
    """Bins of some devices (whole sites) from ``first_bin`` on, one column per bin."""

    devices: list[DeviceInfo]
    first_bin: int
    values: dict[str, FloatArray]  # metric name -> (devices, bins)
    counts: IntArray  # samples per (device, bin)
    # Per site: which bins are open / inside a maintenance window (1-D over the bins).
    open_bins: dict[str, BoolArray]
    maintenance_bins: dict[str, BoolArray]
    # Subjects (a device_id, or site:<site_id>) whose silence is already an open episode,
    # with the bin it began in: alive from then on even with nothing loaded.
    known_silent: dict[str, int] = field(default_factory=dict)
    # A server's recent-window results from its previous passes over these devices.
    memo: RecentMemo | None = None

    @property
    def bins(self) -> int:
        return int(self.counts.shape[1])

    def tail(self, column: int) -> Chunk:
        """The same chunk from ``column`` on (views, no copies)."""
        return Chunk(
            devices=self.devices,
            first_bin=self.first_bin + column,
            values={name: array[:, column:] for name, array in self.values.items()},
            counts=self.counts[:, column:],
            open_bins={site: mask[column:] for site, mask in self.open_bins.items()},
            maintenance_bins={site: mask[column:] for site, mask in self.maintenance_bins.items()},
            known_silent=self.known_silent,
            memo=self.memo,
        )


@dataclass(frozen=True)
class Baseline:
    """What is normal for each (device, bin) of the evaluated range, and where it came from.

    ``expected`` moves smoothly through the day (the hourly medians, interpolated between the
    middles of the hours); ``reference`` is what a level is judged against: on the bad side,
    the most the device's own hour and the hours either side allow (a store's day shifts by
    minutes, the log rotation falls inside an hour), else ``expected``.
    """

    expected: FloatArray
    scale: FloatArray
    source: NDArray[np.int8]
    # The cohort's (expected, scale, ok) where the recent window stood in, else None.
    peers: tuple[FloatArray, FloatArray, BoolArray] | None = None
    reference: FloatArray | None = None

    @property
    def level_reference(self) -> FloatArray:
        return self.expected if self.reference is None else self.reference

    def tail(self, column: int) -> Baseline:
        peers = None if self.peers is None else tuple(part[:, column:] for part in self.peers)
        return Baseline(
            self.expected[:, column:],
            self.scale[:, column:],
            self.source[:, column:],
            peers,  # type: ignore[arg-type]
            None if self.reference is None else self.reference[:, column:],
        )

    def peer_gate(self, level: FloatArray, direction: int, threshold: float) -> BoolArray:
        """False where the recent window is the baseline but the device's peers, at the same
        moment, are no better off: a shared load cycle, not an anomaly."""
        np = numpy()
        if self.peers is None:
            everywhere: BoolArray = np.ones(self.source.shape, dtype=bool)
            return everywhere
        peer_expected, peer_scale, peer_ok = self.peers
        with _quiet():
            peer_z = direction * (level - peer_expected) / peer_scale
        checked = (self.source == SOURCE_RECENT) & peer_ok
        result: BoolArray = ~checked | (peer_z >= threshold)
        return result


@dataclass(frozen=True)
class Episode:
    """One contiguous anomaly that reaches into the evaluated bins."""

    subject: str
    device_id: str | None
    site_id: str
    metric: str
    detector: str
    started_at: datetime
    last_seen_at: datetime  # end of its last anomalous bin
    open: bool  # still under way at the end of the evaluated range
    # Entirely inside the site's maintenance window: stored, never alerts. An episode that
    # outlasts the window is a real one.
    score: int
    observed: float | None
    expected: float | None
    explanation: str
    expected_maintenance: bool
