"""`homepot db`: set up and inspect the database (migrations, sample data, counts, rows)."""

from __future__ import annotations

import json
from datetime import date, datetime, time
from typing import Annotated, Any

import typer
from alembic.util import CommandError
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from homepot import dbtools
from homepot.auth.service import Credentials
from homepot.cli.common import (
    CELL_WIDTH,
    EXIT_USAGE,
    RECORD_CELL_WIDTH,
    JsonOption,
    database_errors,
    fail,
    homepot_command,
    safe_url,
    settings_from,
    stdout_console,
    with_engine,
)
from homepot.config import Settings
from homepot.db import run_migrations
from homepot.kit.urls import mask_url_credentials
from homepot.simulation.sample import SampleFleet, load_sample_data

db_app = typer.Typer(
    help="Set up and inspect the database (migrations, sample data, counts, rows).",
    no_args_is_help=True,
)


# --- db ------------------------------------------------------------------------------------


def print_credentials(credentials: list[Credentials]) -> None:
    if not credentials:
        return
    table = Table(title="New users (passwords are shown only now)")
    for heading in ("E-mail", "Role", "Password"):
        table.add_column(heading)
    for user in credentials:
        table.add_row(user.email, user.role.value, user.password)
    stdout_console().print(table)


def init_database(
    settings: Settings, *, with_sample_data: bool, fleet: SampleFleet | None = None
) -> list[Credentials]:
    """Migrate, and load the sample fleet's history once; returns the users it created."""
    console = stdout_console()
    with database_errors(settings):
        try:
            run_migrations(settings.database_url)
        except CommandError as exc:
            raise fail(f"migrations failed: {mask_url_credentials(str(exc))}") from None
    console.print(f"Database {safe_url(settings.database_url)} is at the latest schema.")
    if not with_sample_data:
        return []
    fleet = fleet or SampleFleet()
    result = with_engine(settings, lambda engine: load_sample_data(engine, fleet))
    if not result.loaded:
        console.print(
            f"Sample data already present (loaded {result.loaded_at.isoformat()}); nothing added."
        )
        return []
    added = sum(result.added.values())
    tables = sum(1 for rows in result.added.values() if rows)
    console.print(
        f"Sample data loaded: {added:,} rows in {tables} tables, {fleet.days:g} days of a "
        f"simulated fleet (see them with `{homepot_command()} db count`).",
        soft_wrap=True,
    )
    print_credentials(result.credentials)
    return result.credentials


@db_app.command("init")
def db_init(
    ctx: typer.Context,
    with_sample_data: Annotated[
        bool,
        typer.Option(
            "--sample-data",
            help="Also add two days of a small simulated fleet's history to every table, once "
            "(running it again adds nothing).",
        ),
    ] = False,
) -> None:
    """Create or upgrade the schema (Alembic migrations), optionally with sample data."""
    init_database(settings_from(ctx), with_sample_data=with_sample_data)


def _count_table(counts: list[dbtools.TableCount]) -> Table:
    table = Table(title=f"HOMEPOT database: {len(counts)} tables")
    table.add_column("Group")
    table.add_column("Table")
    table.add_column("Rows", justify="right")
    group = None
    for count in counts:
        if group is not None and count.group != group:
            table.add_section()
        group = count.group
        table.add_row(count.group, count.table, f"{count.rows:,}")
    table.add_section()
    table.add_row("", "total", f"{sum(count.rows for count in counts):,}")
    return table


@db_app.command("count")
def db_count(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Row counts of every table (core, analytics, AI-focused, operational)."""

    async def count(engine: AsyncEngine) -> list[dbtools.TableCount]:
        async with engine.connect() as connection:
            return await dbtools.count_rows(connection)

    counts = with_engine(settings_from(ctx), count)
    if as_json:
        typer.echo(json.dumps({c.table: c.rows for c in counts}, indent=2))
        return
    stdout_console().print(_count_table(counts))


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    raise TypeError(f"cannot show a value of type {type(value).__name__}")


def _cell(value: Any, width: int = CELL_WIDTH) -> Text:
    if value is None:
        return Text("null", style="dim")
    if isinstance(value, datetime | time):
        text = value.isoformat(timespec="seconds")
    elif isinstance(value, dict | list):
        text = json.dumps(value, default=_json_value, separators=(",", ":"))
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    text = " ".join(text.split())  # stack traces and notes on one line
    if len(text) > width:
        text = text[: width - 1] + "…"
    return Text(text)  # a Text, so that "[...]" in stored data is not read as markup


@db_app.command("show")
def db_show(
    ctx: typer.Context,
    table: Annotated[str, typer.Argument(help="Table name, e.g. device_metrics.")],
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=10_000, help="Rows to show.")
    ] = 20,
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            "-w",
            help="Filter column=value; repeat it and every filter must match.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The newest rows of one table (newest first where the table has a timestamp)."""
    settings = settings_from(ctx)
    filters = where or []
    try:
        dbtools.parse_filters(table, filters)  # names and values, before any connection
    except dbtools.InspectionError as exc:
        raise fail(str(exc), EXIT_USAGE) from None

    async def show(engine: AsyncEngine) -> dbtools.TableRows:
        async with engine.connect() as connection:
            return await dbtools.show_rows(connection, table, limit=limit, where=filters)

    result = with_engine(settings, show)
    if as_json:
        typer.echo(json.dumps(result.rows, default=_json_value, indent=2))
        return
    condition = f" where {' and '.join(filters)}" if filters else ""
    count = f"{len(result.rows)} row{'' if len(result.rows) == 1 else 's'}"
    title = f"{result.table}{condition}: {count}, {result.order}"
    console = stdout_console()
    view = _rows_table(result, title)
    unconstrained = console.options.update_width(1_000_000)
    if console.measure(view, options=unconstrained).maximum <= console.width:
        console.print(view)
    else:
        _print_records(console, result, title)


def _rows_table(result: dbtools.TableRows, title: str) -> Table:
    """One line per row, one column per table column."""
    view = Table(title=Text(title))
    for column in result.columns:
        view.add_column(column, no_wrap=True)
    for row in result.rows:
        view.add_row(*(_cell(row[column]) for column in result.columns))
    return view


def _print_records(console: Console, result: dbtools.TableRows, title: str) -> None:
    """One block per row, one line per column: what fits when the columns do not."""
    console.print(Text(title, style="bold"))
    for number, row in enumerate(result.rows, start=1):
        record = Table.grid(padding=(0, 2))
        record.add_column(style="bold")
        record.add_column(overflow="fold")
        for column in result.columns:
            record.add_row(column, _cell(row[column], RECORD_CELL_WIDTH))
        console.rule(f"row {number}", align="left")
        console.print(record)
