"""Failure risk: learned from the database's own history, refused when it does not fit."""

from __future__ import annotations

import asyncio
import math
import pickle
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from homepot import cli
from homepot.analytics.models import DeviceMetrics, DeviceStateHistory
from homepot.cli.insights import parse_horizon
from homepot.config import Settings
from homepot.insights.features import FEATURES, load_history, training_samples
from homepot.insights.models import DeviceRisk
from homepot.insights.risk import ModelError, describe, load_model
from homepot.insights.scoring import (
    latest_risks,
    score_devices,
    score_from_anomalies,
    train_from_history,
)
from tests.helpers import create_device, create_site, db_rows

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DAYS = 3
STEP = timedelta(minutes=10)


async def _fleet_history(app: FastAPI, *, seed: int = 7) -> tuple[list[str], list[str]]:
    """Twelve terminals over three days of noisy memory. Five of them leak once a day: memory
    climbs for three hours, then the terminal goes to error and comes back 30 minutes later.
    The last leak of the first one is still climbing at NOW. Returns (leaky, healthy) ids."""
    rng = random.Random(seed)
    site_id = await create_site(app)
    leaky = [await create_device(app, site_id=site_id) for _ in range(5)]
    healthy = [await create_device(app, site_id=site_id) for _ in range(7)]
    start = NOW - timedelta(days=DAYS)
    async with app.state.session_factory() as session:
        for number, device_id in enumerate(leaky + healthy):
            leaks = []
            if device_id in leaky:
                for day in range(DAYS):
                    crash = start + timedelta(days=day, hours=6 + (number * 5 + day * 7) % 14)
                    leaks.append(crash)
                if device_id == leaky[0]:
                    leaks[-1] = NOW + timedelta(minutes=50)  # still climbing now
            base = rng.uniform(40, 60)
            moment = start
            while moment <= NOW:
                hour = moment.hour + moment.minute / 60
                memory = base + 6 * math.sin(hour / 24 * 2 * math.pi) + rng.gauss(0, 3)
                down = False
                for crash in leaks:
                    if crash - timedelta(hours=3) <= moment < crash:
                        memory += (
                            (moment - (crash - timedelta(hours=3))).total_seconds()
                            / (3 * 3600)
                            * (97 - memory)
                        )
                    if crash <= moment < crash + timedelta(minutes=30):
                        down = True
                if not down:
                    session.add(
                        DeviceMetrics(
                            device_id=device_id,
                            timestamp=moment,
                            cpu_percent=max(0.0, rng.gauss(35, 12)),
                            memory_percent=min(100.0, memory),
                            disk_percent=55.0 + rng.gauss(0, 1),
                            network_latency_ms=max(1.0, rng.gauss(40, 15)),
                            error_rate=max(0.0, rng.gauss(0.5, 0.3)),
                        )
                    )
                moment += STEP
            for crash in leaks:
                if crash > NOW:
                    continue
                session.add(
                    DeviceStateHistory(
                        device_id=device_id,
                        timestamp=crash,
                        previous_state="online",
                        new_state="error",
                        reason="crashed",
                    )
                )
                session.add(
                    DeviceStateHistory(
                        device_id=device_id,
                        timestamp=crash + timedelta(minutes=30),
                        previous_state="error",
                        new_state="online",
                        reason="recovered",
                    )
                )
        await session.commit()
    return leaky, healthy


# Trains a model (scikit-learn) on each backend. In two -n 2 runs each took ~95 s (7-30 s in
# one process) and the PostgreSQL one's app missed asgi-lifespan's 5 s shutdown timeout; in
# one xdist group the two never train at the same time.
@pytest.mark.xdist_group("risk-model-training")
async def test_the_model_learns_failures_from_history_alone_and_scores_the_fleet(
    app: FastAPI, tmp_path: Path
) -> None:
    leaky, healthy = await _fleet_history(app)
    model_path = tmp_path / "risk.pkl"

    async with app.state.session_factory() as session:
        report = await train_from_history(
            session,
            since=NOW - timedelta(days=DAYS) + timedelta(hours=6),
            until=NOW,
            horizon=timedelta(hours=2),
            out=model_path,
            now=NOW,
        )
    assert report.failures > 0
    assert report.validation["roc_auc"] is not None
    assert report.validation["roc_auc"] >= 0.8, report.validation

    model = load_model(model_path)
    assert model.features == FEATURES
    assert model.horizon == timedelta(hours=2)
    async with app.state.session_factory() as session:
        scored = await score_devices(session, model, NOW)
        await session.commit()
    assert scored == len(leaky) + len(healthy)

    async with app.state.session_factory() as session:
        latest = await latest_risks(session)
    climbing = latest[leaky[0]]
    assert climbing.risk > max(latest[device].risk for device in healthy)
    assert climbing.horizon_minutes == 120
    assert climbing.model == model.name
    assert any("memory" in factor["factor"] for factor in climbing.factors), climbing.factors
    assert len(await db_rows(app, DeviceRisk)) == scored


async def test_a_model_file_with_other_features_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.pkl"
    path.write_bytes(pickle.dumps({"format": 1, "features": ["cpu_last", "mystery_feature"]}))
    with pytest.raises(ModelError, match=r"other features.*mystery_feature"):
        load_model(path)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(ModelError, match="not a HOMEPOT risk model"):
        load_model(garbage)
    with pytest.raises(ModelError, match="no model file"):
        load_model(tmp_path / "missing.pkl")


async def test_targets_skip_maintenance_and_samples_skip_devices_already_down(
    app: FastAPI,
) -> None:
    leaky, _ = await _fleet_history(app)
    async with app.state.session_factory() as session:
        history = await load_history(session, NOW - timedelta(days=2), NOW)
    samples = training_samples(history, timedelta(hours=2))
    entry = history.devices[leaky[1]]
    assert entry.failures  # every crash outside a maintenance window is a failure
    down_moments = [
        at for at, state in entry.states if state == "error"
    ]  # no sample while the device is down
    for moment, device_id in zip(samples.moments, samples.device_ids, strict=True):
        if device_id == leaky[1]:
            assert not any(at <= moment < at + 1800 for at in down_moments)
    assert samples.matrix.shape[1] == len(FEATURES)


def test_too_little_history_is_a_clear_error(database_url: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli.app,
        ["--database-url", database_url, "insights", "train", "--out", str(tmp_path / "m.pkl")],
    )
    assert result.exit_code == 1
    assert "failures in the range" in result.output
    bad = CliRunner().invoke(
        cli.app,
        ["--database-url", database_url, "insights", "train", "--out", "m", "--horizon", "2x"],
    )
    assert bad.exit_code == 2
    assert "--horizon" in bad.output


def test_features_read_as_sentences() -> None:
    assert describe("memory_slope_3h", 5.24) == ("memory % trend", "+5.2 per h")
    assert describe("error_rate_dev_24h", 3.0) == (
        "transaction error rate % against its usual level",
        "+3.0 robust z",
    )
    assert describe("errors_critical_6h", 2) == ("critical errors in 6 h", "2")
    assert parse_horizon("90m") == timedelta(minutes=90)
    assert parse_horizon("1d") == timedelta(days=1)
    with pytest.raises(ValueError, match="between 15 minutes and 7 days"):
        parse_horizon("5m")


# --- without a model: risk from the active anomaly episodes --------------------------------


async def test_without_a_model_risk_comes_from_active_episodes_and_says_so(
    app: FastAPI,
) -> None:
    from tests.insights.test_router import create_anomaly

    site_id = await create_site(app)
    sick = await create_device(app, site_id=site_id)
    resting = await create_device(app, site_id=site_id)
    calm = await create_device(app, site_id=site_id)
    await create_anomaly(app, device_id=sick, site_id=site_id, metric="memory", score=60)
    await create_anomaly(app, device_id=sick, site_id=site_id, metric="disk", score=50)
    await create_anomaly(app, device_id=resting, site_id=site_id, expected_maintenance=True)
    await create_anomaly(app, device_id=calm, site_id=site_id, ended=True, score=90)

    async with app.state.session_factory() as session:
        stored = await score_from_anomalies(session, NOW)
        await session.commit()
    async with app.state.session_factory() as session:
        latest = await latest_risks(session)
    assert stored == 3
    assert latest[sick].risk == pytest.approx(0.8)
    assert [factor["factor"] for factor in latest[sick].factors] == ["memory", "disk"]
    assert latest[sick].model == "anomalies"
    assert (latest[resting].risk, latest[calm].risk) == (0.0, 0.0)

    # Nothing moved: the newest rows stand, nothing is written again.
    async with app.state.session_factory() as session:
        assert await score_from_anomalies(session, NOW + timedelta(minutes=5)) == 0
        await session.commit()
    assert len(await db_rows(app, DeviceRisk)) == 3


async def test_the_server_scores_risk_and_reports_an_unusable_model(
    settings: Settings, tmp_path: Path
) -> None:
    from asgi_lifespan import LifespanManager

    from homepot.analytics.models import ErrorLog
    from homepot.config import InsightsSettings
    from homepot.main import create_app
    from tests.helpers import flush

    broken = tmp_path / "broken.pkl"
    broken.write_bytes(b"not a model")
    fast = settings.model_copy(
        update={
            "insights": InsightsSettings(
                interval_seconds=30, risk_interval_seconds=0.05, model_path=broken
            )
        }
    )
    application = create_app(fast)
    async with LifespanManager(application):
        device_id = await create_device(application)
        for _ in range(200):
            if await db_rows(application, DeviceRisk, device_id=device_id):
                break
            await asyncio.sleep(0.05)
        [row] = await db_rows(application, DeviceRisk, device_id=device_id)
        assert (row.risk, row.model) == (0.0, "anomalies")
        await flush(application)
        [error] = await db_rows(application, ErrorLog, error_code="INSIGHTS_MODEL_UNUSABLE")
        assert "not a HOMEPOT risk model" in error.error_message


async def test_a_terminal_switched_off_while_its_store_is_closed_has_not_failed(
    app: FastAPI,
) -> None:
    from datetime import time

    from homepot.analytics.models import SiteOperatingSchedule

    site_id = await create_site(app)
    device_id = await create_device(app, site_id=site_id)
    day = NOW.replace(hour=0, minute=0)
    async with app.state.session_factory() as session:
        # Open 08:00-20:00 UTC every day; Sunday is the maintenance day (NOW is a Monday), so
        # Monday night is closed but no maintenance window.
        for weekday in range(7):
            session.add(
                SiteOperatingSchedule(
                    site_id=site_id,
                    day_of_week=weekday,
                    open_time=time(8),
                    close_time=time(20),
                    is_maintenance_window=weekday == 6,
                )
            )
        for hour, state in ((21, "offline"), (22, "error"), (10, "offline")):
            session.add(
                DeviceStateHistory(
                    device_id=device_id,
                    timestamp=day + timedelta(hours=hour),
                    previous_state="online",
                    new_state=state,
                )
            )
        await session.commit()
    async with app.state.session_factory() as session:
        history = await load_history(session, day, day + timedelta(days=1))
    failures = [datetime.fromtimestamp(at, UTC).hour for at in history.devices[device_id].failures]
    assert failures == [10, 22]  # offline while open, and an error even at night
