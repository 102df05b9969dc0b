"""Time partitions on PostgreSQL: the plan, creating them ahead, dropping whole expired ones.

The high-volume tables are range-partitioned by their time column with native PostgreSQL
partitioning (the migrations 20261201_e4d2c9a1b7f3 and 20261201_b8f4a2d6e1c5 convert
them); SQLite keeps plain tables and nothing here runs on it. The period follows the
volume (5,000 terminals at a 30 s interval write ~14 M device_metrics rows a day):

- daily: ``device_metrics``, ``api_request_logs`` and ``health_checks`` (each row a
  sample, a request or a heartbeat: millions a day at fleet scale), and the minute rollups
  (``device_metrics_minute``, ``api_request_minute``: one row per device or route a minute),
  and ``message_receipts`` (by ``received_at``: a receipt per heartbeat, kept 8 days);
- weekly: ``user_activities`` (people: thousands a day) and ``error_logs`` (errors: a few
  per terminal a day), so that a 90-day retention keeps ~13 partitions of them instead of
  90 small ones.

Their unique keys hold the timestamp, ``(event_id, timestamp)``. A heartbeat, and a device's
error report naming no time of its own, is stamped by the server when it arrives, so a
redelivered one has another timestamp and that key would store it twice: the message's
receipt (``message_receipts``, homepot.fleet.receipts) keeps it out instead (migration
20261201_b8f4a2d6e1c5). The receipts are as many as the heartbeats and kept 8 days, so they
are daily partitions by ``received_at`` too (migration 20261202_6c1e8b3f5a27): each partition
holds an event id at most once (its own unique index on ``event_id``), and a receipt is filed
under the message's own time when its id carries one (homepot.fleet.receipts).

Every table also has a ``<table>_default`` partition, so that a row no partition covers (a
terminal replaying last month's buffered telemetry, a backfill of history, a clock far in
the future) is stored, never refused. The maintenance pass moves such rows into a partition
of their own period (created for them), so that the default partition stays nearly empty
and retention can drop their period whole later.

Retention drops a partition whose whole range is older than the cutoff (``DROP TABLE``: no
row-by-row delete, no bloat); rows older than the cutoff in the partition that straddles it,
and in the default partition, are still deleted row by row (homepot.retention.service).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

logger = logging.getLogger(__name__)

Period = Literal["day", "week"]

# Serializes partition changes between processes (and with retention's drops).
PARTITION_LOCK_KEY: Final = int.from_bytes(b"HOMEPOTP", "big")
# A DDL statement waits at most this long for the table lock (busy readers), then the pass
# gives up on that partition and the next pass tries again.
LOCK_TIMEOUT: Final = "5s"


@dataclass(frozen=True)
class PartitionedTable:
    name: str
    period: Period
    column: str = "timestamp"
    # Periods created ahead of the current one.
    ahead: int = 3
    # Columns unique within each partition (PostgreSQL has no unique key over all of them
    # without the partition column): each partition, the default one too, gets its own index.
    unique_in_partition: tuple[str, ...] = ()

    def unique_index(self, partition: str) -> str | None:
        """The statement creating ``partition``'s own unique index, if the table has one."""
        if not self.unique_in_partition:
            return None
        columns = ", ".join(f'"{c}"' for c in self.unique_in_partition)
        key = "_".join(self.unique_in_partition)
        return f"CREATE UNIQUE INDEX {partition}_{key}_key ON {partition} ({columns})"

    @property
    def default_partition(self) -> str:
        return f"{self.name}_default"

    def start_of(self, moment: datetime) -> datetime:
        """The start of the period holding ``moment`` (UTC midnight; Monday for weeks)."""
        moment = moment.astimezone(UTC)
        day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return day - timedelta(days=day.weekday()) if self.period == "week" else day

    def length(self) -> timedelta:
        return timedelta(days=7 if self.period == "week" else 1)

    def partition_name(self, start: datetime) -> str:
        return f"{self.name}_p{start:%Y%m%d}"

    def wanted(self, now: datetime) -> list[datetime]:
        """The starts of the current period and the ``ahead`` periods after it."""
        first = self.start_of(now)
        return [first + i * self.length() for i in range(self.ahead + 1)]


PARTITIONED_TABLES: Final[tuple[PartitionedTable, ...]] = (
    PartitionedTable("device_metrics", "day"),
    PartitionedTable("api_request_logs", "day"),
    PartitionedTable("user_activities", "week", ahead=2),
    PartitionedTable("health_checks", "day"),
    PartitionedTable("error_logs", "week", ahead=2),
    PartitionedTable("device_metrics_minute", "day", column="bucket"),
    PartitionedTable("api_request_minute", "day", column="bucket"),
    PartitionedTable(
        "message_receipts", "day", column="received_at", unique_in_partition=("event_id",)
    ),
)
PARTITIONED_BY_NAME: Final = {table.name: table for table in PARTITIONED_TABLES}


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime
    end: datetime


_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


def _parse_bound(value: str) -> datetime:
    # pg_get_expr prints timestamptz bounds in the session's time zone, set to UTC below.
    return datetime.fromisoformat(value).astimezone(UTC)


async def is_partitioned(connection: AsyncConnection, table: str) -> bool:
    if connection.dialect.name != "postgresql":
        return False
    found = await connection.scalar(
        text(
            "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.relname = :table AND c.relnamespace = current_schema()::regnamespace"
        ),
        {"table": table},
    )
    return found is not None


async def partitions_of(connection: AsyncConnection, table: str) -> list[Partition]:
    """The range partitions of ``table``, oldest first (the default partition left out)."""
    await connection.execute(text("SET LOCAL TIME ZONE 'UTC'"))
    rows = (
        await connection.execute(
            text(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent "
                "WHERE p.relname = :table AND p.relnamespace = current_schema()::regnamespace"
            ),
            {"table": table},
        )
    ).all()
    partitions = []
    for name, bound in rows:
        match = _BOUND.search(bound or "")
        if match:
            partitions.append(
                Partition(name, _parse_bound(match.group(1)), _parse_bound(match.group(2)))
            )
    return sorted(partitions, key=lambda p: p.start)


def _literal(moment: datetime) -> str:
    return f"'{moment.astimezone(UTC).isoformat()}'"


async def _lock(connection: AsyncConnection) -> None:
    await connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    await connection.execute(
        text("SELECT pg_advisory_xact_lock(:key)"), {"key": PARTITION_LOCK_KEY}
    )


async def create_partition(engine: AsyncEngine, table: PartitionedTable, start: datetime) -> bool:
    """Create the partition of ``table`` starting at ``start``, moving into it the rows the
    default partition holds for its range. False when it exists already.

    The partition is built as a plain table, filled from the default partition and then
    attached: creating it directly as a partition fails while the default partition holds
    rows of its range.
    """
    end = start + table.length()
    name = table.partition_name(start)
    column = f'"{table.column}"'
    async with engine.begin() as connection:
        await _lock(connection)
        if any(p.start == start for p in await partitions_of(connection, table.name)):
            return False
        await connection.execute(
            text(f"CREATE TABLE {name} (LIKE {table.name} INCLUDING DEFAULTS)")
        )
        if (unique_index := table.unique_index(name)) is not None:
            await connection.execute(text(unique_index))
        moved = await connection.execute(
            text(
                f"WITH moved AS (DELETE FROM {table.default_partition} "
                f"WHERE {column} >= {_literal(start)} AND {column} < {_literal(end)} "
                f"RETURNING *) INSERT INTO {name} SELECT * FROM moved"
            )
        )
        await connection.execute(
            text(
                f"ALTER TABLE {table.name} ATTACH PARTITION {name} "
                f"FOR VALUES FROM ({_literal(start)}) TO ({_literal(end)})"
            )
        )
    if moved.rowcount:
        logger.info("partitions: moved %d rows of %s into %s", moved.rowcount, table.name, name)
    return True


async def _periods_in_default(engine: AsyncEngine, table: PartitionedTable) -> list[datetime]:
    trunc = "week" if table.period == "week" else "day"
    async with engine.begin() as connection:
        await connection.execute(text("SET LOCAL TIME ZONE 'UTC'"))
        starts = (
            await connection.scalars(
                text(
                    f"SELECT DISTINCT date_trunc('{trunc}', \"{table.column}\") "
                    f"FROM {table.default_partition}"
                )
            )
        ).all()
    return sorted(start.astimezone(UTC) for start in starts)


@dataclass(frozen=True)
class MaintenanceReport:
    created: tuple[str, ...]


async def _all_partitions(
    connection: AsyncConnection, tables: tuple[PartitionedTable, ...]
) -> dict[str, list[Partition]]:
    """The range partitions of each of ``tables`` that is partitioned, in one catalog read
    (tables not partitioned, as before the migration, are left out)."""
    await connection.execute(text("SET LOCAL TIME ZONE 'UTC'"))
    rows = (
        await connection.execute(
            text(
                "SELECT p.relname, c.relname, pg_get_expr(c.relpartbound, c.oid) "
                "FROM pg_partitioned_table pt JOIN pg_class p ON p.oid = pt.partrelid "
                "LEFT JOIN pg_inherits i ON i.inhparent = p.oid "
                "LEFT JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE p.relnamespace = current_schema()::regnamespace "
                "AND p.relname = ANY(:names)"
            ),
            {"names": [table.name for table in tables]},
        )
    ).all()
    found: dict[str, list[Partition]] = {}
    for parent, name, bound in rows:
        partitions = found.setdefault(parent, [])
        match = _BOUND.search(bound or "")
        if name and match:
            partitions.append(
                Partition(name, _parse_bound(match.group(1)), _parse_bound(match.group(2)))
            )
    return found


async def _defaults_holding_rows(
    connection: AsyncConnection, tables: list[PartitionedTable]
) -> set[str]:
    if not tables:
        return set()
    union = " UNION ALL ".join(
        f"SELECT '{t.name}' WHERE EXISTS (SELECT 1 FROM {t.default_partition})" for t in tables
    )
    return set((await connection.scalars(text(union))).all())


async def maintain_partitions(
    engine: AsyncEngine, now: datetime, tables: tuple[PartitionedTable, ...] = PARTITIONED_TABLES
) -> MaintenanceReport:
    """Create the current and next periods' partitions of every partitioned table, and a
    partition for each period the default partition holds rows of. Nothing on SQLite.

    Two catalog reads when there is nothing to do (the server runs this at every start).
    """
    created: list[str] = []
    if engine.dialect.name != "postgresql":
        return MaintenanceReport(())
    async with engine.begin() as connection:
        existing = await _all_partitions(connection, tables)
        partitioned = [table for table in tables if table.name in existing]
        holding = await _defaults_holding_rows(connection, partitioned)
    for table in partitioned:
        wanted = set(table.wanted(now))
        if table.name in holding:
            wanted |= set(await _periods_in_default(engine, table))
        starts = {p.start for p in existing[table.name]}
        for start in sorted(wanted - starts):
            if await create_partition(engine, table, start):
                created.append(table.partition_name(start))
    if created:
        logger.info("partitions: created %s", ", ".join(created))
    return MaintenanceReport(tuple(created))


async def create_partitions_between(
    engine: AsyncEngine, table: PartitionedTable, since: datetime, until: datetime
) -> list[str]:
    """Create the missing partitions of ``table`` from ``since`` to ``until``: before a bulk
    load of history (a restore, an import), so that its rows go straight into their periods
    instead of through the default partition."""
    async with engine.connect() as connection:
        existing = {p.start for p in await partitions_of(connection, table.name)}
    created = []
    start = table.start_of(since)
    while start < until:
        if start not in existing and await create_partition(engine, table, start):
            created.append(table.partition_name(start))
        start += table.length()
    return created


async def expired_partitions(
    connection: AsyncConnection, table: str, cutoff: datetime
) -> list[Partition]:
    """The partitions of ``table`` whose whole range is older than ``cutoff``."""
    if not await is_partitioned(connection, table):
        return []
    return [p for p in await partitions_of(connection, table) if p.end <= cutoff]


async def drop_partition(engine: AsyncEngine, partition: Partition) -> int:
    """Drop one partition; returns how many rows it held."""
    async with engine.begin() as connection:
        await _lock(connection)
        rows = await connection.scalar(text(f"SELECT count(*) FROM {partition.name}"))
        await connection.execute(text(f"DROP TABLE {partition.name}"))
    logger.info("partitions: dropped %s (%d rows)", partition.name, rows or 0)
    return int(rows or 0)
