"""``homepot insights``: scan stored metrics for anomaly episodes over any range."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from homepot.config import Settings, get_settings

insights_app = typer.Typer(
    help="Anomaly detection over the stored device metrics.", no_args_is_help=True
)


def _fail(message: str, code: int) -> typer.Exit:
    Console(stderr=True, highlight=False, markup=False, soft_wrap=True).print(
        Text("Error: ", style="bold red") + message
    )
    return typer.Exit(code)


@insights_app.command("scan")
def insights_scan(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Start of the range (ISO 8601 datetime, or a date: its 00:00 UTC); "
            "default: 24 hours before --until.",
            show_default=False,
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            help="End of the range (ISO 8601 datetime, or a date: the end of that UTC day); "
            "default: now. Only complete 5-minute bins are scanned.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Find anomaly episodes in [--since, --until) and store them; a range scanned twice,
    or one the server already scanned, adds nothing twice."""
    from homepot.db import create_engine, utcnow
    from homepot.insights.service import scan
    from homepot.kit.timeranges import TimeRange, parse_time_bound

    root = ctx.find_root().obj
    settings = root if isinstance(root, Settings) else get_settings()
    try:
        bounds = TimeRange.between(
            parse_time_bound(since) if since else None, parse_time_bound(until) if until else None
        )
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    end = bounds.end or utcnow()
    start = bounds.start or end - timedelta(hours=24)
    if start >= end:
        raise _fail(f"--since {start.isoformat()} is not before --until {end.isoformat()}", 2)

    async def run() -> dict[str, object]:
        engine = create_engine(settings.database_url)
        try:
            report = await scan(engine, start, end, chunk_devices=settings.insights.chunk_devices)
        finally:
            await engine.dispose()
        return report.as_dict()

    try:
        summary = asyncio.run(run())
    except (SQLAlchemyError, OSError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        if "no such table" in detail or ("relation" in detail and "does not exist" in detail):
            detail += " (is the database initialised? run `homepot db init`)"
        raise _fail(f"database: {detail}", 1) from None
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console = Console(highlight=False, markup=False)
    if "skipped" in summary:
        console.print(f"Skipped: {summary['skipped']}.")
        return
    console.print(
        f"Scanned {summary['devices']} devices, {summary['bins']} five-minute bins from "
        f"{start.isoformat()} to {end.isoformat()} in {summary['seconds']} s: "
        f"{summary['inserted']} new episodes, {summary['updated']} extended, "
        f"{summary['closed']} closed."
    )
