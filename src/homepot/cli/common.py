"""What every command shares: console output, errors as messages, settings, running async work."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from homepot.audit.service import Actor
from homepot.config import Settings
from homepot.db import create_engine, create_session_factory

T = TypeVar("T")

# Exit codes: 1 = the operation failed, 2 = the command line asked for something impossible.
EXIT_FAILED = 1
EXIT_USAGE = 2
SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
URL_FORMS = (
    "use sqlite:///path/to/file.db or postgresql://user@host:5432/dbname "
    "(in HOMEPOT_DATABASE_URL or --database-url)"
)
# Characters shown per value by `db show`, in a table and one row per block; --json shows all.
CELL_WIDTH = 40
RECORD_CELL_WIDTH = 400

# --- plumbing ------------------------------------------------------------------------------


def stdout_console() -> Console:
    # Made per call so that COLUMNS and the current stdout are honoured.
    return Console(highlight=False, markup=False)


def homepot_command() -> str:
    """How to run `homepot` from this shell, for commands we print: the bare name when the
    PATH finds this very installation, else its path (``.venv/bin/homepot`` in a checkout)."""
    script = Path(sys.executable).parent / "homepot"
    found = shutil.which("homepot")
    if found is not None and script.exists() and os.path.samefile(found, script):
        return "homepot"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    Console(stderr=True, highlight=False, markup=False, soft_wrap=True).print(
        Text("Error: ", style="bold red") + message
    )
    return typer.Exit(code)


def settings_from(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def database_errors(settings: Settings) -> Iterator[None]:
    """A database that is unreachable or not set up is an error message, not a traceback."""
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        hint = ""
        if "no such table" in detail or ("relation" in detail and "does not exist" in detail):
            hint = " (is the database initialised? run `homepot db init`)"
        raise fail(f"database {safe_url(settings.database_url)}: {detail}{hint}") from None


def with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run ``work`` with an engine of its own, disposed of afterwards."""

    async def main() -> T:
        engine = create_engine(settings.database_url, settings=settings.database)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    with database_errors(settings):
        return asyncio.run(main())


def in_transaction(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one session and commit it: the command is the edge that owns it."""

    async def transaction(engine: AsyncEngine) -> T:
        async with create_session_factory(engine)() as session, session.begin():
            return await work(session)

    return with_engine(settings, transaction)


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ServerOption = Annotated[
    str, typer.Option("--server", help="The HOMEPOT server's base URL.", show_default=True)
]


def until_interrupted(work: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run ``work(stop)``; SIGINT or SIGTERM sets ``stop`` so that it can finish cleanly."""
    import signal

    async def main() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await work(stop)

    return asyncio.run(main())


def cli_actor() -> Actor:
    """Who runs the command, for the audit row: ``cli:<OS user>``."""
    import getpass

    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return Actor(user_id=f"cli:{user}"[:64], ip_address=None)
