"""`homepot export`: pseudonymized Parquet/CSV exports for the AI team."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.cli.common import (
    EXIT_USAGE,
    cli_actor,
    fail,
    in_transaction,
    settings_from,
    stdout_console,
    with_engine,
)

# --- export --------------------------------------------------------------------------------


class _ExportProgressBar:
    """One rich progress bar per table, its total from a COUNT of the rows to export."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._tasks: dict[str, Any] = {}

    def table_started(self, table: str, total: int) -> None:
        self._tasks[table] = self._progress.add_task(table, total=total)

    def rows_written(self, table: str, rows: int) -> None:
        self._progress.advance(self._tasks[table], rows)


def export(
    ctx: typer.Context,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Directory for the files and manifest.json; created if missing, and it "
            "must be empty unless --force.",
        ),
    ],
    tables: Annotated[
        list[str] | None,
        typer.Option(
            "--tables",
            help="Tables, comma-separated or repeated: requests, device-states, jobs, "
            "errors, user-activities, device-metrics, config-history, site-schedules (or "
            "their table names, e.g. api_request_logs). Default: all eight.",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Rows at or after: a date (YYYY-MM-DD, UTC) or ISO 8601 datetime."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Rows up to: a date includes that whole UTC day."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Write into a non-empty --out, replacing this export's files."
        ),
    ] = False,
    include_simulated: Annotated[
        bool,
        typer.Option(
            "--include-simulated",
            help="Also export rows of the simulation (demo, backfill, sample data, simulated "
            "terminals); they are left out by default.",
        ),
    ] = False,
) -> None:
    """Export analytics tables for the AI team, pseudonymized (user ids keyed with
    HOMEPOT_EXPORT_KEY, IPs cut to /24 or /48, free text scrubbed), with a manifest."""
    import time as clock

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from homepot.export import service as export_service
    from homepot.export.pseudonym import ExportKeyError, pseudonymizer_from

    settings = settings_from(ctx)
    key = settings.export_key.get_secret_value() if settings.export_key is not None else None
    try:
        request = export_service.build_request(
            tables, since, until, fmt, include_simulated=include_simulated
        )
        pseudonymizer = pseudonymizer_from(key)
        export_service.prepare_out_dir(out, request, force=force)
    except (export_service.ExportError, ExportKeyError) as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    started = clock.perf_counter()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        manifest = with_engine(
            settings,
            lambda engine: export_service.export_tables(
                engine, request, out, pseudonymizer, progress=_ExportProgressBar(bar)
            ),
        )
    seconds = clock.perf_counter() - started
    actor = cli_actor()

    async def audit(session: AsyncSession) -> None:
        export_service.write_export_audit(session, actor, manifest)

    in_transaction(settings, audit)
    table = Table(title=f"Export {manifest.export_id} ({manifest.format}) in {out}")
    table.add_column("Table")
    table.add_column("File")
    table.add_column("Rows", justify="right")
    if not include_simulated:
        table.add_column("Simulated, left out", justify="right")
    for name, entry in manifest.tables.items():
        left_out = [] if include_simulated else [f"{entry.simulated_rows_left_out:,}"]
        table.add_row(name, entry.file, f"{entry.rows:,}", *left_out)
    total = sum(entry.rows for entry in manifest.tables.values())
    table.add_section()
    left_out_total = [] if include_simulated else [f"{manifest.simulated_rows_left_out:,}"]
    table.add_row("total", "manifest.json", f"{total:,}", *left_out_total)
    console = stdout_console()
    console.print(table)
    console.print(
        f"{total:,} rows in {seconds:.1f} s; pseudonyms under key id {manifest.key_id} "
        "(the same key keeps them joinable across exports)."
    )
    if manifest.provenance_note is not None:
        console.print(Text(manifest.provenance_note, style="bold yellow"))
