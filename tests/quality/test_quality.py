"""The Phase 3 data-quality gate: GET /api/v1/analytics/quality and `homepot quality`."""

from __future__ import annotations

import asyncio
import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient
from typer.testing import CliRunner, Result

from homepot import cli
from homepot.analytics.models import JobOutcome
from homepot.auth.models import Role
from homepot.db import create_engine, utcnow
from homepot.quality.service import TABLE_NAMES, Thresholds, assess_quality
from homepot.simulation.backfill import BackfillConfig, run_backfill
from homepot.simulation.faults import FaultKind
from tests.helpers import auth_headers, create_device, create_site
from tests.quality.seed import clean_rows, insert, metric

QUALITY = "/api/v1/analytics/quality"
runner = CliRunner()


def tables(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {table["table"]: table for table in report["tables"]}


async def test_report_counts_nulls_out_of_range_future_duplicates_and_stopped_devices(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    live = await create_device(app, site_id=site_id, device_id="pos-live")
    dead = await create_device(app, site_id=site_id, device_id="pos-dead")
    now = utcnow()
    samples = [metric(live, now - timedelta(minutes=m)) for m in range(1, 7)]  # 6 clean
    samples += [
        metric(live, now - timedelta(minutes=10), cpu_percent=None),
        metric(live, now - timedelta(minutes=11), cpu_percent=150.0),
        metric(live, now - timedelta(minutes=12), memory_percent=-5.0, queue_depth=-1),
        metric(live, now + timedelta(hours=1)),  # a device clock an hour ahead
        metric(live, now - timedelta(minutes=1)),  # the first sample again, another event_id
        metric(dead, now - timedelta(hours=2)),
        metric(dead, now - timedelta(hours=3)),
    ]
    await insert(app.state.settings.database_url, [*samples])
    await insert(
        app.state.settings.database_url,
        [JobOutcome(job_id="job-1", job_type="restart", status="failed", duration_ms=-20)],
    )
    admin = await auth_headers(app, client, Role.admin)

    response = await client.get(QUALITY, params={"min_rows": 5}, headers=admin)

    assert response.status_code == 200, response.text
    report = response.json()
    assert report["passed"] is False
    metrics = tables(report)["device_metrics"]
    assert metrics["rows"] == 13
    assert metrics["target_met"] is True
    assert metrics["null_rates"]["cpu_percent"] == round(1 / 13, 4)
    assert metrics["null_rates"]["memory_percent"] == 0
    assert metrics["out_of_range"] == {
        "cpu_percent outside 0-100": 1,
        "memory_percent outside 0-100": 1,
        "queue_depth negative": 1,
    }
    assert metrics["future_timestamps"] == 1
    assert metrics["duplicates"] == 1
    assert metrics["duplicate_key"] == ["device_id", "timestamp"]
    assert [d["device_id"] for d in metrics["stopped_devices"]] == ["pos-dead"]
    assert metrics["stopped_devices"][0]["site_id"] == site_id
    assert metrics["stopped_devices"][0]["silent_minutes"] >= 120
    assert metrics["freshness_hours"] == 0  # the newest row is in the future
    assert metrics["span_hours"] == 4.0
    assert "has 1 row with cpu_percent outside 0-100" in metrics["problems"]
    assert "has 1 row with timestamp in the future" in metrics["problems"]
    assert "has 1 duplicate event (same device_id, timestamp)" in metrics["problems"]
    jobs = tables(report)["job_outcomes"]
    assert jobs["out_of_range"] == {"duration_ms negative": 1}
    assert "has 1 row (< 5)" in jobs["problems"]
    assert tables(report)["error_logs"]["problems"] == ["has 0 rows (< 5)"]
    assert set(report["failing_tables"]) == set(TABLE_NAMES)


async def test_a_stale_stream_or_a_sparse_required_column_fails_and_config_is_never_stale(
    app: FastAPI, client: AsyncClient
) -> None:
    old = utcnow() - timedelta(days=3)
    rows = clean_rows(7, now=old)
    rows += [metric("pos-2", old - timedelta(hours=1), disk_percent=None)]
    await insert(app.state.settings.database_url, rows)
    admin = await auth_headers(app, client, Role.admin)

    report = (await client.get(QUALITY, params={"min_rows": 7}, headers=admin)).json()

    by_table = tables(report)
    metrics = by_table["device_metrics"]
    assert 72 <= metrics["freshness_hours"] < 73
    stale, sparse = metrics["problems"]
    assert stale.startswith("newest row is 72.")
    assert stale.endswith(" h old (> 24 h)")
    assert sparse == "disk_percent is null in 12.5% of rows (> 5.0%)"
    # Schedules are configuration: their age does not matter.
    schedules = by_table["site_operating_schedules"]
    assert schedules["freshness_hours"] is None
    assert schedules["passed"] is True
    assert report["failing_tables"] == [t for t in TABLE_NAMES if t != "site_operating_schedules"]

    relaxed = await client.get(
        QUALITY,
        params={"min_rows": 7, "max_staleness_hours": 100, "max_null_rate": 0.2},
        headers=admin,
    )
    assert relaxed.json()["passed"] is True


async def test_clean_recent_data_passes_the_gate(app: FastAPI, client: AsyncClient) -> None:
    await insert(app.state.settings.database_url, clean_rows(8))
    admin = await auth_headers(app, client, Role.admin)

    report = (await client.get(QUALITY, params={"min_rows": 8}, headers=admin)).json()

    assert report["passed"] is True, report["failing_tables"]
    assert [t["table"] for t in report["tables"]] == list(TABLE_NAMES)
    assert all(t["rows"] == 8 and t["problems"] == [] for t in report["tables"])
    assert report["thresholds"]["min_rows"] == 8


async def test_quality_is_admin_only_and_refuses_bad_thresholds(
    app: FastAPI, client: AsyncClient
) -> None:
    assert (await client.get(QUALITY)).status_code == 401
    for role in (Role.viewer, Role.operator):
        response = await client.get(QUALITY, headers=await auth_headers(app, client, role))
        assert response.status_code == 403
    admin = await auth_headers(app, client, Role.admin)
    for params in ({"min_rows": -1}, {"max_null_rate": 2}, {"min_row": 5}):
        response = await client.get(QUALITY, params=params, headers=admin)
        assert response.status_code == 422, params
        assert response.json()["detail"][0]["loc"][-1] == next(iter(params))


async def test_a_backfill_passes_even_with_bad_configurations_running_at_its_end(
    database_url: str, tmp_path: Path
) -> None:
    """A rollback due after the history's end is not written into the future."""
    end = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    labels = tmp_path / "labels.csv"
    config = BackfillConfig(
        days=1, sites=2, devices=4, fault_rate=12, seed=3, labels=labels, end=end,
        fault_mix={FaultKind.bad_config_version: 1.0},
    )  # fmt: skip
    engine = create_engine(database_url)
    try:
        await run_backfill(engine, config)
        async with engine.connect() as connection:
            report = await assess_quality(
                connection, Thresholds(min_rows=1), now=end, include_simulated=True
            )
    finally:
        await engine.dispose()

    with labels.open() as file:
        faults = list(csv.DictReader(file))
    unfinished = [
        fault
        for fault in faults
        if fault["fault"] == "bad_config_version" and datetime.fromisoformat(fault["end"]) > end
    ]
    assert unfinished  # the case under test: faults still running when the history ends
    assert report.passed, report.summary()
    assert all(table.future_timestamps == 0 for table in report.tables)


# --- the command -----------------------------------------------------------------------------


def quality(database_url: str, *args: str) -> Result:
    return runner.invoke(
        cli.app, ["--database-url", database_url, "quality", *args], env={"COLUMNS": "200"}
    )


def test_the_command_fails_on_a_fresh_database_naming_every_table(database_url: str) -> None:
    result = quality(database_url)

    assert result.exit_code == 1
    assert "quality gate failed: api_request_logs has 0 rows (< 1,000)" in result.output
    for table in TABLE_NAMES:
        assert f"{table} has 0 rows (< 1,000)" in result.output
        assert table in result.stdout  # the table lists it too


def test_the_command_passes_when_thresholds_are_met_and_fails_naming_the_table(
    database_url: str,
) -> None:
    now = utcnow()
    asyncio.run(insert(database_url, clean_rows(4, now=now)))

    passed = quality(database_url, "--min-rows", "4")
    assert passed.exit_code == 0, passed.output
    assert "FAIL" not in passed.stdout

    asyncio.run(
        insert(database_url, [metric("pos-9", now - timedelta(minutes=30), cpu_percent=101)])
    )
    failed = quality(database_url, "--min-rows", "4")
    assert failed.exit_code == 1
    assert "device_metrics has 1 row with cpu_percent outside 0-100" in failed.output
    assert "error_logs" not in failed.output.split("quality gate failed:")[1]

    as_json = quality(database_url, "--min-rows", "4", "--json")
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["failing_tables"] == ["device_metrics"]


# --- simulated rows ------------------------------------------------------------------------


def simulated(rows: list[Any]) -> list[Any]:
    for row in rows:
        row.source = "simulated"
    return rows


async def test_simulated_rows_are_not_judged_unless_included(
    app: FastAPI, client: AsyncClient
) -> None:
    now = utcnow()
    await insert(app.state.settings.database_url, clean_rows(8, now=now))
    broken = metric("sim-pos-0001", now - timedelta(minutes=3), cpu_percent=150.0)
    await insert(app.state.settings.database_url, simulated([broken]))
    admin = await auth_headers(app, client, Role.admin)

    real = (await client.get(QUALITY, params={"min_rows": 8}, headers=admin)).json()

    assert real["passed"] is True, real["failing_tables"]
    assert tables(real)["device_metrics"]["rows"] == 8
    assert tables(real)["device_metrics"]["simulated_rows_left_out"] == 1
    assert real["simulated_rows_left_out"] == 1
    assert real["provenance_note"].startswith("1 simulated row was left out; pass")

    params = {"min_rows": 8, "include_simulated": "true"}
    everything = (await client.get(QUALITY, params=params, headers=admin)).json()
    assert everything["failing_tables"] == ["device_metrics"]
    assert tables(everything)["device_metrics"]["rows"] == 9
    assert everything["provenance_note"] is None


def test_on_a_demo_database_the_command_says_everything_is_simulated(database_url: str) -> None:
    asyncio.run(insert(database_url, simulated(clean_rows(4))))

    left_out = quality(database_url, "--min-rows", "4")
    assert left_out.exit_code == 1
    assert "Every row is simulated (32 rows" in left_out.stdout
    assert "device_metrics has 0 rows (< 4, not counting 4 simulated)" in left_out.output

    included = quality(database_url, "--min-rows", "4", "--include-simulated")
    assert included.exit_code == 0, included.output
    assert "Every row is simulated" not in included.stdout
