"""`homepot retention`: what is kept how long, and applying it."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from homepot.cli.common import (
    EXIT_USAGE,
    JsonOption,
    cli_actor,
    fail,
    settings_from,
    stdout_console,
    with_engine,
)
from homepot.config import Settings
from homepot.retention.policy import (
    RetentionPolicyError,
    TablePolicy,
    parse_overrides,
    resolve_policy,
)

# --- retention -----------------------------------------------------------------------------

retention_app = typer.Typer(
    help="Prune old analytics and operational rows (HOMEPOT_RETENTION_DAYS and "
    "HOMEPOT_RETENTION__TABLES set how long each table keeps them).",
    no_args_is_help=True,
)

TableOverrideOption = Annotated[
    list[str] | None,
    typer.Option(
        "--table",
        metavar="NAME=DAYS",
        help="Keep table NAME for DAYS days (or NAME=forever), over the settings; repeatable.",
        show_default=False,
    ),
]


def _kept(days: int | None) -> str:
    if days is None:
        return "forever"
    return "1 day" if days == 1 else f"{days} days"


def _retention_policy(settings: Settings, tables: list[str] | None) -> list[TablePolicy]:
    try:
        return resolve_policy(settings, parse_overrides(tables or []))
    except RetentionPolicyError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


@retention_app.command("show")
def retention_show(
    ctx: typer.Context, tables: TableOverrideOption = None, as_json: JsonOption = False
) -> None:
    """How long each pruned table keeps its rows, and which setting decided it."""
    settings = settings_from(ctx)
    policy = _retention_policy(settings, tables)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    p.name: {"days": p.days, "source": p.source, "time_column": p.table.time_column}
                    for p in policy
                },
                indent=2,
            )
        )
        return
    table = Table(title=f"Retention policy (default: {_kept(settings.retention_days)})")
    for heading in ("Table", "Kept", "Set by", "Age from"):
        table.add_column(heading)
    for entry in policy:
        table.add_row(entry.name, _kept(entry.days), entry.source, entry.table.time_column)
    console = stdout_console()
    console.print(table)
    retention = settings.retention
    console.print(
        f"The server prunes every {retention.interval_seconds:g} s in batches of "
        f"{retention.batch_size:,} rows."
        if retention.enabled
        else "The server does not prune (HOMEPOT_RETENTION__ENABLED=false); run "
        "`homepot retention run` from a scheduler instead."
    )


@retention_app.command("run")
def retention_run(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count the rows a run would delete.")
    ] = False,
    tables: TableOverrideOption = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Count the periods back from this moment (ISO 8601 datetime, or a date: its "
            "00:00 UTC) instead of now; not in the future. A dry run and a run with the same "
            "--as-of agree row for row.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            max=100_000,
            help="Rows deleted per transaction (default HOMEPOT_RETENTION__BATCH_SIZE).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Delete the rows older than their table's period, in batches; report per table."""
    import socket

    from homepot.db import utcnow
    from homepot.kit.timeranges import TimeRange, parse_time_bound
    from homepot.retention.service import RetentionRunFailed, apply_retention

    settings = settings_from(ctx)
    policy = _retention_policy(settings, tables)
    moment = None
    if as_of is not None:
        try:
            moment = TimeRange.between(parse_time_bound(as_of), None).start
        except ValueError as exc:
            raise fail(f"--as-of: {exc}", EXIT_USAGE) from None
        if moment is not None and moment > utcnow():
            raise fail(
                f"--as-of {moment.isoformat()} is in the future; periods count back from now "
                "or an earlier moment",
                EXIT_USAGE,
            )
    actor = cli_actor()
    try:
        report = with_engine(
            settings,
            lambda engine: apply_retention(
                engine,
                policy,
                actor=actor,
                batch_size=batch_size or settings.retention.batch_size,
                dry_run=dry_run,
                as_of=moment,
                context={"trigger": "cli", "host": socket.gethostname()},
            ),
        )
    except RetentionRunFailed as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    console = stdout_console()
    if report.skipped:
        console.print(f"Skipped: {report.skipped}.")
        return
    when = f"{report.as_of:%Y-%m-%d %H:%M:%S} UTC"
    title = f"Dry run as of {when}: nothing deleted" if dry_run else f"Retention run as of {when}"
    table = Table(title=title)
    for heading in ("Table", "Kept", "Cutoff (UTC)"):
        table.add_column(heading)
    table.add_column("Would delete" if dry_run else "Deleted", justify="right")
    for outcome in report.outcomes:
        cutoff = f"{outcome.cutoff:%Y-%m-%d %H:%M:%S}" if outcome.cutoff else "-"
        table.add_row(outcome.table, _kept(outcome.days), cutoff, f"{outcome.rows:,}")
    table.add_section()
    table.add_row("total", "", "", f"{report.total_rows:,}")
    console.print(table)
    if dry_run:
        console.print(
            "To delete exactly these rows: homepot retention run --as-of "
            f"{report.as_of.isoformat()}",
            soft_wrap=True,
        )
