"""Retention: old rows go in batches, recent ones and configuration stay, a dry run counts
exactly what a run deletes, one runner at a time, and every run leaves an audit row."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from typer.testing import CliRunner, Result

from homepot import cli
from homepot.analytics.models import APIRequestLog, DeviceMetrics, SiteOperatingSchedule
from homepot.audit.models import AuditLog
from homepot.config import RetentionSettings, Settings
from homepot.db import Base, create_engine
from homepot.device.models import Device, HealthCheck
from homepot.main import create_app
from homepot.retention.policy import RetentionPolicyError, parse_overrides, resolve_policy
from homepot.retention.service import (
    ADVISORY_LOCK_KEY,
    SYSTEM_ACTOR,
    RetentionReport,
    apply_retention,
)
from homepot.site.models import Site

AS_OF = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
runner = CliRunner()


def ago(days: float, as_of: datetime = AS_OF) -> datetime:
    return as_of - timedelta(days=days)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def add(engine: AsyncEngine, rows: list[Base]) -> None:
    async with AsyncSession(engine) as session, session.begin():
        session.add_all(rows)


def metric(at: datetime, device_id: str = "pos-1") -> DeviceMetrics:
    return DeviceMetrics(device_id=device_id, timestamp=at, cpu_percent=10.0)


def request_log(at: datetime) -> APIRequestLog:
    return APIRequestLog(
        endpoint="/api/v1/sites", method="GET", status_code=200, response_time_ms=3.0, timestamp=at
    )


def audit(at: datetime) -> AuditLog:
    return AuditLog(timestamp=at, user_id="u1", action="site.create", resource_type="site")


def schedule(site_id: str, day: int, updated: datetime) -> SiteOperatingSchedule:
    return SiteOperatingSchedule(
        site_id=site_id,
        day_of_week=day,
        open_time=time(8),
        close_time=time(20),
        created_at=updated,
        updated_at=updated,
    )


async def add_device_with_health_checks(engine: AsyncEngine, times: list[datetime]) -> None:
    await add(engine, [Site(site_id="store-1", name="Store", timezone="UTC", config={})])
    await add(
        engine,
        [Device(device_id="pos-1", site_id="store-1", name="Till", device_type="pos", config={})],
    )
    await add(
        engine, [HealthCheck(device_id="pos-1", timestamp=at, status="healthy") for at in times]
    )


async def times_of(engine: AsyncEngine, model: type[Any], column: str = "timestamp") -> list[Any]:
    async with AsyncSession(engine) as session:
        return sorted(await session.scalars(select(getattr(model, column))))


async def count(engine: AsyncEngine, model: type[Any]) -> int:
    async with AsyncSession(engine) as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def retention_audits(engine: AsyncEngine) -> list[AuditLog]:
    async with AsyncSession(engine) as session:
        return list(
            await session.scalars(
                select(AuditLog).where(AuditLog.action == "retention.run").order_by(AuditLog.id)
            )
        )


async def site_creations(engine: AsyncEngine) -> list[datetime]:
    async with AsyncSession(engine) as session:
        query = select(AuditLog.timestamp).where(AuditLog.action == "site.create")
        return sorted(await session.scalars(query))


def rows_by_table(report: RetentionReport) -> dict[str, int]:
    return {outcome.table: outcome.rows for outcome in report.outcomes}


async def prune(engine: AsyncEngine, settings: Settings, **options: Any) -> RetentionReport:
    options.setdefault("as_of", AS_OF)
    options.setdefault("batch_size", settings.retention.batch_size)
    return await apply_retention(engine, resolve_policy(settings), actor=SYSTEM_ACTOR, **options)


# --- what goes and what stays --------------------------------------------------------------


async def test_rows_older_than_the_period_go_and_newer_ones_stay(
    engine: AsyncEngine, settings: Settings
) -> None:
    await add(engine, [metric(ago(d)) for d in (400, 91, 90.01, 89.99, 1)])
    await add(engine, [request_log(ago(d)) for d in (100, 5)])
    await add(engine, [audit(ago(d)) for d in (366, 364, 100)])
    await add(engine, [schedule("store-9", day, ago(2000)) for day in range(7)])
    await add_device_with_health_checks(engine, [ago(120), ago(30)])

    report = await prune(engine, settings)

    assert await times_of(engine, DeviceMetrics) == [ago(89.99), ago(1)]
    assert await times_of(engine, APIRequestLog) == [ago(5)]
    assert await times_of(engine, HealthCheck) == [ago(30)]
    # The access record keeps a year; schedules are configuration and stay however old.
    assert await site_creations(engine) == [ago(364), ago(100)]
    assert await count(engine, SiteOperatingSchedule) == 7
    deleted = rows_by_table(report)
    assert deleted["device_metrics"] == 3
    assert deleted["api_request_logs"] == 1
    assert deleted["health_checks"] == 1
    assert deleted["audit_logs"] == 1
    assert deleted["site_operating_schedules"] == 0
    assert report.total_rows == 6


async def test_a_row_exactly_at_the_cutoff_stays(engine: AsyncEngine, settings: Settings) -> None:
    await add(engine, [metric(ago(90)), metric(ago(90) - timedelta(microseconds=1))])
    await prune(engine, settings)
    assert await times_of(engine, DeviceMetrics) == [ago(90)]


async def test_retention_days_sets_the_default_and_tables_override_it(
    engine: AsyncEngine, settings: Settings
) -> None:
    settings = settings.model_copy(
        update={
            "retention_days": 2,
            "retention": RetentionSettings(tables={"api_request_logs": None, "health_checks": 10}),
        }
    )
    await add(engine, [metric(ago(d)) for d in (5, 3, 1)])
    await add(engine, [request_log(ago(d)) for d in (900, 5)])
    await add_device_with_health_checks(engine, [ago(11), ago(5)])

    report = await prune(engine, settings)

    assert await times_of(engine, DeviceMetrics) == [ago(1)]
    assert len(await times_of(engine, APIRequestLog)) == 2  # kept forever
    assert await times_of(engine, HealthCheck) == [ago(5)]
    days = {outcome.table: outcome.days for outcome in report.outcomes}
    assert days["device_metrics"] == 2
    assert days["api_request_logs"] is None
    assert days["health_checks"] == 10
    assert days["audit_logs"] == 365  # at least a year, whatever the default


def test_the_policy_refuses_unknown_tables_and_dated_schedules(settings: Settings) -> None:
    bad = settings.model_copy(update={"retention": RetentionSettings(tables={"device_metric": 3})})
    with pytest.raises(RetentionPolicyError, match="'device_metric' is not a table"):
        resolve_policy(bad)
    with pytest.raises(RetentionPolicyError, match="configuration, not events"):
        resolve_policy(settings, parse_overrides(["site_operating_schedules=30"]))
    with pytest.raises(RetentionPolicyError, match="NAME=DAYS"):
        parse_overrides(["device_metrics"])
    with pytest.raises(RetentionPolicyError, match="at least 1 day"):
        parse_overrides(["device_metrics=0"])
    overrides = parse_overrides(["device_metrics=7", "audit_logs=forever"])
    assert overrides == {"device_metrics": 7, "audit_logs": None}
    policy = {p.name: (p.days, p.source) for p in resolve_policy(settings, overrides)}
    assert policy["device_metrics"] == (7, "command line")
    assert policy["audit_logs"] == (None, "command line")
    assert policy["site_operating_schedules"] == (None, "table default")


async def test_a_bad_table_setting_stops_the_server_at_start(settings: Settings) -> None:
    bad = settings.model_copy(update={"retention": RetentionSettings(tables={"sites": 30})})
    with pytest.raises(RetentionPolicyError, match="'sites' is not a table"):
        async with LifespanManager(create_app(bad)):
            pass


# --- dry run, batches, one runner ------------------------------------------------------------


async def test_a_dry_run_deletes_nothing_and_counts_exactly_what_the_run_deletes(
    engine: AsyncEngine, settings: Settings
) -> None:
    settings = settings.model_copy(update={"retention_days": 2})
    await add(engine, [metric(ago(d / 4)) for d in range(0, 20)])  # every 6 h over 5 days
    await add(engine, [request_log(ago(d / 3)) for d in range(0, 15)])
    before = await count(engine, DeviceMetrics), await count(engine, APIRequestLog)

    dry = await prune(engine, settings, dry_run=True)

    assert (await count(engine, DeviceMetrics), await count(engine, APIRequestLog)) == before
    assert rows_by_table(dry)["device_metrics"] == 11  # 2.25 ... 4.75 days old
    assert rows_by_table(dry)["api_request_logs"] == 8  # 2.33 ... 4.67 days old

    real = await prune(engine, settings)

    assert rows_by_table(real) == rows_by_table(dry)
    assert await count(engine, DeviceMetrics) == before[0] - 11
    assert await count(engine, APIRequestLog) == before[1] - 8
    audits = await retention_audits(engine)
    assert [a.details["dry_run"] for a in audits if a.details] == [True, False]


async def test_deletes_go_in_batches_until_every_old_row_is_gone(
    engine: AsyncEngine, settings: Settings
) -> None:
    await add(engine, [metric(ago(100 + i)) for i in range(30)] + [metric(ago(1))])
    await add(engine, [request_log(ago(200)) for _ in range(14)])

    report = await prune(engine, settings, batch_size=7)

    outcomes = {outcome.table: outcome for outcome in report.outcomes}
    assert (outcomes["device_metrics"].rows, outcomes["device_metrics"].batches) == (30, 5)
    assert (outcomes["api_request_logs"].rows, outcomes["api_request_logs"].batches) == (14, 2)
    assert await times_of(engine, DeviceMetrics) == [ago(1)]
    assert await count(engine, APIRequestLog) == 0


async def test_a_second_runner_skips_while_another_holds_the_lock(
    engine: AsyncEngine, settings: Settings, backend: str
) -> None:
    await add(engine, [metric(ago(100)) for _ in range(5)])
    if backend == "postgresql":
        # Another process's run: the advisory lock held by a different database session.
        async with engine.connect() as other:
            await other.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            skipped = await prune(engine, settings)
            await other.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
            await other.commit()
        assert skipped.skipped is not None
        assert "another retention run" in skipped.skipped
        assert skipped.outcomes == ()
        assert await count(engine, DeviceMetrics) == 5
        assert await retention_audits(engine) == []
        after = await prune(engine, settings)
        assert after.skipped is None
        assert rows_by_table(after)["device_metrics"] == 5
    else:
        first, second = await asyncio.gather(prune(engine, settings), prune(engine, settings))
        assert first.skipped is None
        assert second.skipped is not None
        assert rows_by_table(first)["device_metrics"] == 5
        assert len(await retention_audits(engine)) == 1
    assert await count(engine, DeviceMetrics) == 0


# --- audit rows and the server's task ------------------------------------------------------


async def test_each_run_leaves_one_audit_row_with_its_counts(
    engine: AsyncEngine, settings: Settings
) -> None:
    await add(engine, [metric(ago(100)), metric(ago(1))])

    await prune(engine, settings, context={"trigger": "test"})

    [entry] = await retention_audits(engine)
    assert entry.user_id == "system"
    assert entry.resource_type == "retention"
    assert entry.details is not None
    assert entry.details["dry_run"] is False
    assert entry.details["trigger"] == "test"
    assert entry.details["as_of"] == AS_OF.isoformat()
    assert entry.details["tables"]["device_metrics"] == {
        "days": 90,
        "cutoff": ago(90).isoformat(),
        "rows": 1,
        "batches": 1,
        "partitions_dropped": [],
    }
    assert entry.details["tables"]["site_operating_schedules"]["days"] is None


async def test_the_server_prunes_on_its_interval(settings: Settings, engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    await add(engine, [metric(now - timedelta(days=100)), metric(now - timedelta(hours=1))])
    settings = settings.model_copy(
        update={"retention": RetentionSettings(interval_seconds=0.05, batch_size=1)}
    )
    app = create_app(settings)
    async with LifespanManager(app):
        for _ in range(200):
            if await count(engine, DeviceMetrics) == 1:
                break
            await asyncio.sleep(0.05)
    assert await count(engine, DeviceMetrics) == 1
    audits = await retention_audits(engine)
    assert audits
    assert audits[0].user_id == "system"
    assert audits[0].details is not None
    assert audits[0].details["trigger"] == "server"


async def test_a_disabled_server_task_prunes_nothing(
    settings: Settings, engine: AsyncEngine
) -> None:
    await add(engine, [metric(datetime.now(UTC) - timedelta(days=100))])
    settings = settings.model_copy(
        update={"retention": RetentionSettings(enabled=False, interval_seconds=0.01)}
    )
    async with LifespanManager(create_app(settings)):
        await asyncio.sleep(0.2)
    assert await count(engine, DeviceMetrics) == 1


# --- the command line ----------------------------------------------------------------------


def homepot(database_url: str, *args: str, **env: str) -> Result:
    return runner.invoke(
        cli.app, ["--database-url", database_url, *args], env={"COLUMNS": "200", **env}
    )


def seed_five_days(database_url: str, now: datetime) -> None:
    async def seed() -> None:
        engine = create_engine(database_url)
        try:
            await add(engine, [metric(now - timedelta(hours=h)) for h in range(0, 120, 6)])
            await add(
                engine, [schedule("store-1", day, now - timedelta(days=30)) for day in (0, 1)]
            )
        finally:
            await engine.dispose()

    asyncio.run(seed())


def stored(database_url: str) -> dict[str, int]:
    result = homepot(database_url, "db", "count", "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_cli_dry_run_then_run_with_a_two_day_setting(database_url: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    seed_five_days(database_url, now)
    as_of = now.isoformat()

    dry = homepot(
        database_url, "retention", "run", "--dry-run", "--as-of", as_of, HOMEPOT_RETENTION_DAYS="2"
    )

    assert dry.exit_code == 0, dry.output
    assert "Dry run as of" in dry.stdout
    assert "nothing deleted" in dry.stdout
    line = next(line for line in dry.stdout.splitlines() if "device_metrics" in line)
    assert "2 days" in line
    assert line.rstrip(" │").endswith(" 11")  # 54 ... 114 hours old
    assert stored(database_url)["device_metrics"] == 20

    real = homepot(
        database_url, "retention", "run", "--as-of", as_of, "--json", HOMEPOT_RETENTION_DAYS="2"
    )

    assert real.exit_code == 0, real.output
    report = json.loads(real.stdout)
    assert report["dry_run"] is False
    assert report["tables"]["device_metrics"]["rows"] == 11
    assert report["tables"]["site_operating_schedules"]["rows"] == 0
    counts = stored(database_url)
    assert counts["device_metrics"] == 9
    assert counts["site_operating_schedules"] == 2
    # The two runs are on the access record, with who started them.
    audits = json.loads(
        homepot(database_url, "db", "show", "audit_logs", "--json", "--limit", "10").stdout
    )
    runs = [a for a in audits if a["action"] == "retention.run"]
    assert len(runs) == 2
    assert all(run["user_id"].startswith("cli:") for run in runs)
    assert all(run["details"]["trigger"] == "cli" for run in runs)


def test_cli_table_overrides_and_show(database_url: str) -> None:
    now = datetime.now(UTC)
    seed_five_days(database_url, now)

    show = homepot(
        database_url,
        *("retention", "show", "--table", "audit_logs=forever"),
        HOMEPOT_RETENTION__TABLES='{"device_metrics": 30}',
    )
    assert show.exit_code == 0, show.output
    lines = {line.split("│")[1].strip(): line for line in show.stdout.splitlines() if "│" in line}
    assert "30 days" in lines["device_metrics"]
    assert "settings" in lines["device_metrics"]
    assert "forever" in lines["audit_logs"]
    assert "command line" in lines["audit_logs"]
    assert "90 days" in lines["error_logs"]
    assert "forever" in lines["site_operating_schedules"]

    run = homepot(database_url, "retention", "run", "--table", "device_metrics=1", "--json")
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["tables"]["device_metrics"]["days"] == 1
    assert stored(database_url)["device_metrics"] == 4  # 0, 6, 12 and 18 hours old


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--table", "device_metrics"], "expected NAME=DAYS"),
        (["--table", "device_metrics=soon"], "neither a whole number of days"),
        (["--table", "devices=30"], "'devices' is not a table with a retention period"),
        (["--table", "site_operating_schedules=30"], "only 'forever' is accepted"),
        (["--as-of", "yesterday"], "--as-of"),
        (["--as-of", "2999-01-01"], "is in the future"),
    ],
)
def test_cli_refuses_bad_arguments_with_exit_2(
    database_url: str, arguments: list[str], message: str
) -> None:
    result = homepot(database_url, "retention", "run", *arguments)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
