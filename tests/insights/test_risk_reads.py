"""What a risk pass reads: the last 3 h of raw samples and, once an hour per device, its day
for the baseline; and that it serves the features the full raw history gives."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import delete, func, insert, select

from homepot.analytics.models import DeviceMetrics, DeviceStateHistory, ErrorLog
from homepot.config import Settings
from homepot.db import utcnow
from homepot.insights.features import (
    FEATURES,
    HISTORY,
    RECENT,
    History,
    baseline_anchor,
    current_features,
    load_history,
)
from homepot.insights.models import DeviceRisk
from homepot.insights.risk import RiskModel, make_estimator
from homepot.insights.risk_reads import BaselineCache, load_scoring_history
from homepot.insights.scoring import latest_risks, score_devices
from tests.helpers import create_device, create_site, db_rows

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
STEP = timedelta(minutes=5)
PASS = timedelta(minutes=5)


def _samples(device_id: str, start: datetime, end: datetime, rng: random.Random) -> list[dict]:
    rows = []
    moment = start
    base = rng.uniform(40, 60)
    while moment <= end:
        hour = moment.hour + moment.minute / 60
        memory = base + 8 * math.sin(hour / 24 * 2 * math.pi) + rng.gauss(0, 2)
        rows.append(
            {
                "device_id": device_id,
                "timestamp": moment,
                "event_id": f"{device_id}-{moment.timestamp():.0f}",
                "cpu_percent": max(0.0, rng.gauss(35, 10)),
                "memory_percent": memory,
                "disk_percent": 50 + rng.gauss(0, 1),
                # A missing latency now and then: the features skip it.
                "network_latency_ms": None
                if rng.random() < 0.1
                else 40 * math.exp(rng.gauss(0, 0.2)),
                "error_rate": abs(rng.gauss(0.5, 0.3)),
            }
        )
        moment += STEP
    return rows


async def _fleet(app: FastAPI, end: datetime) -> list[str]:
    """Seven terminals of one store with 5-minute samples from 27 h before NOW to ``end``,
    each its own way: steady ones, one whose memory climbs in the last hours, one silent for
    the last 4 h (still scored: it reported within 6 h), one that began reporting 2 h ago (no
    baseline yet), one that never reported; and a few errors and state changes."""
    rng = random.Random(13)
    site_id = await create_site(app)
    devices = [await create_device(app, site_id=site_id) for _ in range(7)]
    steady, climbing, silent, newcomer, never = (
        devices[:3],
        devices[3],
        devices[4],
        devices[5],
        devices[6],
    )
    start = NOW - timedelta(hours=27)
    rows = []
    for device_id in steady:
        rows += _samples(device_id, start, end, rng)
    for row in _samples(climbing, start, end, rng):
        ahead = (row["timestamp"] - (NOW - timedelta(hours=3))).total_seconds() / 3600
        if ahead > 0:
            row["memory_percent"] = min(99.0, row["memory_percent"] + 9 * ahead)
        rows.append(row)
    rows += _samples(silent, start, NOW - timedelta(hours=4), rng)
    rows += _samples(newcomer, NOW - timedelta(hours=2), end, rng)
    del never  # a device without a sample
    async with app.state.session_factory() as session:
        for first in range(0, len(rows), 500):
            await session.execute(insert(DeviceMetrics), rows[first : first + 500])
        session.add(
            ErrorLog(timestamp=NOW - timedelta(minutes=40), category="external_service",
                     severity="critical", error_code="EXT_SERVICE_TIMEOUT",
                     error_message="timeout", device_id=steady[0])
        )  # fmt: skip
        session.add(
            DeviceStateHistory(device_id=steady[1], timestamp=NOW - timedelta(hours=20),
                               previous_state="offline", new_state="online", reason="up")
        )  # fmt: skip
        await session.commit()
    return devices


async def _full_raw(app: FastAPI, now: datetime) -> tuple[History, np.ndarray, list[str]]:
    """The features at ``now`` from every raw sample of the day (what training computes)."""
    async with app.state.session_factory() as session:
        history = await load_history(session, now - timedelta(hours=1), now, include_simulated=True)
    samples = current_features(history, sorted(history.devices), now)
    return history, samples.matrix, samples.device_ids


async def _served(
    app: FastAPI, now: datetime, cache: BaselineCache
) -> tuple[np.ndarray, list[str]]:
    async with app.state.session_factory() as session:
        history = await load_scoring_history(session, now, cache)
    samples = current_features(history, sorted(history.devices), now)
    return samples.matrix, samples.device_ids


async def _rows(
    app: FastAPI, after: datetime, until: datetime, device_ids: list[str] | None = None
) -> int:
    statement = (
        select(func.count())
        .select_from(DeviceMetrics)
        .where(DeviceMetrics.timestamp > after, DeviceMetrics.timestamp <= until)
    )
    if device_ids is not None:
        statement = statement.where(DeviceMetrics.device_id.in_(device_ids))
    async with app.state.session_factory() as session:
        return int(await session.scalar(statement) or 0)


async def test_every_pass_serves_the_full_history_features_and_reads_the_day_once_an_hour(
    app: FastAPI,
) -> None:
    """Thirteen passes five minutes apart: each serves exactly the features computed from
    every raw sample; the first reads every device's day, each later one the last 3 h of
    samples and the day only of the devices whose hourly anchor it passed: each device's
    exactly once in the hour."""
    devices = await _fleet(app, NOW + timedelta(hours=1, minutes=10))
    cache = BaselineCache()
    served_rows = full_rows = 0
    recomputed: list[str] = []
    previous: datetime | None = None
    for number in range(13):
        now = NOW + number * PASS
        full_history, expected, expected_ids = await _full_raw(app, now)
        served, served_ids = await _served(app, now, cache)
        assert served_ids == expected_ids
        np.testing.assert_array_equal(served, expected)
        # Every device that reported in the last 6 h is scored, the silent one too.
        assert set(served_ids) == set(devices[:6])
        reads = cache.last_pass
        assert reads is not None
        assert reads.recent_rows == await _rows(app, now - RECENT, now)
        at = now.timestamp()
        if previous is None:
            due = sorted(devices)
        else:
            due = [
                device_id
                for device_id in sorted(devices)
                if baseline_anchor(device_id, at)
                != baseline_anchor(device_id, previous.timestamp())
            ]
            recomputed += due
            served_rows += reads.rows
            full_rows += full_history.metric_rows
        assert reads.baselines_computed == len(due)
        earliest = min(
            (datetime.fromtimestamp(baseline_anchor(d, at), UTC) - HISTORY for d in due),
            default=now - RECENT,
        )
        assert reads.baseline_rows == await _rows(app, earliest, now - RECENT, due)
        previous = now
    assert sorted(recomputed) == sorted(devices)  # once each in the hour after the first pass
    # Over that hour: the last 3 h every pass, a day a device once; the full history read
    # 26 h every pass. At least five times fewer rows (5.5 here: 36 + 21 samples a device
    # a pass against 312).
    assert served_rows * 5 <= full_rows, (served_rows, full_rows)


def _tiny_model() -> RiskModel:
    """A model fitted on made-up rows: high memory over the hour is risky."""
    rng = np.random.default_rng(3)
    matrix = rng.normal(50, 15, size=(400, len(FEATURES)))
    labels = (matrix[:, FEATURES.index("memory_mean_1h")] > 60).astype(int)
    estimator = make_estimator(0, max_iter=20).fit(matrix, labels)
    return RiskModel(
        estimator=estimator,
        features=FEATURES,
        horizon=timedelta(hours=2),
        trained_since=NOW - timedelta(days=3),
        trained_until=NOW,
        trained_at=NOW,
        validation={},
        medians=[50.0] * len(FEATURES),
        spreads=[15.0] * len(FEATURES),
        importance=[1.0 / len(FEATURES)] * len(FEATURES),
    )


async def test_a_process_that_takes_the_pass_over_starts_cold_and_scores_the_same(
    app: FastAPI,
) -> None:
    """One process scored for an hour; another (the lock moved to it, its cache empty)
    scores at the same moment: both store the risks that the full history's features give."""
    await _fleet(app, NOW + timedelta(hours=1, minutes=10))
    model = _tiny_model()
    moment = NOW + timedelta(hours=1)
    _, expected, expected_ids = await _full_raw(app, moment)
    wanted = {
        device_id: round(float(risk), 4)
        for device_id, risk in zip(expected_ids, model.predict(expected), strict=True)
    }
    assert len(set(wanted.values())) > 1  # the climbing terminal stands out
    warm = BaselineCache()
    for number in range(13):
        async with app.state.session_factory() as session:
            await score_devices(session, model, NOW + number * PASS, baselines=warm)
            await session.commit()
    async with app.state.session_factory() as session:
        assert {d: r.risk for d, r in (await latest_risks(session)).items()} == wanted
        await session.execute(delete(DeviceRisk))
        await session.commit()
    cold = BaselineCache()
    async with app.state.session_factory() as session:
        await score_devices(session, model, moment, baselines=cold)
        await session.commit()
        assert {d: r.risk for d, r in (await latest_risks(session)).items()} == wanted
    assert cold.last_pass is not None
    assert warm.last_pass is not None
    assert cold.last_pass.baselines_computed == len(cold) == len(warm)
    assert warm.last_pass.rows < cold.last_pass.rows


async def test_the_server_keeps_the_baselines_between_its_passes(
    settings: Settings, tmp_path: Path
) -> None:
    """The server's risk pass, every 50 ms with a model: the baselines are computed about
    once per device, not at every pass."""
    from asgi_lifespan import LifespanManager

    from homepot.config import InsightsSettings
    from homepot.main import create_app

    model_path = tmp_path / "risk.pkl"
    _tiny_model().save(model_path)
    fast = settings.model_copy(
        update={
            "insights": InsightsSettings(
                interval_seconds=30, risk_interval_seconds=0.05, model_path=model_path
            )
        }
    )
    application = create_app(fast)
    async with LifespanManager(application):
        devices = [await create_device(application) for _ in range(2)]
        now = utcnow()
        rng = random.Random(5)
        rows = []
        for device_id in devices:
            rows += _samples(device_id, now - timedelta(hours=26), now, rng)
        async with application.state.session_factory() as session:
            await session.execute(insert(DeviceMetrics), rows)
            await session.commit()
        cache: BaselineCache = application.state.risk_baselines
        start = cache.passes
        for _ in range(400):
            scored = await db_rows(application, DeviceRisk, device_id=devices[0])
            if scored and cache.passes >= start + 5:
                break
            await asyncio.sleep(0.05)
        assert scored
        assert scored[0].model != "anomalies"
        passes = cache.passes - start
        assert passes >= 5
        # Each device's baseline once (when it was created), not at every pass; the pass may
        # cross a device's hourly anchor meanwhile.
        assert cache.baselines_computed <= 2 + 2 * 2, (cache.baselines_computed, passes)
        # And /metrics says what the passes read.
        read_before = cache.rows_read
        transport = ASGITransport(app=application)
        async with AsyncClient(transport=transport, base_url="http://testserver") as http:
            text = (await http.get("/metrics")).text
        published = {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("homepot_risk_")
        }
        assert published["homepot_risk_metric_rows_read_total"] >= read_before > 0
        assert published["homepot_risk_baselines_kept"] == 2
        assert 2 <= published["homepot_risk_baselines_computed_total"] <= 6
