"""`homepot serve` and `homepot demo`: the API, alone or with a simulated fleet."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from homepot.auth.service import Credentials
from homepot.cli.common import (
    EXIT_USAGE,
    fail,
    homepot_command,
    in_transaction,
    settings_from,
    stdout_console,
    with_engine,
)
from homepot.cli.db import init_database
from homepot.config import Settings, get_settings
from homepot.simulation import demo as demo_fleet
from homepot.simulation.sample import (
    DEMO_ADMIN_EMAIL,
    SampleFleet,
    ensure_demo_admin,
    loaded_fleet_size,
)

# --- serve ---------------------------------------------------------------------------------


def _serve(settings: Settings, host: str, port: int, reload: bool, workers: int = 1) -> None:
    import uvicorn

    if workers > 1 and settings.is_sqlite:
        # One SQLite file has one writer, and its background tasks have no lock that other
        # processes could see: several workers need PostgreSQL.
        raise fail(
            f"--workers {workers} needs PostgreSQL (HOMEPOT_DATABASE_URL=postgresql://...);"
            " the embedded SQLite database is served by one process",
            EXIT_USAGE,
        )
    if workers > 1 and reload:
        raise fail("--reload restarts one process; use it without --workers", EXIT_USAGE)

    # The app factory reads its settings from the environment, also in a reloader's child.
    os.environ["HOMEPOT_DATABASE_URL"] = settings.database_url
    if settings.database_read_url:
        os.environ["HOMEPOT_DATABASE_READ_URL"] = settings.database_read_url
    get_settings.cache_clear()
    # `homepot demo` asks for the app with its simulated fleet (see homepot.simulation.demo).
    demo = bool(os.environ.get(demo_fleet.DEMO_FLEET_ENV))
    uvicorn.run(
        "homepot.simulation.demo:create_demo_app" if demo else "homepot.main:create_app",
        factory=True,
        host=host,
        port=port,
        reload=reload,
        reload_dirs=[str(Path(__file__).parent.parent)] if reload else None,
        # Each worker is a process with its own app; the background singletons run in one of
        # them at a time (PostgreSQL advisory locks, see homepot.kit.singleton).
        workers=workers if workers > 1 else None,
        # Client addresses are the app's business (HOMEPOT_TRUSTED_PROXIES), so uvicorn must
        # not rewrite them from X-Forwarded-For on its own.
        proxy_headers=False,
    )


HostOption = Annotated[str, typer.Option(help="Address to listen on.")]
PortOption = Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")]


def serve(
    ctx: typer.Context,
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    reload: Annotated[
        bool, typer.Option("--reload/--no-reload", help="Restart when the code changes.")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Server processes on the port (PostgreSQL only); each background task runs"
            " in one of them at a time.",
        ),
    ] = 1,
) -> None:
    """Run the API server (uvicorn)."""
    os.environ.pop(demo_fleet.DEMO_FLEET_ENV, None)
    _serve(settings_from(ctx), host, port, reload, workers)


# --- demo ----------------------------------------------------------------------------------


def _print_demo_login(credentials: Credentials | None, host: str, port: int) -> None:
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown_host}:{port}"
    email = DEMO_ADMIN_EMAIL
    console = stdout_console()
    console.print()
    console.print(Text(f"Dashboard: {base}/", style="bold"))
    console.print(Text(f"API docs:  {base}/docs", style="bold"))
    if credentials is None:
        console.print(
            f"Log in as {email} with the password printed when it was created, or make "
            f"another admin:\n  {homepot_command()} users create-admin --email you@example.com"
        )
        password = "PASSWORD"
    else:
        console.print(f"Log in as {email} with password {credentials.password}")
        password = credentials.password
    console.print(
        "Get a token:\n"
        f"  TOKEN=$(curl -s -X POST {base}/api/v1/auth/token -d username={email} "
        f"-d password={password} | python3 -c 'import json,sys; "
        'print(json.load(sys.stdin)["access_token"])\')\n'
        "Use it:\n"
        f'  curl -H "Authorization: Bearer $TOKEN" "{base}/api/v1/analytics/requests"',
        markup=False,
        soft_wrap=True,  # commands stay on one line, ready to copy
    )
    console.print()


def demo(
    ctx: typer.Context,
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    fleet: Annotated[
        bool,
        typer.Option("--fleet/--no-fleet", help="Run a simulated fleet in the server's process."),
    ] = True,
    sites: Annotated[int, typer.Option(min=1, max=100, help="Simulated sites.")] = 3,
    devices: Annotated[
        int, typer.Option(min=1, max=1000, help="Simulated terminals (at least one per site).")
    ] = 12,
) -> None:
    """Serve the dashboard and the API with a simulated fleet, ready to look at: the first
    run loads the sample data (two days of the fleet's history) and creates a demo admin, then
    the same terminals report live, so every chart is full from the start."""
    settings = settings_from(ctx)
    if fleet and devices < sites:
        raise fail("--devices must be at least --sites (one terminal per site)", EXIT_USAGE)
    sample = SampleFleet(sites=sites, devices=devices)
    created = init_database(settings, with_sample_data=True, fleet=sample)
    loaded = with_engine(settings, lambda engine: loaded_fleet_size(engine, sample.site_prefix))
    if fleet and loaded is not None and loaded != (sites, devices):
        # The live terminals are those of the history: another size would move them between
        # sites, which a terminal's registration refuses.
        raise fail(
            f"this database's demo fleet has {loaded[0]} sites and {loaded[1]} terminals: "
            f"run the demo with --sites {loaded[0]} --devices {loaded[1]}, or on a fresh "
            "database (--database-url) for another size",
            EXIT_USAGE,
        )
    admin = next((c for c in created if c.email == DEMO_ADMIN_EMAIL), None)
    if admin is None:
        admin = in_transaction(settings, ensure_demo_admin)
    _print_demo_login(admin, host, port)
    if not fleet:
        os.environ.pop(demo_fleet.DEMO_FLEET_ENV, None)
        _serve(settings, host, port, reload=False)
        return
    fleet_config = demo_fleet.DemoFleet(
        sites=sites,
        devices=devices,
        server_url=f"http://{host}:{port}",
        admin_email=DEMO_ADMIN_EMAIL,
        site_prefix=sample.site_prefix,
        device_prefix=sample.device_prefix,
        seed=sample.seed,
    )
    # The app factory reads it from the environment, as it reads the database URL.
    os.environ[demo_fleet.DEMO_FLEET_ENV] = fleet_config.model_dump_json()
    stdout_console().print(
        f"Simulated fleet: {devices} terminals in {sites} sites, reporting every "
        f"{fleet_config.report_seconds:g} s, with an operator at the dashboard. "
        f"Watch the tables fill: {homepot_command()} db count",
        soft_wrap=True,
    )
    _serve(settings, host, port, reload=False)
