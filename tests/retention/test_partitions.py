"""Time partitions on PostgreSQL: the migration keeps every row, partitions are made ahead,
a late row is stored (and later moved into a partition of its own), retention drops whole
expired partitions and keeps newer rows, and a time-bounded query reads one partition."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from homepot.analytics.models import APIRequestLog, DeviceMetrics, ErrorLog
from homepot.config import Settings
from homepot.db import Base, create_engine, migrations_config, run_migrations
from homepot.device.models import HealthCheck, MessageReceipt
from homepot.retention.partitions import PARTITIONED_BY_NAME, maintain_partitions
from homepot.retention.policy import resolve_policy
from homepot.retention.service import SYSTEM_ACTOR, apply_retention
from tests.conftest import BACKENDS, PG_ADMIN_URL, _pg_admin

BEFORE = "5e2b7c9d1a40"  # the revision before the partitions


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


def only_postgresql(engine: AsyncEngine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite keeps plain tables")


async def add(engine: AsyncEngine, rows: list[Base]) -> None:
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        session.add_all(rows)


def metric(at: datetime, device_id: str = "pos-1") -> DeviceMetrics:
    return DeviceMetrics(device_id=device_id, timestamp=at, cpu_percent=10.0)


async def partition_of(engine: AsyncEngine, table: str, row_id: int) -> str:
    async with engine.connect() as connection:
        return str(
            await connection.scalar(
                text(f"SELECT tableoid::regclass::text FROM {table} WHERE id = :id"),
                {"id": row_id},
            )
        )


async def scalar(engine: AsyncEngine, sql: str) -> object:
    async with engine.connect() as connection:
        return await connection.scalar(text(sql))


# --- the migration -------------------------------------------------------------------------


async def _fill_old_schema(url: str, days: list[datetime]) -> dict[str, int]:
    """Rows in the five tables as they were before the partitions; their counts."""
    engine = create_engine(url)
    inserts = {
        "device_metrics": "INSERT INTO device_metrics (event_id, timestamp, device_id, "
        "cpu_percent, source) VALUES (:e, :t, 'pos-1', 12.5, 'device')",
        "api_request_logs": "INSERT INTO api_request_logs (event_id, timestamp, endpoint, "
        "method, status_code, response_time_ms, request_size_bytes, response_size_bytes, "
        "source) VALUES (:e, :t, '/api/v1/sites', 'GET', 200, 3.5, 0, 0, 'device')",
        "user_activities": "INSERT INTO user_activities (event_id, timestamp, activity_type, "
        "source) VALUES (:e, :t, 'click', 'device')",
        "error_logs": "INSERT INTO error_logs (event_id, timestamp, category, severity, "
        "error_message, resolved, source) VALUES (:e, :t, 'api', 'error', 'm', false, 'device')",
        "health_checks": "INSERT INTO health_checks (device_id, timestamp, status) "
        "VALUES ('pos-1', :t, 'healthy')",
    }
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO sites (site_id, name, timezone, config, created_at, updated_at) "
                "VALUES ('store-1', 'Store', 'UTC', '{}', :t, :t)"
            ),
            {"t": days[0]},
        )
        await connection.execute(
            text(
                "INSERT INTO devices (device_id, site_id, name, device_type, status, config, "
                "created_at, updated_at) VALUES ('pos-1', 'store-1', 'Till', 'pos_terminal', "
                "'online', '{}', :t, :t)"
            ),
            {"t": days[0]},
        )
        for statement in inserts.values():
            for day in days:
                for minute in range(3):
                    moment = day + timedelta(minutes=minute)
                    await connection.execute(text(statement), {"e": uuid.uuid4().hex, "t": moment})
    await engine.dispose()
    return {table: len(days) * 3 for table in inserts}


_IS_PARTITIONED = (
    "SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c "
    "ON c.oid = p.partrelid WHERE c.relname = '{table}'"
)


@contextlib.asynccontextmanager
async def throwaway_postgresql() -> AsyncIterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    name = f"homepot_partitions_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(_pg_admin, f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        await asyncio.to_thread(_pg_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="PostgreSQL is not tested")
async def test_the_migration_converts_a_populated_database_keeping_every_row() -> None:
    async with throwaway_postgresql() as url:
        run_migrations(url, BEFORE)
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        days = [now - timedelta(days=40), now - timedelta(days=3), now - timedelta(hours=1)]
        counts = await _fill_old_schema(url, days)
        engine = create_engine(url)
        ids_before = {
            table: await scalar(engine, f"SELECT array_agg(id ORDER BY id) FROM {table}")
            for table in counts
        }

        run_migrations(url)

        for table, count in counts.items():
            assert await scalar(engine, f"SELECT count(*) FROM {table}") == count
            assert (
                await scalar(engine, f"SELECT array_agg(id ORDER BY id) FROM {table}")
                == ids_before[table]
            )
            assert table in PARTITIONED_BY_NAME
            assert await scalar(engine, _IS_PARTITIONED.format(table=table)) == 1
            # Every row sits in a partition of its period; none in the default one.
            assert await scalar(engine, f"SELECT count(*) FROM {table}_default") == 0
        old_day = PARTITIONED_BY_NAME["device_metrics"].start_of(days[0])
        assert await scalar(engine, f"SELECT count(*) FROM device_metrics_p{old_day:%Y%m%d}") == 3
        old_week = PARTITIONED_BY_NAME["error_logs"].start_of(days[0])
        assert await scalar(engine, f"SELECT count(*) FROM error_logs_p{old_week:%Y%m%d}") == 3
        # The rows of the last 8 days that carry an event id got their receipts (a message
        # delivered again right after the upgrade is still recognised): error_logs' 6.
        assert await scalar(engine, "SELECT count(*) FROM message_receipts") == 6
        # ... in daily partitions of their own (6c1e8b3f5a27), none in the default one.
        assert await scalar(engine, _IS_PARTITIONED.format(table="message_receipts")) == 1
        assert await scalar(engine, "SELECT count(*) FROM message_receipts_default") == 0
        # Ids go on from where they were; the foreign key of health_checks still holds.
        async with engine.begin() as connection:
            new_id = await connection.scalar(
                text(
                    "INSERT INTO device_metrics (event_id, timestamp, device_id, source) "
                    "VALUES ('new', now(), 'pos-1', 'device') RETURNING id"
                )
            )
            await connection.execute(text("DELETE FROM devices"))
        assert new_id > max(ids_before["device_metrics"])  # type: ignore[arg-type]
        assert await scalar(engine, "SELECT count(*) FROM health_checks") == 0
        await engine.dispose()


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="PostgreSQL is not tested")
async def test_receipts_go_back_to_a_plain_table_and_into_partitions_again() -> None:
    async with throwaway_postgresql() as url:
        run_migrations(url)
        engine = create_engine(url)
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        receipts = [
            ("a", midnight - timedelta(days=2)),
            ("b", midnight - timedelta(seconds=1)),
            # The one duplicate partitions can hold: two deliveries in flight at midnight.
            ("b", midnight + timedelta(seconds=1)),
            ("c", midnight + timedelta(hours=1)),
        ]
        async with engine.begin() as connection:
            await connection.execute(
                text("INSERT INTO message_receipts (event_id, received_at) VALUES (:e, :t)"),
                [{"e": event_id, "t": at} for event_id, at in receipts],
            )
        await engine.dispose()

        # Down to the revision before 6c1e8b3f5a27 (env.py runs a loop of its own: a thread).
        await asyncio.to_thread(command.downgrade, migrations_config(url), "f1c7d3e9a2b6")

        engine = create_engine(url)
        assert await scalar(engine, _IS_PARTITIONED.format(table="message_receipts")) == 0
        plain = await scalar(
            engine, "SELECT array_agg(event_id ORDER BY event_id) FROM message_receipts"
        )
        assert plain == ["a", "b", "c"]  # one receipt an id: the latest
        assert await scalar(
            engine, "SELECT received_at FROM message_receipts WHERE event_id = 'b'"
        ) == midnight + timedelta(seconds=1)
        await engine.dispose()

        run_migrations(url)

        engine = create_engine(url)
        assert await scalar(engine, _IS_PARTITIONED.format(table="message_receipts")) == 1
        assert await scalar(engine, "SELECT count(*) FROM message_receipts") == 3
        assert await scalar(engine, "SELECT count(*) FROM message_receipts_default") == 0
        assert (
            await scalar(
                engine,
                f"SELECT count(*) FROM message_receipts_p{midnight - timedelta(days=2):%Y%m%d}",
            )
            == 1
        )
        await engine.dispose()


@pytest.mark.skipif("sqlite" not in BACKENDS, reason="SQLite is not tested")
async def test_on_sqlite_the_migration_keeps_plain_tables_and_every_row(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/old.db"
    run_migrations(url, BEFORE)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    counts = await _fill_old_schema(url, [now - timedelta(days=2), now])

    run_migrations(url)

    engine = create_engine(url)
    for table, count in counts.items():
        assert await scalar(engine, f"SELECT count(*) FROM {table}") == count
    # One event, one row: the same event_id and timestamp is stored once.
    row = {"device_id": "pos-1", "timestamp": now, "event_id": "same"}
    await add(engine, [DeviceMetrics(**row)])
    with pytest.raises(Exception, match="UNIQUE"):
        await add(engine, [DeviceMetrics(**row)])
    await engine.dispose()


# --- created ahead, late rows ----------------------------------------------------------------


async def test_partitions_are_created_ahead(engine: AsyncEngine) -> None:
    only_postgresql(engine)
    now = datetime(2031, 3, 5, 13, 0, tzinfo=UTC)  # a Wednesday

    report = await maintain_partitions(engine, now)

    for day in ("20310305", "20310306", "20310307", "20310308"):
        assert f"device_metrics_p{day}" in report.created
        assert f"api_request_logs_p{day}" in report.created
        assert f"health_checks_p{day}" in report.created
        assert f"message_receipts_p{day}" in report.created
    # Weekly tables: the week holding now (from Monday) and the two after it.
    for week in ("20310303", "20310310", "20310317"):
        assert f"user_activities_p{week}" in report.created
        assert f"error_logs_p{week}" in report.created
    assert (await maintain_partitions(engine, now)).created == ()


async def test_a_row_without_a_partition_is_stored_and_later_moved_into_one(
    engine: AsyncEngine,
) -> None:
    only_postgresql(engine)
    late = datetime(2024, 2, 10, 8, 30, tzinfo=UTC)
    row = metric(late)
    await add(engine, [row])
    assert await partition_of(engine, "device_metrics", row.id) == "device_metrics_default"

    await maintain_partitions(engine, datetime.now(UTC))

    assert await partition_of(engine, "device_metrics", row.id) == "device_metrics_p20240210"
    assert await scalar(engine, "SELECT count(*) FROM device_metrics_default") == 0


# --- retention -------------------------------------------------------------------------------


async def test_retention_drops_expired_partitions_and_keeps_newer_rows(
    engine: AsyncEngine, settings: Settings
) -> None:
    only_postgresql(engine)
    as_of = datetime(2024, 9, 20, 12, 0, tzinfo=UTC)
    expired = [metric(as_of - timedelta(days=95, hours=h)) for h in range(3)]
    straddling_old = metric(as_of - timedelta(days=90, minutes=5))
    straddling_new = metric(as_of - timedelta(days=89, hours=23))
    recent = metric(as_of - timedelta(days=1))
    await add(engine, [*expired, straddling_old, straddling_new, recent])
    await maintain_partitions(engine, as_of)  # the late rows move into their days
    expired_partition = await partition_of(engine, "device_metrics", expired[0].id)

    dry = await apply_retention(
        engine,
        resolve_policy(settings),
        actor=SYSTEM_ACTOR,
        batch_size=100,
        dry_run=True,
        as_of=as_of,
    )
    report = await apply_retention(
        engine, resolve_policy(settings), actor=SYSTEM_ACTOR, batch_size=100, as_of=as_of
    )

    outcome = {o.table: o for o in report.outcomes}["device_metrics"]
    assert expired_partition in outcome.partitions
    assert outcome.rows == 4 == {o.table: o for o in dry.outcomes}["device_metrics"].rows
    assert outcome.batches == 1  # the straddling day's old row, deleted as a row
    assert await scalar(engine, f"SELECT to_regclass('{expired_partition}')") is None
    remaining = await scalar(engine, "SELECT array_agg(id ORDER BY id) FROM device_metrics")
    assert remaining == [straddling_new.id, recent.id]


async def a_device(engine: AsyncEngine, at: datetime) -> str:
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO sites (site_id, name, timezone, config, created_at, updated_at) "
                "VALUES ('store-1', 'Store', 'UTC', '{}', :t, :t)"
            ),
            {"t": at},
        )
        await connection.execute(
            text(
                "INSERT INTO devices (device_id, site_id, name, device_type, status, config, "
                "created_at, updated_at, simulated) VALUES ('pos-1', 'store-1', 'Till', "
                "'pos_terminal', 'online', '{}', :t, :t, false)"
            ),
            {"t": at},
        )
    return "pos-1"


async def test_retention_drops_whole_partitions_of_health_checks_and_error_logs(
    engine: AsyncEngine, settings: Settings
) -> None:
    only_postgresql(engine)
    as_of = datetime(2024, 9, 20, 12, 0, tzinfo=UTC)  # a Friday
    device_id = await a_device(engine, as_of - timedelta(days=200))
    old = as_of - timedelta(days=100)  # a whole day and a whole week older than 90 days
    recent = as_of - timedelta(days=2)

    def check(at: datetime) -> HealthCheck:
        return HealthCheck(device_id=device_id, timestamp=at, status="ok", event_id=None)

    def error(at: datetime) -> ErrorLog:
        return ErrorLog(timestamp=at, category="api", severity="error", error_message="m")

    checks = [check(old), check(old + timedelta(hours=3)), check(recent)]
    errors = [error(old), error(old + timedelta(days=1)), error(recent)]
    await add(engine, [*checks, *errors])
    await maintain_partitions(engine, as_of)  # the old rows move into their periods
    check_partition = await partition_of(engine, "health_checks", checks[0].id)
    error_partition = await partition_of(engine, "error_logs", errors[0].id)
    assert check_partition == f"health_checks_p{old:%Y%m%d}"
    old_week = PARTITIONED_BY_NAME["error_logs"].start_of(old)
    assert error_partition == f"error_logs_p{old_week:%Y%m%d}"

    report = await apply_retention(
        engine, resolve_policy(settings), actor=SYSTEM_ACTOR, batch_size=100, as_of=as_of
    )

    outcomes = {o.table: o for o in report.outcomes}
    assert outcomes["health_checks"].partitions == (check_partition,)
    assert outcomes["error_logs"].partitions == (error_partition,)
    # Whole partitions, no row-by-row delete.
    assert (outcomes["health_checks"].rows, outcomes["health_checks"].batches) == (2, 0)
    assert (outcomes["error_logs"].rows, outcomes["error_logs"].batches) == (2, 0)
    for name in (check_partition, error_partition):
        assert await scalar(engine, f"SELECT to_regclass('{name}')") is None
    assert await scalar(engine, "SELECT array_agg(id) FROM health_checks") == [checks[2].id]
    assert await scalar(engine, "SELECT array_agg(id) FROM error_logs") == [errors[2].id]


async def test_retention_drops_whole_days_of_receipts(
    engine: AsyncEngine, settings: Settings
) -> None:
    only_postgresql(engine)
    as_of = datetime(2024, 9, 20, 12, 0, tzinfo=UTC)
    old = as_of - timedelta(days=10)
    await add(
        engine,
        [
            MessageReceipt(event_id="old-1", received_at=old),
            MessageReceipt(event_id="old-2", received_at=old + timedelta(hours=2)),
            MessageReceipt(event_id="new", received_at=as_of - timedelta(days=1)),
        ],
    )
    await maintain_partitions(engine, as_of)  # the late receipts move into their days
    old_partition = f"message_receipts_p{old:%Y%m%d}"
    assert await scalar(engine, f"SELECT count(*) FROM {old_partition}") == 2

    report = await apply_retention(
        engine, resolve_policy(settings), actor=SYSTEM_ACTOR, batch_size=100, as_of=as_of
    )

    outcome = {o.table: o for o in report.outcomes}["message_receipts"]
    assert (outcome.partitions, outcome.rows, outcome.batches) == ((old_partition,), 2, 0)
    assert await scalar(engine, f"SELECT to_regclass('{old_partition}')") is None
    assert await scalar(engine, "SELECT array_agg(event_id) FROM message_receipts") == ["new"]


async def test_receipts_are_kept_eight_days_whatever_the_retention(
    engine: AsyncEngine, settings: Settings
) -> None:
    as_of = datetime(2024, 9, 20, 12, 0, tzinfo=UTC)
    await add(
        engine,
        [
            MessageReceipt(event_id="old", received_at=as_of - timedelta(days=8, minutes=1)),
            MessageReceipt(event_id="new", received_at=as_of - timedelta(days=7, hours=23)),
        ],
    )

    await apply_retention(
        engine, resolve_policy(settings), actor=SYSTEM_ACTOR, batch_size=100, as_of=as_of
    )

    assert await scalar(engine, "SELECT event_id FROM message_receipts") == "new"
    assert await scalar(engine, "SELECT count(*) FROM message_receipts") == 1


# --- pruning -------------------------------------------------------------------------------


async def test_a_time_bounded_query_reads_only_its_partitions(engine: AsyncEngine) -> None:
    only_postgresql(engine)
    now = datetime.now(UTC)
    await maintain_partitions(engine, now)
    day = PARTITIONED_BY_NAME["api_request_logs"].start_of(now)
    await add(
        engine,
        [
            APIRequestLog(
                endpoint="/x", method="GET", status_code=200, response_time_ms=1.0, timestamp=now
            )
        ],
    )
    async with engine.connect() as connection:
        plan = "\n".join(
            (
                await connection.scalars(
                    text(
                        "EXPLAIN SELECT * FROM api_request_logs "
                        f"WHERE timestamp >= '{day.isoformat()}' "
                        f"AND timestamp < '{(day + timedelta(hours=6)).isoformat()}' "
                        "ORDER BY timestamp DESC LIMIT 50"
                    )
                )
            ).all()
        )
    assert f"api_request_logs_p{day:%Y%m%d}" in plan
    next_day = day + timedelta(days=1)
    assert f"api_request_logs_p{next_day:%Y%m%d}" not in plan
    assert "api_request_logs_default" not in plan
