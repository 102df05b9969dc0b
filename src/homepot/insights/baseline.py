"""The spec's old rule thresholds as a detector: the baseline that insights are measured against.

The system the spec describes raises an alert when a device reports CPU above 90 %, memory
above 90 %, network latency above 200 ms or an error rate above 5 %. Here each rule makes
episodes the way the anomaly detector does: one episode per contiguous run of a device's
samples over the threshold, from the first sample over it to the first sample back under it
(or the last one over it, when the device stops reporting).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from homepot.analytics.models import DeviceMetrics

DETECTOR: Final = "rule_thresholds"
# metric name (as in the anomalies table) -> (device_metrics column, threshold)
RULES: Final = {
    "cpu": ("cpu_percent", 90.0),
    "memory": ("memory_percent", 90.0),
    "network_latency": ("network_latency_ms", 200.0),
    "error_rate": ("error_rate", 5.0),
}


@dataclass(frozen=True)
class RuleEpisode:
    device_id: str
    metric: str
    started_at: datetime
    ended_at: datetime
    peak: float


Sample = tuple[str, datetime, dict[str, float | None]]


def threshold_episodes(samples: Iterable[Sample]) -> list[RuleEpisode]:
    """Episodes of the threshold rules in ``samples`` (device_id, timestamp, readings by
    column), given in order of device and time."""
    episodes: list[RuleEpisode] = []
    # metric -> (started_at, last sample over the threshold, peak), for the current device
    open_runs: dict[str, tuple[datetime, datetime, float]] = {}
    device: str | None = None

    def close(metric: str, ended_at: datetime) -> None:
        started, _, peak = open_runs.pop(metric)
        assert device is not None
        episodes.append(RuleEpisode(device, metric, started, ended_at, peak))

    for device_id, moment, readings in samples:
        if device_id != device:
            for metric in list(open_runs):
                close(metric, open_runs[metric][1])
            device = device_id
        for metric, (column, threshold) in RULES.items():
            value = readings.get(column)
            if value is not None and value > threshold:
                started, _, peak = open_runs.get(metric, (moment, moment, value))
                open_runs[metric] = (started, moment, max(peak, value))
            elif metric in open_runs:
                close(metric, moment)
    for metric in list(open_runs):
        close(metric, open_runs[metric][1])
    return episodes


async def scan_thresholds(
    engine: AsyncEngine, since: datetime, until: datetime
) -> list[RuleEpisode]:
    """The rule episodes in the metrics stored for ``[since, until)``."""
    columns = [getattr(DeviceMetrics, column) for column, _ in RULES.values()]
    names = [column for column, _ in RULES.values()]
    statement = (
        select(DeviceMetrics.device_id, DeviceMetrics.timestamp, *columns)
        .where(DeviceMetrics.timestamp >= since, DeviceMetrics.timestamp < until)
        .order_by(DeviceMetrics.device_id, DeviceMetrics.timestamp)
    )
    async with engine.connect() as connection:
        result = await connection.stream(statement.execution_options(yield_per=5_000))
        rows = [(row[0], row[1], dict(zip(names, row[2:], strict=True))) async for row in result]
    return threshold_episodes(rows)
