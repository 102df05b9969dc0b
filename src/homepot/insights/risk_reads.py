"""What a server's risk pass reads: the last three hours of raw samples, and each device's
baseline once an hour.

The features (homepot.insights.features) read a device's raw samples of the last
``RECENT`` (3 h: last value, hour's mean and jitter, the slope) and its *baseline*, its own
normal of the day before its latest hourly anchor (median, spread, 95th percentile per metric,
usual latency jitter). Reading every device's day of raw samples at every pass (5,000
terminals every 30 s: 15 M rows every 300 s) is what this module avoids: a
:class:`BaselineCache` keeps each device's baseline with its anchor, in the process, and a
pass reads

- the last ``RECENT`` of every device's samples, and
- the day before the anchor for the devices whose anchor moved since their baseline was
  computed: anchors come every hour at a phase per device, so a pass every 5 minutes
  recomputes about a twelfth of the fleet's baselines.

The features served are those :func:`homepot.insights.features.features_at` computes from
the full raw history (training's definition): a baseline changes only at its anchor, and a
cached one was computed from the same rows. Rows that arrive after their device's baseline was
computed and fall inside its day (a terminal's outbox replayed more than an hour late) count
from the next anchor on.

The cache lives in the process that runs the pass (a singleton, homepot.kit.singleton). A
process that takes the pass over starts cold: its first pass reads the day of every device,
a batch of devices at a time, and scores the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.insights.features import (
    HISTORY,
    RECENT,
    Baseline,
    DeviceHistory,
    History,
    baseline_anchor,
    compute_baseline,
    fleet_histories,
    history_start,
    metric_rows,
    read_events,
    read_metrics,
)
from homepot.kit.offload import compute

# Devices whose day is read (and held) at once when their baselines are recomputed.
BASELINE_BATCH_DEVICES = 250
# The range a pass's events (state changes, errors, jobs) are read from: as a history of
# the last hour (homepot.insights.features.load_history).
_EVENTS_SINCE = timedelta(hours=1)

Arrays = dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]


@dataclass
class _Known:
    baseline: Baseline
    last_report: float | None  # the newest sample seen (epoch seconds)


@dataclass(frozen=True)
class PassReads:
    """What one pass read from ``device_metrics``."""

    recent_rows: int  # the last RECENT of every device
    baseline_rows: int  # the days before the anchors of the baselines recomputed
    baselines_computed: int

    @property
    def rows(self) -> int:
        return self.recent_rows + self.baseline_rows


class BaselineCache:
    """Each device's baseline and newest sample, kept between the passes of one process."""

    def __init__(self, batch_devices: int = BASELINE_BATCH_DEVICES) -> None:
        self.batch_devices = batch_devices
        self._known: dict[str, _Known] = {}
        self.last_pass: PassReads | None = None
        # Over every pass of this process:
        self.passes = 0
        self.rows_read = 0
        self.baselines_computed = 0

    def __len__(self) -> int:
        return len(self._known)

    def snapshot(self) -> dict[str, int]:
        """The totals for /metrics (homepot.system.metrics.RiskReadsCollector)."""
        return {
            "metric_rows_read": self.rows_read,
            "baselines_computed": self.baselines_computed,
            "kept": len(self._known),
        }

    def due(self, device_ids: Sequence[str], at: float) -> list[str]:
        """The devices whose baseline at ``at`` is not known yet."""
        return [
            device_id
            for device_id in device_ids
            if (known := self._known.get(device_id)) is None
            or known.baseline.anchor != baseline_anchor(device_id, at)
        ]


def _epoch_to_datetime(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, UTC)


async def load_scoring_history(
    session: AsyncSession, now: datetime, cache: BaselineCache
) -> History:
    """Every device's history for its features at ``now`` (simulated devices too, as the
    server scores them): raw samples of the last ``RECENT`` only, the baseline from
    ``cache`` (recomputed where its anchor moved), events of the day as
    :func:`homepot.insights.features.load_history` reads them."""
    at = now.timestamp()
    devices = await fleet_histories(session, include_simulated=True)
    recent_start = now - RECENT
    recent, recent_rows = await read_metrics(
        session, metric_rows(recent_start, now, include_simulated=True, start_inclusive=False)
    )
    for device_id in recent:
        devices.setdefault(device_id, DeviceHistory(device_id, None))
    due = cache.due(sorted(devices), at)
    baseline_rows = 0
    for first in range(0, len(due), cache.batch_devices):
        batch = due[first : first + cache.batch_devices]
        anchors = {device_id: baseline_anchor(device_id, at) for device_id in batch}
        earliest = _epoch_to_datetime(min(anchors.values()) - HISTORY.total_seconds())
        older, count = await read_metrics(
            session,
            metric_rows(
                earliest,
                recent_start,
                include_simulated=True,
                start_inclusive=False,
                device_ids=batch,
            ),
        )
        baseline_rows += count
        cache._known.update(await compute(_baselines, anchors, older, recent))
    for device_id in set(cache._known) - set(devices):
        del cache._known[device_id]
    for device_id, entry in devices.items():
        known = cache._known[device_id]
        entry.baselines[known.baseline.anchor] = known.baseline
        if device_id in recent:
            times, values = recent[device_id]
            entry.metric_times = times
            entry.metric_values.update(values)
            newest = float(times[-1])
            if known.last_report is None or newest > known.last_report:
                known.last_report = newest
        entry.last_report = known.last_report
    start = history_start(now - _EVENTS_SINCE)
    await read_events(session, devices, start, now, include_simulated=True)
    reads = PassReads(recent_rows, baseline_rows, len(due))
    cache.last_pass = reads
    cache.passes += 1
    cache.rows_read += reads.rows
    cache.baselines_computed += reads.baselines_computed
    return History(devices=devices, since=now - _EVENTS_SINCE, until=now, metric_rows=reads.rows)


def _baselines(anchors: dict[str, float], older: Arrays, recent: Arrays) -> dict[str, _Known]:
    """Each device's baseline at its anchor from its day before the last ``RECENT`` and its
    samples since, and its newest sample."""
    known = {}
    for device_id, anchor in anchors.items():
        parts = [part for part in (older.get(device_id), recent.get(device_id)) if part is not None]
        if not parts:
            known[device_id] = _Known(compute_baseline(np.empty(0), {}, anchor), None)
            continue
        times = np.concatenate([part[0] for part in parts])
        values = {name: np.concatenate([part[1][name] for part in parts]) for name in parts[0][1]}
        baseline = compute_baseline(times, values, anchor)
        known[device_id] = _Known(baseline, float(times[-1]))
    return known
