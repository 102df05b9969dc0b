"""`homepot simulate`: a simulated fleet against a server, or a backfill of history."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from alembic.util import CommandError
from rich.table import Table

from homepot.cli.common import (
    EXIT_USAGE,
    ServerOption,
    database_errors,
    fail,
    settings_from,
    stdout_console,
    until_interrupted,
    with_engine,
)
from homepot.db import run_migrations
from homepot.kit.urls import mask_url_credentials
from homepot.simulation import fleet_config, live
from homepot.simulation.model import SimulationError

# --- agent and simulator -------------------------------------------------------------------

simulate_app = typer.Typer(
    help="Run a simulated fleet against a server, or backfill days of history.",
)


@simulate_app.callback(invoke_without_command=True)
def simulate(
    ctx: typer.Context,
    server: ServerOption = "http://127.0.0.1:8000",
    sites: Annotated[int, typer.Option(min=1, help="Sites (M).")] = 3,
    devices: Annotated[int, typer.Option(min=1, help="Terminals (N), spread over the sites.")] = 12,
    speed: Annotated[
        float, typer.Option(min=0.01, max=10_000, help="Time compression: 60 = an hour a minute.")
    ] = 1.0,
    fault_rate: Annotated[
        float, typer.Option("--fault-rate", min=0, help="Faults per terminal per simulated day.")
    ] = 0.5,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="Append the injected faults here (.csv, else JSON lines)."),
    ] = None,
    schedules: Annotated[
        Path | None,
        typer.Option(
            "--schedules",
            help="Weekly schedules as JSON (what GET /api/v1/sites/{id}/schedules returns, "
            "a list of them); default: read from the API.",
        ),
    ] = None,
    interval: Annotated[
        float, typer.Option(min=1, help="Simulated seconds between a terminal's reports.")
    ] = 30.0,
    seed: Annotated[int | None, typer.Option(help="Random seed, for a repeatable run.")] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="HOMEPOT_TOKEN", help="An operator's or admin's bearer token."),
    ] = None,
    admin_email: Annotated[str | None, typer.Option(help="Log in as this operator/admin.")] = None,
    admin_password: Annotated[
        str | None, typer.Option(envvar="HOMEPOT_ADMIN_PASSWORD", help="Their password.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=1, help="Stop after this many seconds (default: Ctrl-C).")
    ] = None,
    operator: Annotated[
        bool, typer.Option("--operator/--no-operator", help="Also simulate a dashboard user.")
    ] = False,
    max_in_flight: Annotated[
        int,
        typer.Option(
            "--max-in-flight",
            min=1,
            help="Reports in flight at once (and kept-alive HTTP connections); raise it "
            "when the fleet reports less often than it should.",
        ),
    ] = 64,
) -> None:
    """Run N simulated terminals across M sites, speaking the device protocol (HTTP, MQTT
    when the server offers it). Sites, schedules and bootstrap keys are created when missing,
    which needs an operator or admin (--token, or --admin-email/--admin-password)."""
    if ctx.invoked_subcommand is not None:
        return
    import logging

    import httpx

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    config = fleet_config.SimulationConfig(
        server_url=server.rstrip("/"),
        sites=sites,
        devices=devices,
        speed=speed,
        fault_rate=fault_rate,
        labels=labels,
        schedules=schedules,
        interval_seconds=interval,
        seed=seed,
        token=token,
        admin_email=admin_email,
        admin_password=admin_password,
        operator=operator,
        max_concurrent_reports=max_in_flight,
    )
    try:
        config.validate()
    except SimulationError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    console = stdout_console()

    async def run(stop: asyncio.Event) -> fleet_config.SimulationStats:
        async with (
            httpx.AsyncClient(
                base_url=config.server_url,
                timeout=30,
                # The operator's calls are the simulation's too: the server marks them simulated.
                headers={"User-Agent": fleet_config.SIM_AGENT_VERSION},
            ) as http,
            fleet_config.device_connection_pools(config) as pools,
        ):
            simulator = live.FleetSimulator(config, http, device_http=pools)
            await simulator.setup()
            console.print(
                f"{simulator.stats.registered} terminals registered in {sites} sites; "
                "reporting (Ctrl-C stops)."
            )
            if duration is not None:
                asyncio.get_running_loop().call_later(duration, stop.set)
            return await simulator.run(stop)

    try:
        stats = until_interrupted(run)
    except SimulationError as exc:
        raise fail(str(exc)) from None
    console.print(f"Simulation finished: {stats.summary()}.")
    if labels is not None:
        console.print(f"Fault labels: {labels}")


@simulate_app.command("backfill")
def simulate_backfill(
    ctx: typer.Context,
    days: Annotated[float, typer.Option(help="Days of history, ending now (at most 7).")] = 5.0,
    sites: Annotated[
        int,
        typer.Option(min=1, help="Stores; 143 or more give site_operating_schedules 1,000 rows."),
    ] = 150,
    devices: Annotated[int, typer.Option(min=1, help="Terminals, spread over the stores.")] = 300,
    interval_minutes: Annotated[
        float, typer.Option("--interval-minutes", help="Minutes between a terminal's samples.")
    ] = 5.0,
    fault_rate: Annotated[
        float, typer.Option("--fault-rate", min=0, help="Faults per terminal per day.")
    ] = 0.3,
    labels: Annotated[
        Path,
        typer.Option("--labels", help="Where the injected faults are listed (.csv or JSON lines)."),
    ] = Path("backfill-labels.csv"),
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, the same history.")] = 1,
    site_prefix: Annotated[
        str, typer.Option("--site-prefix", help="Store ids are <prefix>-001, <prefix>-002, ...")
    ] = "store",
) -> None:
    """Write days of realistic fleet history into the database, timestamps in the past."""
    from homepot.simulation.backfill import BackfillConfig, BackfillError, run_backfill

    settings = settings_from(ctx)
    config = BackfillConfig(
        days=days,
        sites=sites,
        devices=devices,
        interval_minutes=interval_minutes,
        fault_rate=fault_rate,
        seed=seed,
        labels=labels,
        site_prefix=site_prefix,
    )
    try:
        config.validate()
    except BackfillError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    with database_errors(settings):
        try:
            run_migrations(settings.database_url)
        except CommandError as exc:
            raise fail(f"migrations failed: {mask_url_credentials(str(exc))}") from None
    console = stdout_console()
    console.print(f"Backfilling {days:g} days for {devices} terminals in {sites} stores ...")
    try:
        result = with_engine(
            settings, lambda engine: run_backfill(engine, config, progress=console.print)
        )
    except BackfillError as exc:
        raise fail(str(exc)) from None
    table = Table(
        title=f"History from {result.start:%Y-%m-%d %H:%M} to {result.end:%Y-%m-%d %H:%M} UTC"
    )
    table.add_column("Table")
    table.add_column("Rows added", justify="right")
    for name, rows in {**result.core, **result.events}.items():
        table.add_row(name, f"{rows:,}")
    console.print(table)
    console.print(f"{result.faults} injected faults are listed in {labels}.")
