"""Set-up shared by the benchmarks: a throw-away migrated database, clean exits, statistics.

Not a benchmark itself. The scripts import it as ``_common`` (they run as plain files from
``benchmarks/``, so this directory is first on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import asyncpg
from rich.console import Console
from sqlalchemy.engine import make_url

from homepot.db import run_migrations

DEFAULT_POSTGRES_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def raise_keyboard_interrupt_on_sigterm() -> None:
    """Treat SIGTERM like Ctrl-C, so that every ``finally`` runs and nothing is left behind."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _maintenance_dsn(server_url: str) -> str:
    """asyncpg's DSN for the server's ``postgres`` database (no SQLAlchemy driver suffix)."""
    url = make_url(server_url).set(drivername="postgresql", database="postgres")
    return url.render_as_string(hide_password=False)


def _run_on_server(server_url: str, statement: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(_maintenance_dsn(server_url))
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


@contextmanager
def benchmark_database(kind: str, postgres_server: str, label: str) -> Iterator[str]:
    """A freshly migrated database of ``kind`` ("postgresql" or "sqlite"); removed on exit.

    Yields the SQLAlchemy async URL. The PostgreSQL database is created on ``postgres_server``
    under a unique name and dropped WITH (FORCE) afterwards, even after Ctrl-C or an error.
    """
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix=f"homepot-{label}-") as directory:
            url = f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}"
            run_migrations(url)
            yield url
        return
    if kind != "postgresql":
        raise ValueError(f"unknown database kind {kind!r}: use postgresql or sqlite")
    name = f"homepot_bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    _run_on_server(postgres_server, f'CREATE DATABASE "{name}"')
    try:
        database = make_url(postgres_server).set(drivername="postgresql+asyncpg", database=name)
        url = database.render_as_string(hide_password=False)
        run_migrations(url)
        yield url
    finally:
        _run_on_server(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (0..1) by linear interpolation; values need not be sorted."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def describe_database(url: str) -> str:
    """The URL without any password, for printing."""
    return make_url(url).render_as_string(hide_password=True)
