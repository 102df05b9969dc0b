"""Pruning old rows: counted (a dry run) or deleted, one runner at a time.

Every table is cut at one moment per run: ``as_of - days``, rows strictly older go. A dry run
counts exactly the rows a real run with the same ``as_of`` deletes. On PostgreSQL, a table
partitioned by time (homepot.retention.partitions) first loses every partition whose whole
range is older than the cutoff, dropped whole (instant, and no bloat left to vacuum). The
rows older than the cutoff that remain (in the partition that straddles it, in the default
partition, and in tables that are not partitioned) are deleted by primary key,
``batch_size`` rows a transaction, oldest ids first, so that no delete holds locks long
enough to stall the recorder's inserts.

One run at a time (:func:`homepot.kit.singleton.single_run`): on PostgreSQL a session-level
advisory lock, taken with ``pg_try_advisory_lock`` on a connection of its own, lets one
process (server or command line) run while the others skip and say so. On SQLite, a lock
inside the process does the same; two processes pruning one SQLite file at once (a server
and the command line) only repeat each other's work, since SQLite runs one write at a time
anyway.

Each run that is not skipped writes one ``audit_logs`` row, ``retention.run``, with what it
deleted (or would delete) per table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Column, Table, delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from homepot.audit.service import Actor, write_audit_log
from homepot.db import utcnow
from homepot.kit.singleton import single_run
from homepot.retention.partitions import (
    PARTITIONED_BY_NAME,
    Partition,
    drop_partition,
    expired_partitions,
)
from homepot.retention.policy import TablePolicy

logger = logging.getLogger(__name__)

# The advisory lock's key: "HOMEPOTR" as a big-endian 64-bit integer.
ADVISORY_LOCK_KEY: Final = int.from_bytes(b"HOMEPOTR", "big")
SKIPPED_LOCKED: Final = "another retention run is under way (it holds the lock); nothing was done"
SYSTEM_ACTOR: Final = Actor(user_id="system", ip_address=None)


@dataclass(frozen=True)
class TableOutcome:
    """What a run did to one table: ``rows`` deleted, or in a dry run, that would be."""

    table: str
    days: int | None
    cutoff: datetime | None
    rows: int
    batches: int
    # Partitions dropped whole (their rows are counted in ``rows``); in a dry run, that would be.
    partitions: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "cutoff": self.cutoff.isoformat() if self.cutoff else None,
            "rows": self.rows,
            "batches": self.batches,
            "partitions_dropped": list(self.partitions),
        }


@dataclass(frozen=True)
class RetentionReport:
    as_of: datetime
    dry_run: bool
    outcomes: tuple[TableOutcome, ...]
    # Why nothing was done (another run holds the lock); None when the run happened.
    skipped: str | None = None

    @property
    def total_rows(self) -> int:
        return sum(outcome.rows for outcome in self.outcomes)

    def as_dict(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"as_of": self.as_of.isoformat(), "dry_run": self.dry_run}
        if self.skipped:
            summary["skipped"] = self.skipped
        summary["total_rows"] = self.total_rows
        summary["tables"] = {outcome.table: outcome.as_dict() for outcome in self.outcomes}
        return summary


class RetentionRunFailed(Exception):
    """A table could not be pruned; the tables before it were, and the audit row says so."""


def _columns(policy: TablePolicy) -> tuple[Table, Column[Any], Column[Any] | None]:
    table = policy.table.model.__table__
    assert isinstance(table, Table)
    return table, table.c[policy.table.time_column], table.c.get("id")


async def _count_older(engine: AsyncEngine, policy: TablePolicy, cutoff: datetime) -> int:
    table, time_column, _ = _columns(policy)
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count()).select_from(table).where(time_column < cutoff)
        )
    return int(count or 0)


async def _delete_older(
    engine: AsyncEngine, policy: TablePolicy, cutoff: datetime, batch_size: int
) -> tuple[int, int]:
    """Delete the rows older than ``cutoff``, a batch a transaction; (rows, batches)."""
    table, time_column, id_column = _columns(policy)
    if id_column is None:
        return await _delete_older_by_hour(engine, table, time_column, cutoff)
    oldest = select(id_column).where(time_column < cutoff).order_by(id_column).limit(batch_size)
    statement = delete(table).where(id_column.in_(oldest.scalar_subquery()))
    deleted = batches = 0
    while True:
        async with engine.begin() as connection:
            result = await connection.execute(statement)
        rows = result.rowcount
        if rows:
            deleted += rows
            batches += 1
        if rows < batch_size:
            return deleted, batches
        await asyncio.sleep(0)  # let the recorder and requests in between batches


async def _delete_older_by_hour(
    engine: AsyncEngine, table: Table, time_column: Column[Any], cutoff: datetime
) -> tuple[int, int]:
    """For tables without an id (the rollups): one hour of rows a transaction, oldest first."""
    deleted = batches = 0
    while True:
        async with engine.connect() as connection:
            oldest = await connection.scalar(
                select(func.min(time_column)).where(time_column < cutoff)
            )
        if oldest is None:
            return deleted, batches
        until = min(cutoff, oldest + timedelta(hours=1))
        async with engine.begin() as connection:
            result = await connection.execute(delete(table).where(time_column < until))
        deleted += result.rowcount
        batches += 1
        await asyncio.sleep(0)


async def _expired_partitions(
    engine: AsyncEngine, policy: TablePolicy, cutoff: datetime
) -> list[Partition]:
    partitioned = PARTITIONED_BY_NAME.get(policy.name)
    if engine.dialect.name != "postgresql" or partitioned is None:
        return []
    if partitioned.column != policy.table.time_column:
        return []
    async with engine.connect() as connection:
        return await expired_partitions(connection, policy.name, cutoff)


async def _prune(
    engine: AsyncEngine, policy: TablePolicy, cutoff: datetime, batch_size: int, dry_run: bool
) -> TableOutcome:
    partitions = await _expired_partitions(engine, policy, cutoff)
    names = tuple(partition.name for partition in partitions)
    if dry_run:
        rows = await _count_older(engine, policy, cutoff)
        return TableOutcome(policy.name, policy.days, cutoff, rows, 0, names)
    dropped = 0
    for partition in partitions:
        dropped += await drop_partition(engine, partition)
    rows, batches = await _delete_older(engine, policy, cutoff, batch_size)
    return TableOutcome(policy.name, policy.days, cutoff, dropped + rows, batches, names)


async def _write_audit(
    engine: AsyncEngine, actor: Actor, report: RetentionReport, context: dict[str, Any]
) -> None:
    async with AsyncSession(engine) as session, session.begin():
        write_audit_log(
            session,
            actor,
            action="retention.run",
            resource_type="retention",
            resource_id="database",
            details={**report.as_dict(), **context},
        )


async def apply_retention(
    engine: AsyncEngine,
    policy: Sequence[TablePolicy],
    *,
    actor: Actor,
    batch_size: int,
    dry_run: bool = False,
    as_of: datetime | None = None,
    context: dict[str, Any] | None = None,
) -> RetentionReport:
    """Prune (or with ``dry_run`` count) every table of ``policy`` at one cutoff per table.

    ``as_of`` (default now) is the moment the periods are counted back from. ``context``
    goes into the audit row (e.g. where the run was started). Returns a report whose
    ``skipped`` is set when another run held the lock. Raises RetentionRunFailed when a
    table fails; the audit row then lists the tables done before it.
    """
    as_of = as_of or utcnow()
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    async with single_run(engine, ADVISORY_LOCK_KEY) as may_run:
        if not may_run:
            logger.info("retention: %s", SKIPPED_LOCKED)
            return RetentionReport(
                as_of=as_of, dry_run=dry_run, outcomes=(), skipped=SKIPPED_LOCKED
            )
        outcomes: list[TableOutcome] = []
        failure: Exception | None = None
        for table_policy in policy:
            cutoff = table_policy.cutoff(as_of)
            try:
                if cutoff is None:
                    outcome = TableOutcome(table_policy.name, None, None, 0, 0)
                else:
                    outcome = await _prune(engine, table_policy, cutoff, batch_size, dry_run)
            except Exception as exc:
                failure = exc
                break
            outcomes.append(outcome)
        report = RetentionReport(as_of=as_of, dry_run=dry_run, outcomes=tuple(outcomes))
        extra = dict(context or {})
        if failure is not None:
            extra["failed"] = {"table": table_policy.name, "error": f"{failure}"[:500]}
        await _write_audit(engine, actor, report, extra)
    if failure is not None:
        raise RetentionRunFailed(
            f"retention stopped at {table_policy.name}: {type(failure).__name__}: {failure}"
        ) from failure
    if report.total_rows and not dry_run:
        logger.info("retention: deleted %d rows as of %s", report.total_rows, as_of.isoformat())
    return report
