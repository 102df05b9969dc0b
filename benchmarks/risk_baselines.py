"""CPU of the devices' baselines, the part of a risk pass computed per device.

A baseline (homepot.insights.features.compute_baseline) is a device's own normal over the day
before its anchor: per metric the median, the spread (median absolute deviation) and the
95th percentile, and the usual latency jitter. A risk pass computes one per device whose
hourly anchor passed, the first pass of a process one for every device. Here ``--devices``
synthetic devices each hold a day of samples (``--interval`` seconds apart; some NaN, as
missing readings are), and every baseline is computed ``--rounds`` times; the CPU per
device is printed with a checksum of every value computed, so that two trees can be
compared for speed and equality:

    .venv/bin/python benchmarks/risk_baselines.py
    PYTHONPATH=/tmp/before/src .venv/bin/python benchmarks/risk_baselines.py   # a baseline tree

The fleet's 30 s interval gives 2,880 samples a day; the event-loop test's sparse fleet
(`--interval 4800`) 18.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import struct
import time

import numpy as np
from _common import console

from homepot.insights.features import HISTORY, METRICS, compute_baseline

ANCHOR = 1_790_000_000.0


def fleet(
    devices: int, interval: float, seed: int
) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Each device's sample times and values over the day before ANCHOR (plus an hour)."""
    rng = np.random.default_rng(seed)
    span = HISTORY.total_seconds() + 3600
    count = int(span // interval)
    times = ANCHOR - span + interval * np.arange(count, dtype=float)
    arrays = []
    for _ in range(devices):
        values: dict[str, np.ndarray] = {}
        for name, _ in METRICS:
            level = rng.uniform(5, 80)
            series = level + np.cumsum(rng.normal(0, 0.3, count)) + rng.normal(0, 4, count)
            series[rng.random(count) < 0.01] = np.nan  # readings that did not come
            values[name] = np.round(series, 1)
        arrays.append((times, values))
    return arrays


def checksum(baselines: list[object]) -> str:
    """Of every value computed, each with its bits; a zero counts as 0.0 whatever its sign
    (-0.0 == 0.0; which one a median of a tie gives is the sort's choice)."""
    digest = hashlib.sha256()
    for baseline in baselines:
        values = [baseline.jitter]  # type: ignore[attr-defined]
        for level in baseline.levels.values():  # type: ignore[attr-defined]
            values += level or (float("nan"),)
        for value in values:
            digest.update(struct.pack("<d", value + 0.0))  # -0.0 + 0.0 is 0.0
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    arrays = fleet(args.devices, args.interval, args.seed)
    per_device = []
    baselines: list[object] = []
    for _ in range(args.rounds):
        start = time.process_time()
        baselines = [compute_baseline(times, values, ANCHOR) for times, values in arrays]
        per_device.append((time.process_time() - start) / args.devices)
    samples = len(arrays[0][0])
    console.print(
        f"{args.devices:,} devices x {samples:,} samples ({args.interval:g} s apart), "
        f"{args.rounds} rounds: baseline CPU per device best {min(per_device) * 1e6:,.0f} µs, "
        f"median {statistics.median(per_device) * 1e6:,.0f} µs; checksum {checksum(baselines)}"
    )


if __name__ == "__main__":
    main()
