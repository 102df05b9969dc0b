"""`homepot insights`: scan stored metrics for anomaly episodes, train the failure-risk model."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from homepot.cli.common import (
    EXIT_USAGE,
    JsonOption,
    fail,
    in_transaction,
    settings_from,
    stdout_console,
    with_engine,
)

insights_app = typer.Typer(
    help="Insights from the collected data: anomaly scans and the failure-risk model.",
    no_args_is_help=True,
)

_DURATION = re.compile(r"^\s*(\d+)\s*(m|min|h|d)\s*$")


def parse_horizon(text: str) -> timedelta:
    """``90m``, ``2h`` or ``1d`` as a timedelta; ValueError naming the accepted forms."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; use minutes, hours or days: 90m, 2h, 1d")
    amount, unit = int(match[1]), match[2]
    horizon = {"m": timedelta(minutes=amount), "min": timedelta(minutes=amount),
               "h": timedelta(hours=amount), "d": timedelta(days=amount)}[unit]  # fmt: skip
    if not timedelta(minutes=15) <= horizon <= timedelta(days=7):
        raise ValueError(f"{text!r}: the horizon must be between 15 minutes and 7 days")
    return horizon


def _bound(name: str, value: str | None, default: datetime) -> datetime:
    from homepot.kit.timeranges import TimeRange, parse_time_bound

    if value is None:
        return default
    try:
        moment = TimeRange.between(parse_time_bound(value), None).start
    except ValueError as exc:
        raise fail(f"{name}: {exc}", EXIT_USAGE) from None
    assert moment is not None
    return moment


@insights_app.command("train")
def insights_train(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", help="Where to write the model file.", show_default=False)
    ],
    since: Annotated[
        str | None,
        typer.Option(help="Start of the history to learn from (default: 14 days before --until)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="End of the history to learn from (default: now).")
    ] = None,
    horizon: Annotated[
        str, typer.Option(help="How far ahead a failure is predicted, e.g. 90m, 2h or 1d.")
    ] = "2h",
    seed: Annotated[int, typer.Option(help="Random seed of the model.")] = 0,
    include_simulated: Annotated[
        bool,
        typer.Option(
            "--include-simulated",
            help="Learn from the simulation's rows too (demo, backfill); real rows only without.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Train the failure-risk model on this database's history and write it to --out. A
    failure is a device entering error or going offline outside its site's maintenance window,
    or a critical error it reports. The last quarter of the range is held out to validate the
    model; its figures are printed and stored in the file. Point the server at the file with
    HOMEPOT_INSIGHTS__MODEL_PATH."""
    from homepot.db import utcnow
    from homepot.insights.risk import ModelError
    from homepot.insights.scoring import train_from_history

    try:
        ahead = parse_horizon(horizon)
    except ValueError as exc:
        raise fail(f"--horizon: {exc}", EXIT_USAGE) from None
    now = utcnow()
    end = _bound("--until", until, now)
    start = _bound("--since", since, end - timedelta(days=14))
    if start >= end:
        raise fail("--since must be before --until", EXIT_USAGE)
    try:
        report = in_transaction(
            settings_from(ctx),
            lambda session: train_from_history(
                session,
                since=start,
                until=end,
                horizon=ahead,
                out=out,
                now=now,
                seed=seed,
                include_simulated=include_simulated,
            ),
        )
    except ModelError as exc:
        raise fail(str(exc)) from None
    summary = {
        "model": str(report.path),
        "trained_since": start.isoformat(),
        "trained_until": end.isoformat(),
        "horizon": horizon,
        "samples": report.samples,
        "failures": report.failures,
        "validation": report.validation,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(
        f"Wrote {report.path}: {report.samples} samples, {report.failures} with a failure "
        f"within {horizon}."
    )
    validation = report.validation
    if validation.get("roc_auc") is not None:
        typer.echo(
            f"Held-out period from {validation['held_out_from']}: ROC AUC "
            f"{validation['roc_auc']}, precision in the top 5 % "
            f"{validation['precision_top_5pct']} (base rate {validation['base_rate']})."
        )
    else:
        typer.echo(f"Not validated: {validation.get('note', 'no held-out failures')}.")


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
    from homepot.db import utcnow
    from homepot.insights.service import scan
    from homepot.kit.timeranges import TimeRange, parse_time_bound

    settings = settings_from(ctx)
    try:
        bounds = TimeRange.between(
            parse_time_bound(since) if since else None, parse_time_bound(until) if until else None
        )
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    end = bounds.end or utcnow()
    start = bounds.start or end - timedelta(hours=24)
    if start >= end:
        raise fail(
            f"--since {start.isoformat()} is not before --until {end.isoformat()}", EXIT_USAGE
        )

    async def run(engine: AsyncEngine) -> dict[str, object]:
        report = await scan(engine, start, end, chunk_devices=settings.insights.chunk_devices)
        return report.as_dict()

    summary = with_engine(settings, run)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console = stdout_console()
    if "skipped" in summary:
        console.print(f"Skipped: {summary['skipped']}.")
        return
    console.print(
        f"Scanned {summary['devices']} devices, {summary['bins']} five-minute bins from "
        f"{start.isoformat()} to {end.isoformat()} in {summary['seconds']} s: "
        f"{summary['inserted']} new episodes, {summary['updated']} extended, "
        f"{summary['closed']} closed."
    )
