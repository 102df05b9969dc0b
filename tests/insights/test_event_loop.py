"""A background pass over a fleet does not hold the event loop that serves requests.

The passes compute for seconds (risk features: ~0.7 ms a device). That computation runs on
the compute thread (homepot.kit.offload); on the event loop it kept every request waiting
until it was done (a device's chart: p95 1.7 s with the passes on, benchmarks/README.md).

Measured with a lag probe, not with the pass's speed: a task sleeps 10 ms over and over and
records how late it wakes. The same pass with its computation inline (as before) is the
control, showing that the fleet is big enough for the old code to hold the loop for far
longer than the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, select

from homepot.analytics.models import DeviceMetrics
from homepot.device.models import Device
from homepot.insights.features import FEATURES
from homepot.insights.models import DeviceRisk
from homepot.insights.risk import RiskModel, make_estimator
from homepot.insights.scoring import score_devices
from homepot.kit.offload import compute, inline_computation
from homepot.site.models import Site

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DEVICES = 4000
# Generous for a loaded 2-core machine: off the loop the probe wakes within a few switch
# intervals of the GIL (5 ms each) on a quiet machine (measured 10-60 ms), 285-414 ms with
# two busy processes more than the two cores (load average 8, SQLite: its driver's thread
# wants the GIL too); inline, this fleet holds the loop for 0.8-1.5 s on a quiet machine
# (0.84 and 0.98 s on 2026-12-02's faster host, which failed a control of twice the bound).
BOUND_MS = 500.0
PROBE_SECONDS = 0.010
T = TypeVar("T")


# Per device: six samples in the last hour, and the day before it in samples 80 minutes
# apart (enough for its usual level, which the features compare the last hour with).
SAMPLE_AGES = [timedelta(minutes=10 * step) for step in range(6)] + [
    timedelta(hours=1, minutes=80 * step) for step in range(1, 17)
]


async def _fleet(app: FastAPI) -> None:
    """``DEVICES`` terminals in one site with their ``SAMPLE_AGES`` samples."""
    rng = np.random.default_rng(3)
    ids = [f"loop-{number:05d}" for number in range(DEVICES)]
    async with app.state.session_factory() as session, session.begin():
        await session.execute(insert(Site), [{"site_id": "loop-site", "name": "Loop store"}])
        await session.execute(
            insert(Device),
            [{"device_id": d, "site_id": "loop-site", "name": d} for d in ids],
        )
        await session.execute(
            insert(DeviceMetrics),
            [
                {
                    "device_id": device_id,
                    "timestamp": NOW - age,
                    "cpu_percent": float(rng.uniform(5, 80)),
                    "memory_percent": float(rng.uniform(30, 95)),
                    "disk_percent": float(rng.uniform(20, 90)),
                    "network_latency_ms": float(rng.uniform(10, 200)),
                    "error_rate": float(rng.uniform(0, 3)),
                    "transaction_count": int(rng.integers(0, 20)),
                }
                for device_id in ids
                for age in SAMPLE_AGES
            ],
        )


def _model() -> RiskModel:
    """A model of the right shape fitted on noise: scoring costs the same whatever it learnt."""
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(500, len(FEATURES)))
    labels = (matrix[:, 0] + rng.normal(size=500) > 1.0).astype(int)
    return RiskModel(
        estimator=make_estimator(0, max_iter=10).fit(matrix, labels),
        features=FEATURES,
        horizon=timedelta(hours=2),
        trained_since=NOW - timedelta(days=7),
        trained_until=NOW,
        trained_at=NOW,
        validation={},
        medians=[0.0] * len(FEATURES),
        spreads=[1.0] * len(FEATURES),
        importance=[1.0 / len(FEATURES)] * len(FEATURES),
    )


async def _longest_block(run: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    """How long (ms) the event loop was held at most while ``run`` ran, and its result."""
    lags: list[float] = []

    async def probe() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(PROBE_SECONDS)
            lags.append((time.perf_counter() - started - PROBE_SECONDS) * 1000)

    task = asyncio.create_task(probe())
    await asyncio.sleep(PROBE_SECONDS * 3)
    try:
        result = await run()
        await asyncio.sleep(PROBE_SECONDS * 3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return max(lags), result


async def _risk_pass(app: FastAPI, model: RiskModel) -> tuple[float, int, list[tuple[Any, ...]]]:
    """One risk pass: the longest the loop was held during it, the rows it stored (rolled
    back afterwards, for the next pass)."""
    async with app.state.session_factory() as session:
        block, stored = await _longest_block(lambda: score_devices(session, model, NOW))
        rows = (
            await session.execute(
                select(DeviceRisk.device_id, DeviceRisk.risk, DeviceRisk.factors).order_by(
                    DeviceRisk.device_id
                )
            )
        ).all()
        await session.rollback()
    return block, stored, [tuple(row) for row in rows]


async def test_risk_scoring_of_a_fleet_leaves_the_event_loop_free(app: FastAPI) -> None:
    await _fleet(app)
    model = _model()

    with inline_computation():
        inline_block, inline_stored, inline_rows = await _risk_pass(app, model)
    block, stored, rows = await _risk_pass(app, model)

    assert stored == inline_stored == DEVICES
    assert rows == inline_rows  # the same risks and factors, wherever they were computed
    # The control: computed on the loop, this pass holds it longer than the bound allows, so
    # the bound tells the two apart (the bound, not a multiple of it: a fast machine computes
    # the same fleet in less time, both ways).
    assert inline_block > BOUND_MS, f"inline: loop held {inline_block:.0f} ms at most"
    assert block < BOUND_MS, f"loop held {block:.0f} ms (inline: {inline_block:.0f} ms)"


async def test_computation_runs_off_the_loop_thread_and_raises_there() -> None:
    loop_thread = threading.get_ident()

    assert await compute(threading.get_ident) != loop_thread
    with inline_computation():
        assert await compute(threading.get_ident) == loop_thread
    with pytest.raises(ZeroDivisionError):
        await compute(divmod, 1, 0)
