"""`homepot quality` and `homepot validate`: data-quality gate and the end-to-end check."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from homepot.cli.common import (
    EXIT_USAGE,
    JsonOption,
    fail,
    settings_from,
    stdout_console,
    with_engine,
)
from homepot.simulation.sample import DEMO_ADMIN_EMAIL

# --- data quality and validation -----------------------------------------------------------


def quality(
    ctx: typer.Context,
    min_rows: Annotated[
        int, typer.Option("--min-rows", min=0, help="Rows each analytics table needs.")
    ] = 1000,
    max_staleness_hours: Annotated[
        float,
        typer.Option(
            "--max-staleness-hours", min=0.001, help="Oldest allowed newest row of a stream."
        ),
    ] = 24.0,
    max_null_rate: Annotated[
        float,
        typer.Option(
            "--max-null-rate", min=0, max=1, help="Highest share of NULLs in required columns."
        ),
    ] = 0.05,
    stopped_after_minutes: Annotated[
        float,
        typer.Option(
            "--stopped-after-minutes",
            min=0.001,
            help="A terminal silent this long while its site's others report has stopped.",
        ),
    ] = 15.0,
    include_simulated: Annotated[
        bool,
        typer.Option(
            "--include-simulated",
            help="Also judge rows of the simulation (demo, backfill, sample data, simulated "
            "terminals); they are left out by default.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The Phase 3 data-quality gate of the eight analytics tables; exits 1 when a table
    misses a threshold, so it can gate a cron job or CI."""
    from datetime import timedelta

    from homepot.quality import report as quality_report
    from homepot.quality.service import QualityReport, Thresholds, assess_quality

    thresholds = Thresholds(
        min_rows=min_rows,
        max_staleness=timedelta(hours=max_staleness_hours),
        max_null_rate=max_null_rate,
        stopped_after=timedelta(minutes=stopped_after_minutes),
    )

    async def assess(engine: AsyncEngine) -> QualityReport:
        async with engine.connect() as connection:
            return await assess_quality(connection, thresholds, include_simulated=include_simulated)

    result = with_engine(settings_from(ctx), assess)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        console = stdout_console()
        console.print(quality_report.quality_table(result))
        details = quality_report.quality_details(result)
        if details is not None:
            console.print(details)
        if result.provenance_note is not None:
            console.print(Text(result.provenance_note, style="bold yellow"))
    if not result.passed:
        raise fail(f"quality gate failed: {result.summary()}")


def validate(
    url: Annotated[str, typer.Option("--url", help="The HOMEPOT server's base URL.")] = (
        "http://127.0.0.1:8000"
    ),
    token: Annotated[
        str | None,
        typer.Option(envvar="HOMEPOT_TOKEN", help="An admin's bearer token.", show_default=False),
    ] = None,
    email: Annotated[
        str,
        typer.Option(envvar="HOMEPOT_VALIDATE_EMAIL", help="Log in as this admin."),
    ] = DEMO_ADMIN_EMAIL,
    password: Annotated[
        str | None,
        typer.Option(
            envvar="HOMEPOT_VALIDATE_PASSWORD",
            help="The admin's password (`homepot demo` prints the demo admin's).",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        float,
        typer.Option("--wait", min=0, max=3600, help="Seconds to wait for streams a fleet fills."),
    ] = 60.0,
    window_minutes: Annotated[
        float,
        typer.Option("--window-minutes", min=1, help="Count events of the last N minutes."),
    ] = 60.0,
    since_start: Annotated[
        bool,
        typer.Option(
            "--since-start",
            help="Count only events written after the validation started (not older data).",
        ),
    ] = False,
) -> None:
    """Check that analytics collection works on a running server: health, test API calls,
    every analytics endpoint, and a summary of what each of the eight streams collected.
    Exits 1 when a stream collected nothing."""
    from datetime import timedelta

    import httpx

    from homepot.quality import report as quality_report
    from homepot.quality.validate import (
        ValidationConfig,
        ValidationFailed,
        ValidationResult,
    )
    from homepot.quality.validate import validate as run_validation

    if token is None and password is None:
        raise fail(
            "no credentials: pass --token (or HOMEPOT_TOKEN), or --password "
            "(or HOMEPOT_VALIDATE_PASSWORD) of the admin --email",
            EXIT_USAGE,
        )
    config = ValidationConfig(
        url=url.rstrip("/"),
        token=token,
        email=email,
        password=password,
        wait_seconds=wait,
        window=timedelta(minutes=window_minutes),
        since_start=since_start,
    )
    console = stdout_console()

    async def run() -> ValidationResult:
        async with httpx.AsyncClient(base_url=config.url, timeout=30) as http:
            return await run_validation(http, config, progress=console.print)

    try:
        result = asyncio.run(run())
    except ValidationFailed as exc:
        raise fail(str(exc)) from None
    console.print(quality_report.calls_table(result))
    console.print(quality_report.validation_table(result))
    if not result.passed:
        raise fail(
            f"no rows collected by: {', '.join(result.missing)} "
            f"(waited {result.waited_seconds:g} s)"
        )
    console.print(f"All {len(result.streams)} analytics streams are collecting.")
