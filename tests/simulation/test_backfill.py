"""``homepot simulate backfill``: days of history straight into the database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from homepot import cli
from homepot.analytics.models import DeviceMetrics, ErrorLog
from homepot.db import create_engine, run_migrations
from homepot.dbtools import count_rows
from homepot.device.models import Device
from homepot.models import ANALYTICS_MODELS
from homepot.simulation.backfill import BackfillConfig, BackfillError, run_backfill
from homepot.simulation.faults import BenignKind, FaultKind, read_labels
from homepot.site.models import Site

END = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)


async def counts(database_url: str) -> dict[str, int]:
    engine = create_engine(database_url)
    async with engine.connect() as connection:
        result = {c.table: c.rows for c in await count_rows(connection)}
    await engine.dispose()
    return result


async def test_five_days_fill_every_analytics_table_past_1000_rows(
    database_url: str, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.csv"
    engine = create_engine(database_url)
    # 143 sites is the fewest whose weekly schedules make 1,000 rows (7 per site).
    config = BackfillConfig(
        days=5, sites=143, devices=143, interval_minutes=120, seed=7, labels=labels, end=END
    )
    result = await run_backfill(engine, config)

    rows = await counts(database_url)
    analytics = {m.__tablename__: rows[m.__tablename__] for m in ANALYTICS_MODELS}
    assert len(analytics) == 8
    assert all(n >= 1000 for n in analytics.values()), analytics
    assert rows["sites"] == 143
    assert rows["devices"] == 143

    # History lies in the five days before the end, none in the future.
    async with engine.connect() as connection:
        oldest, newest = (
            await connection.execute(
                select(func.min(DeviceMetrics.timestamp), func.max(DeviceMetrics.timestamp))
            )
        ).one()
        timeouts = await connection.scalar(
            select(func.count())
            .select_from(ErrorLog)
            .where(
                ErrorLog.error_code == "EXT_SERVICE_TIMEOUT",
                ErrorLog.category == "external_service",
                ErrorLog.severity == "critical",
            )
        )
    await engine.dispose()
    oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
    newest = newest if newest.tzinfo else newest.replace(tzinfo=UTC)
    assert END - timedelta(days=5) <= oldest
    assert newest <= END + timedelta(minutes=1)

    # The labels list the injected faults: every kind, each with a start before its end; and
    # the benign events, each kind under its own benign_* name.
    labelled = read_labels(labels)
    injected = [label for label in labelled if not label["fault"].startswith("benign_")]
    assert len(injected) == result.faults > 0
    assert {label["fault"] for label in injected} == {kind.value for kind in FaultKind}
    benign = {label["fault"] for label in labelled} - {label["fault"] for label in injected}
    # (No maintenance-window morning falls in these five days: no firmware reboot.)
    assert benign == {BenignKind.settlement.value, BenignKind.log_rotation.value}
    assert all(label["start"] < label["end"] for label in labelled)
    if any(label["fault"] == "payment_gateway_timeout" for label in injected):
        assert timeouts


async def test_everything_a_backfill_writes_is_marked_simulated(database_url: str) -> None:
    engine = create_engine(database_url)
    config = BackfillConfig(days=1, sites=2, devices=4, interval_minutes=60, seed=3, end=END)
    await run_backfill(engine, config)
    async with engine.connect() as connection:
        sources = {
            model.__tablename__: set(await connection.scalars(select(model.source).distinct()))
            for model in ANALYTICS_MODELS
        }
        devices = set(await connection.scalars(select(Device.simulated).distinct()))
        sites = set(await connection.scalars(select(Site.simulated).distinct()))
    await engine.dispose()

    assert sources == {model.__tablename__: {"simulated"} for model in ANALYTICS_MODELS}
    assert (devices, sites) == ({True}, {True})


async def test_same_seed_gives_the_same_history(tmp_path: Path) -> None:
    config = BackfillConfig(days=1, sites=2, devices=4, interval_minutes=30, seed=3, end=END)
    histories = []
    for name in ("a", "b"):
        url = f"sqlite+aiosqlite:///{tmp_path / name}.db"
        run_migrations(url)
        engine = create_engine(url)
        await run_backfill(engine, replace(config, labels=tmp_path / f"{name}.jsonl"))
        await engine.dispose()
        histories.append((await counts(url), read_labels(tmp_path / f"{name}.jsonl")))
    assert histories[0] == histories[1]
    assert histories[0][0]["device_metrics"] > 0


async def test_a_second_history_for_the_same_stores_is_refused(database_url: str) -> None:
    engine = create_engine(database_url)
    config = BackfillConfig(days=1, sites=1, devices=2, interval_minutes=60, seed=3, end=END)
    await run_backfill(engine, config)
    before = await counts(database_url)

    with pytest.raises(BackfillError, match="--site-prefix"):
        await run_backfill(engine, replace(config, seed=4))
    await run_backfill(engine, replace(config, site_prefix="outlet"))  # another chain is fine
    await engine.dispose()

    after = await counts(database_url)
    assert after["sites"] == before["sites"] + 1
    assert after["device_metrics"] > before["device_metrics"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"days": 9}, "--days"),
        ({"sites": 4, "devices": 2}, "one terminal per site"),
        ({"interval_minutes": 0.1}, "--interval-minutes"),
        ({"fault_rate": -1}, "--fault-rate"),
    ],
)
def test_impossible_parameters_are_refused_with_the_option_named(
    changes: dict[str, float], message: str
) -> None:
    with pytest.raises(BackfillError, match=message):
        BackfillConfig(**changes).validate()  # type: ignore[arg-type]


def test_the_command_writes_history_and_names_the_labels_file(
    database_url: str, tmp_path: Path
) -> None:
    labels = tmp_path / "faults.csv"
    args = ["--database-url", database_url, "simulate", "backfill", "--days", "1", "--sites",
            "2", "--devices", "3", "--interval-minutes", "60", "--fault-rate", "3", "--labels",
            str(labels)]  # fmt: skip
    result = CliRunner().invoke(cli.app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"injected faults are listed in {labels}" in result.output
    assert "device_metrics" in result.output
    assert labels.read_text().startswith("device_id,site_id,fault,start,end")

    again = CliRunner().invoke(cli.app, args)
    assert again.exit_code == 1
    assert "--site-prefix" in again.output


def test_the_command_refuses_impossible_parameters_before_touching_the_database(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'untouched.db'}"
    result = CliRunner().invoke(
        cli.app, ["--database-url", url, "simulate", "backfill", "--days", "30"]
    )
    assert result.exit_code == 2
    assert "--days must be above 0 and at most 7" in result.output
    assert not (tmp_path / "untouched.db").exists()
