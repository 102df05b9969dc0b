"""Alembic environment: runs migrations with the application's async engine.

The URL comes from the ``sqlalchemy.url`` main option when a caller sets it (``homepot db
init`` and the tests do), otherwise from the settings (HOMEPOT_DATABASE_URL).
"""

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from homepot.config import get_settings
from homepot.db import create_engine
from homepot.models import metadata

config = context.config


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().database_url


def _partitions(connection: Connection) -> frozenset[str]:
    """The partitions of PostgreSQL's partitioned tables: storage of a table the models
    describe (homepot.retention.partitions), never tables of their own."""
    if connection.dialect.name != "postgresql":
        return frozenset()
    started = not connection.in_transaction()
    names = frozenset(
        connection.scalars(text("SELECT relname FROM pg_class WHERE relispartition")).all()
    )
    if started:
        # End the transaction this read began, so that the migrations' own one commits.
        connection.commit()
    return names


def _configure_and_run(connection: Connection) -> None:
    partitions = _partitions(connection)

    def include_name(name: str | None, type_: str, _parents: object) -> bool:
        return not (type_ == "table" and name in partitions)

    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_name=include_name,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_engine(_url())
    async with engine.connect() as connection:
        await connection.run_sync(_configure_and_run)
    await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
    else:
        asyncio.run(_run_online())
