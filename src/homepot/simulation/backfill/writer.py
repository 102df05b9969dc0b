"""Core rows into the database, parents first, in short transactions; and the marker row that
says a chain of stores already has its history.

Event rows go through the backfill's own :class:`~homepot.analytics.recorder.Recorder`; the
core rows (sites, schedules, devices, jobs, executions, health checks, audit logs) wait in
:attr:`History.core` until :func:`write_core_rows` inserts them, committed before the recorder
writes (SQLite allows one writer at a time).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from homepot.analytics.models import SiteOperatingSchedule
from homepot.audit.models import AuditLog
from homepot.db import Base
from homepot.device.models import Device, HealthCheck
from homepot.job.models import Job, JobExecution
from homepot.simulation.backfill.config import BackfillError
from homepot.simulation.backfill.history import Row
from homepot.site.models import Site

# Parents first: devices need sites, executions need jobs and devices.
_PARENTS_FIRST: tuple[type[Base], ...] = (
    Site,
    SiteOperatingSchedule,
    Device,
    Job,
    JobExecution,
    HealthCheck,
    AuditLog,
)


async def write_core_rows(
    factory: async_sessionmaker[AsyncSession],
    core: dict[type[Base], list[Row]],
    written: dict[str, int],
) -> None:
    """Insert and take out every row waiting in ``core``, in one transaction; ``written``
    counts the rows per table."""
    async with factory() as session, session.begin():
        for model in _PARENTS_FIRST:
            rows = core.pop(model, [])
            if rows:
                await _insert(session, model, rows)
                written[model.__tablename__] = written.get(model.__tablename__, 0) + len(rows)


async def _insert(session: AsyncSession, model: type[Base], rows: list[Row]) -> None:
    table = model.__table__
    assert isinstance(table, Table)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for start in range(0, len(rows), 2_000):
        await session.execute(insert(table).on_conflict_do_nothing(), rows[start : start + 2_000])


async def history_loaded_at(engine: AsyncEngine, site_prefix: str) -> datetime | None:
    """When the stores ``<site_prefix>-*`` got their backfilled history (None: not yet)."""
    async with engine.connect() as connection:
        loaded_at: datetime | None = await connection.scalar(
            select(AuditLog.timestamp)
            .where(AuditLog.resource_type == "backfill", AuditLog.resource_id == site_prefix)
            .limit(1)
        )
    if loaded_at is not None and loaded_at.tzinfo is None:  # SQLite keeps no offset
        loaded_at = loaded_at.replace(tzinfo=UTC)
    return loaded_at


async def refuse_a_second_history(engine: AsyncEngine, site_prefix: str) -> None:
    """Terminals live one life: a second history for the same stores would overlap the first."""
    loaded_at = await history_loaded_at(engine, site_prefix)
    if loaded_at is not None:
        raise BackfillError(
            f"the stores {site_prefix}-* already have a backfilled history (up to "
            f"{loaded_at.isoformat(timespec='seconds')}); pass another --site-prefix to add "
            "another chain of stores"
        )
