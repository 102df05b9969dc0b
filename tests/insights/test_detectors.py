"""The detectors without a database: a server's pass that reuses the recent-window steps of
its previous pass finds exactly what a pass computing everything again finds."""

from __future__ import annotations

import numpy as np

from homepot.insights import detectors as det
from tests.insights.fleetdata import SCAN_DAY

NEW_BINS = 6  # bins a pass adds
REFRESH_BINS = 3  # of which the newest the server re-reads (late samples)


def _fleet(width: int, first_bin: int) -> det.Chunk:
    """Two sites of four terminals on the recent-window fallback (no learnt baselines), with
    their nights off, one disk filling in steps and one memory leak at the end."""
    rng = np.random.default_rng(7)
    devices = [
        det.DeviceInfo(f"pos-{site}-{number}", f"site-{site}", "pos_terminal", 0, "UTC")
        for site in range(2)
        for number in range(4)
    ]
    shape = (len(devices), width)
    hours = ((first_bin + np.arange(width)) % det.BINS_PER_DAY) / det.BINS_PER_HOUR
    load = np.where((hours >= 8) & (hours < 20), np.sin(np.pi * (hours - 8) / 12), 0.0)
    values = {
        "cpu": 10 + 50 * load + rng.normal(0, 3, shape),
        "memory": 45 + 10 * load + rng.normal(0, 1.5, shape),
        "disk": np.repeat(rng.uniform(20, 70, (len(devices), 1)), width, axis=1),
        "network_latency": 30 * (1 + 0.5 * load) * rng.lognormal(0, 0.15, shape),
        "error_rate": 0.4 + np.abs(rng.normal(0, 0.2, shape)),
        "transactions": np.maximum(0, rng.normal(12 * load, 1, shape)),
    }
    values["disk"][2, -60:] += np.repeat([4.0, 9.0, 15.0, 22.0, 30.0], 12)
    values["memory"][5, -72:] += np.linspace(0, 45, 72)
    off = rng.random(shape) < 0.05
    for name in values:
        values[name][off] = np.nan
    counts = np.where(off, 0, 1).astype(np.int64)
    every = np.ones(width, dtype=bool)
    sites = {device.site_id for device in devices}
    return det.Chunk(
        devices=devices,
        first_bin=first_bin,
        values=values,
        counts=counts,
        open_bins=dict.fromkeys(sites, every),
        maintenance_bins=dict.fromkeys(sites, ~every),
    )


def _columns(chunk: det.Chunk, first: int, end: int, memo: det.RecentMemo | None) -> det.Chunk:
    return det.Chunk(
        devices=chunk.devices,
        first_bin=chunk.first_bin + first,
        values={name: array[:, first:end].copy() for name, array in chunk.values.items()},
        counts=chunk.counts[:, first:end].copy(),
        open_bins={site: mask[first:end] for site, mask in chunk.open_bins.items()},
        maintenance_bins={site: mask[first:end] for site, mask in chunk.maintenance_bins.items()},
        memo=memo,
    )


def test_a_pass_reusing_its_previous_recent_windows_finds_what_a_fresh_pass_finds() -> None:
    width = det.CONTEXT_BINS + 30
    # A step of the clock falls on the newest bin of the first pass: the second pass re-reads
    # bins inside its window, so that step must be computed again, not reused.
    first_bin = det.bin_of(SCAN_DAY) - width + 1
    history = _fleet(width + NEW_BINS, first_bin)
    memo = det.RecentMemo()
    det.detect(_columns(history, 0, width, memo), det.CONTEXT_BINS, {})
    assert memo.steps, "the first pass kept nothing"

    # Late samples arrived in the bins the second pass re-reads.
    refresh_from = width - REFRESH_BINS
    for array in history.values.values():
        array[:, refresh_from:width] *= 1.3
    memo.stable_until = first_bin + refresh_from
    kept = set(memo.steps)
    reused = _columns(history, NEW_BINS, width + NEW_BINS, memo)
    fresh = _columns(history, NEW_BINS, width + NEW_BINS, None)

    found, bands = det.detect(reused, det.CONTEXT_BINS, {})
    expected, expected_bands = det.detect(fresh, det.CONTEXT_BINS, {})

    assert found == expected
    assert {(e.device_id, e.metric) for e in found} >= {("pos-0-2", "disk"), ("pos-1-1", "memory")}
    for name, band in bands.items():
        assert np.array_equal(band.expected, expected_bands[name].expected, equal_nan=True), name
        assert np.array_equal(band.scale, expected_bands[name].scale, equal_nan=True), name
    assert kept & set(memo.steps), "the second pass reused none of the first pass's steps"
