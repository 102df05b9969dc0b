"""What the daily partitions of ``message_receipts`` cost and save on PostgreSQL.

A receipt is taken for every heartbeat (homepot.fleet.receipts): ~14 M a day at 5,000
terminals and a 30 s interval, kept 8 days. Side by side in one throw-away database, each
filled with the same ``--days`` x ``--rows-per-day`` receipts:

- ``message_receipts`` as migrated now: daily partitions by ``received_at``, each with its
  own unique index on ``event_id``, taken by the server's own two statements: ``filed``, a
  receipt filed under the message's own time (a UUIDv7 message id: ``ON CONFLICT DO
  NOTHING`` in that day's partition), and ``searched``, one filed under its arrival (any
  other id: the advisory lock on the id, then ``NOT EXISTS`` over the partitions);
- the plain table it was before 6c1e8b3f5a27 (``event_id`` primary key, an index on
  ``received_at``), taken by the statement of before (``ON CONFLICT (event_id) DO
  NOTHING``).

Printed for each: PostgreSQL's own CPU (the backend process's, read from /proc) and the
wall time per receipt, for first deliveries and for redeliveries (ids received days ago),
one statement at a time as the server sends them; then the retention of the oldest day:
retention's hour-by-hour DELETE on the plain table against dropping the day's partition,
and what the plain table's files weigh afterwards (a DELETE leaves dead rows behind until
VACUUM).

    .venv/bin/python benchmarks/receipts.py                              # about 3 minutes
    .venv/bin/python benchmarks/receipts.py --days 9 --rows-per-day 2000000   # bigger
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from _common import DEFAULT_POSTGRES_SERVER, benchmark_database, console
from rich.table import Table as RichTable
from sqlalchemy import Column, DateTime, MetaData, String, Table, bindparam
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.dialects.postgresql import insert

from homepot.db import create_engine
from homepot.fleet.receipts import _FILED, _ONE_AT_A_TIME, _SEARCHED, RECEIPT_LOCK_NAMESPACE
from homepot.retention.partitions import PARTITIONED_BY_NAME, create_partitions_between
from homepot.retention.service import _delete_older_by_hour

PLAIN = "message_receipts_plain"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _statement(clause: Any) -> str:
    return str(clause.compile(dialect=asyncpg_dialect.dialect()))


_PLAIN_TABLE = Table(
    PLAIN,
    MetaData(),
    Column("event_id", String(64), primary_key=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
)
PLAIN_INSERT = _statement(
    insert(_PLAIN_TABLE)
    .values(event_id=bindparam("event_id"), received_at=bindparam("received_at"))
    .on_conflict_do_nothing(index_elements=[_PLAIN_TABLE.c.event_id])
    .returning(_PLAIN_TABLE.c.event_id)
)
# A searched receipt is taken after the advisory lock on its id (a statement before it).
LOCK = _statement(_ONE_AT_A_TIME)
LAYOUTS: tuple[tuple[str, str, str | None], ...] = (
    ("plain", PLAIN_INSERT, None),
    ("partitioned, filed", _statement(_FILED), None),
    ("partitioned, searched", _statement(_SEARCHED), LOCK),
)


def backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) of PostgreSQL's backend process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


Receipt = tuple[str, datetime]


async def fill(
    connection: asyncpg.Connection, days: int, per_day: int, first_day: datetime
) -> list[list[Receipt]]:
    """The same receipts into both tables with COPY; returns the receipts of each day."""
    receipts_by_day = []
    for day in range(days):
        start = first_day + timedelta(days=day)
        step = timedelta(days=1) / per_day
        records = [(uuid.uuid4().hex, start + i * step) for i in range(per_day)]
        for table in ("message_receipts", PLAIN):
            await connection.copy_records_to_table(
                table, records=records, columns=("event_id", "received_at")
            )
        receipts_by_day.append(records)
        console.print(f"  day {day + 1}/{days}: {per_day:,} receipts in each table")
    for table in ("message_receipts", PLAIN):
        await connection.execute(f"VACUUM ANALYZE {table}")
    return receipts_by_day


async def take(
    connection: asyncpg.Connection,
    pid: int,
    sql: str,
    lock: str | None,
    receipts: list[Receipt],
) -> tuple[float, float, int]:
    """Take each receipt, one statement (and transaction) at a time, as the server does for
    a heartbeat, after the ``lock`` statement when there is one; (PostgreSQL CPU µs, wall
    µs) per receipt, and how many were new."""
    prepared = await connection.prepare(sql)
    locking = await connection.prepare(lock) if lock else None
    new = 0
    cpu, wall = backend_cpu(pid), time.perf_counter()
    for event_id, at in receipts:
        async with connection.transaction():
            if locking is not None:
                await locking.fetchval(RECEIPT_LOCK_NAMESPACE, event_id)
            if await prepared.fetchval(event_id, at) is not None:
                new += 1
    cpu, wall = backend_cpu(pid) - cpu, time.perf_counter() - wall
    return cpu / len(receipts) * 1e6, wall / len(receipts) * 1e6, new


async def run(url: str, args: argparse.Namespace) -> None:
    engine = create_engine(url)
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    connection = await asyncpg.connect(dsn)
    pid = await connection.fetchval("SELECT pg_backend_pid()")
    try:
        await connection.execute(
            f"CREATE TABLE {PLAIN} (event_id varchar(64) PRIMARY KEY, "
            "received_at timestamptz NOT NULL)"
        )
        await connection.execute(f"CREATE INDEX ix_{PLAIN}_received_at ON {PLAIN} (received_at)")
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        first_day = today - timedelta(days=args.days - 1)
        await create_partitions_between(
            engine, PARTITIONED_BY_NAME["message_receipts"], first_day, today + timedelta(days=1)
        )
        console.print(f"filling {args.days} days x {args.rows_per_day:,} receipts ...")
        receipts_by_day = await fill(connection, args.days, args.rows_per_day, first_day)
        partitions = await connection.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'message_receipts'::regclass"
        )

        table = RichTable(
            title=f"a receipt, one statement at a time ({args.receipts:,} of each kind, "
            f"{args.days * args.rows_per_day:,} receipts held, {partitions} partitions)"
        )
        for column in ("layout", "delivery", "PostgreSQL CPU µs", "wall µs", "stored"):
            table.add_column(column, justify="right" if column != "layout" else "left")
        figures: dict[tuple[str, str], float] = {}
        for round_ in range(args.rounds):
            # New messages of today, and messages delivered again: receipts of a day held,
            # each with its own time (a filed receipt is looked up under the message's time).
            now = datetime.now(UTC)
            fresh = [(uuid.uuid4().hex, now) for _ in range(args.receipts)]
            held = receipts_by_day[1 + round_ % (len(receipts_by_day) - 1)]
            again = held[:: max(1, len(held) // args.receipts)][: args.receipts]
            for layout, sql, lock in LAYOUTS:
                for delivery, receipts in (("first", fresh), ("again", again)):
                    cpu, wall, new = await take(connection, pid, sql, lock, receipts)
                    expected = len(receipts) if delivery == "first" else 0
                    assert new == expected, f"{layout} {delivery}: {new} new, {expected} expected"
                    key = (layout, delivery)
                    figures[key] = min(figures.get(key, float("inf")), cpu)
                    table.add_row(layout, delivery, f"{cpu:.1f}", f"{wall:.1f}", f"{new:,}")
                fresh = [(uuid.uuid4().hex, now) for _ in range(args.receipts)]
        console.print(table)
        for layout, _sql, _lock in LAYOUTS[1:]:
            for delivery in ("first", "again"):
                ratio = figures[(layout, delivery)] / figures[("plain", delivery)]
                console.print(
                    f"{layout}, {delivery} delivery: PostgreSQL CPU / plain's (best of "
                    f"{args.rounds}) = {ratio:.2f}"
                )

        # Retention of the oldest day.
        cutoff = first_day + timedelta(days=1)
        size_before = await connection.fetchval(f"SELECT pg_total_relation_size('{PLAIN}')")
        cpu, wall = backend_cpu(pid), time.perf_counter()
        deleted, batches = await _delete_older_by_hour(
            engine, _PLAIN_TABLE, _PLAIN_TABLE.c.received_at, cutoff
        )
        delete_wall = time.perf_counter() - wall
        size_after = await connection.fetchval(f"SELECT pg_total_relation_size('{PLAIN}')")
        partition = PARTITIONED_BY_NAME["message_receipts"].partition_name(first_day)
        wall = time.perf_counter()
        await connection.execute(f"DROP TABLE {partition}")
        drop_wall = time.perf_counter() - wall
        retention = RichTable(title="retention of the oldest day")
        for column in ("layout", "how", "rows", "wall s", "table + indexes after"):
            retention.add_column(column)
        retention.add_row(
            "plain",
            f"DELETE an hour a transaction ({batches} transactions)",
            f"{deleted:,}",
            f"{delete_wall:.2f}",
            f"{size_after / 2**20:.0f} MB (before: {size_before / 2**20:.0f} MB; "
            "dead rows until VACUUM)",
        )
        retention.add_row(
            "partitioned",
            "DROP TABLE of the day",
            f"{args.rows_per_day:,}",
            f"{drop_wall:.3f}",
            "its files are gone",
        )
        console.print(retention)
        console.print(
            f"retention of a day: DROP / DELETE wall time = {drop_wall / delete_wall:.4f} "
            f"({delete_wall / drop_wall:,.0f}x faster)"
        )
        del cpu
    finally:
        await connection.close()
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--days", type=int, default=9, help="days of receipts held")
    parser.add_argument("--rows-per-day", type=int, default=500_000)
    parser.add_argument("--receipts", type=int, default=5_000, help="receipts taken per kind")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER)
    args = parser.parse_args()
    with benchmark_database("postgresql", args.postgres_server, "receipts") as url:
        asyncio.run(run(url, args))
    console.print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
