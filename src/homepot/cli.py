"""The ``homepot`` command: serve the API, set up and inspect the database, manage users.

Each command is a thin call into a module (``homepot.db``, ``homepot.sample_data``,
``homepot.dbtools``, ``homepot.auth.service``); async work runs with ``asyncio.run``. The
database comes from the settings (HOMEPOT_DATABASE_URL, default ``./homepot.db``) unless the
global ``--database-url`` option overrides it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from alembic.util import CommandError
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from homepot import dbtools, sample_data
from homepot.audit.service import Actor
from homepot.auth import service as auth_service
from homepot.auth.models import Role
from homepot.auth.schemas import UserCreate
from homepot.config import Settings, get_settings
from homepot.db import create_engine, create_session_factory, run_migrations
from homepot.fleet import simulator as fleet_simulator
from homepot.kit.urls import mask_url_credentials
from homepot.retention.policy import (
    RetentionPolicyError,
    TablePolicy,
    parse_overrides,
    resolve_policy,
)

T = TypeVar("T")

# Exit codes: 1 = the operation failed, 2 = the command line asked for something impossible.
EXIT_FAILED = 1
EXIT_USAGE = 2
SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
_URL_FORMS = (
    "use sqlite:///path/to/file.db or postgresql://user@host:5432/dbname "
    "(in HOMEPOT_DATABASE_URL or --database-url)"
)
# Characters shown per value by `db show`, in a table and one row per block; --json shows all.
CELL_WIDTH = 40
RECORD_CELL_WIDTH = 400

app = typer.Typer(
    name="homepot",
    help="HOMEPOT: fleet management and analytics for point-of-sale terminals.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(
    help="Set up and inspect the database (migrations, sample data, counts, rows).",
    no_args_is_help=True,
)
users_app = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")


# --- plumbing ------------------------------------------------------------------------------


def _out() -> Console:
    # Made per call so that COLUMNS and the current stdout are honoured.
    return Console(highlight=False, markup=False)


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    Console(stderr=True, highlight=False, markup=False, soft_wrap=True).print(
        Text("Error: ", style="bold red") + message
    )
    return typer.Exit(code)


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def _database_errors(settings: Settings) -> Iterator[None]:
    """A database that is unreachable or not set up is an error message, not a traceback."""
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        hint = ""
        if "no such table" in detail or ("relation" in detail and "does not exist" in detail):
            hint = " (is the database initialised? run `homepot db init`)"
        raise _fail(f"database {_safe_url(settings.database_url)}: {detail}{hint}") from None


def _run(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run ``work`` with an engine of its own, disposed of afterwards."""

    async def main() -> T:
        engine = create_engine(settings.database_url)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    with _database_errors(settings):
        return asyncio.run(main())


def _in_transaction(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one session and commit it: the command is the edge that owns it."""

    async def transaction(engine: AsyncEngine) -> T:
        async with create_session_factory(engine)() as session, session.begin():
            return await work(session)

    return _run(settings, transaction)


@app.callback()
def main(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="Database to use, overriding HOMEPOT_DATABASE_URL "
            "(e.g. sqlite:///./homepot.db or postgresql://user@host/homepot).",
            show_default=False,
        ),
    ] = None,
) -> None:
    try:
        settings = Settings(database_url=database_url) if database_url else Settings()
    except ValidationError as exc:
        problems = "; ".join(error["msg"] for error in exc.errors())
        raise _fail(f"invalid settings: {problems}", EXIT_USAGE) from None
    try:
        url = make_url(settings.database_url)
    except ArgumentError:
        raise _fail(f"the database URL is not a URL; {_URL_FORMS}", EXIT_USAGE) from None
    if url.drivername not in SUPPORTED_DRIVERS:
        shown = url.render_as_string(hide_password=True)
        raise _fail(f"unsupported database URL {shown}; {_URL_FORMS}", EXIT_USAGE)
    ctx.obj = settings


# --- serve ---------------------------------------------------------------------------------


def _serve(settings: Settings, host: str, port: int, reload: bool) -> None:
    import uvicorn

    # The app factory reads its settings from the environment, also in a reloader's child.
    os.environ["HOMEPOT_DATABASE_URL"] = settings.database_url
    get_settings.cache_clear()
    # `homepot demo` asks for the app with its simulated fleet (see fleet.simulator).
    demo = bool(os.environ.get(fleet_simulator.DEMO_FLEET_ENV))
    uvicorn.run(
        "homepot.fleet.simulator:create_demo_app" if demo else "homepot.main:create_app",
        factory=True,
        host=host,
        port=port,
        reload=reload,
        reload_dirs=[str(Path(__file__).parent)] if reload else None,
        # Client addresses are the app's business (HOMEPOT_TRUSTED_PROXIES), so uvicorn must
        # not rewrite them from X-Forwarded-For on its own.
        proxy_headers=False,
    )


HostOption = Annotated[str, typer.Option(help="Address to listen on.")]
PortOption = Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")]


@app.command()
def serve(
    ctx: typer.Context,
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    reload: Annotated[
        bool, typer.Option("--reload/--no-reload", help="Restart when the code changes.")
    ] = False,
) -> None:
    """Run the API server (uvicorn)."""
    os.environ.pop(fleet_simulator.DEMO_FLEET_ENV, None)
    _serve(_settings(ctx), host, port, reload)


# --- db ------------------------------------------------------------------------------------


def _print_credentials(credentials: list[sample_data.Credentials]) -> None:
    if not credentials:
        return
    table = Table(title="New users (passwords are shown only now)")
    for heading in ("E-mail", "Role", "Password"):
        table.add_column(heading)
    for user in credentials:
        table.add_row(user.email, user.role.value, user.password)
    _out().print(table)


def _init_database(settings: Settings, *, with_sample_data: bool) -> list[sample_data.Credentials]:
    """Migrate, and load the sample set once; returns the users it created."""
    console = _out()
    with _database_errors(settings):
        try:
            run_migrations(settings.database_url)
        except CommandError as exc:
            raise _fail(f"migrations failed: {mask_url_credentials(str(exc))}") from None
    console.print(f"Database {_safe_url(settings.database_url)} is at the latest schema.")
    if not with_sample_data:
        return []
    result = _in_transaction(settings, sample_data.load_sample_data)
    if not result.loaded:
        console.print(
            f"Sample data already present (loaded {result.loaded_at.isoformat()}); nothing added."
        )
        return []
    added = sum(result.added.values())
    tables = sum(1 for rows in result.added.values() if rows)
    console.print(
        f"Sample data loaded: {added:,} rows in {tables} tables (see them with `homepot db count`)."
    )
    _print_credentials(result.credentials)
    return result.credentials


@db_app.command("init")
def db_init(
    ctx: typer.Context,
    with_sample_data: Annotated[
        bool,
        typer.Option(
            "--sample-data",
            help="Also add sample rows to every table, once (running it again adds nothing).",
        ),
    ] = False,
) -> None:
    """Create or upgrade the schema (Alembic migrations), optionally with sample data."""
    _init_database(_settings(ctx), with_sample_data=with_sample_data)


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


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@db_app.command("count")
def db_count(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Row counts of every table (core, analytics, AI-focused, operational)."""

    async def count(engine: AsyncEngine) -> list[dbtools.TableCount]:
        async with engine.connect() as connection:
            return await dbtools.count_rows(connection)

    counts = _run(_settings(ctx), count)
    if as_json:
        typer.echo(json.dumps({c.table: c.rows for c in counts}, indent=2))
        return
    _out().print(_count_table(counts))


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
    settings = _settings(ctx)
    filters = where or []
    try:
        dbtools.parse_filters(table, filters)  # names and values, before any connection
    except dbtools.InspectionError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None

    async def show(engine: AsyncEngine) -> dbtools.TableRows:
        async with engine.connect() as connection:
            return await dbtools.show_rows(connection, table, limit=limit, where=filters)

    result = _run(settings, show)
    if as_json:
        typer.echo(json.dumps(result.rows, default=_json_value, indent=2))
        return
    condition = f" where {' and '.join(filters)}" if filters else ""
    count = f"{len(result.rows)} row{'' if len(result.rows) == 1 else 's'}"
    title = f"{result.table}{condition}: {count}, {result.order}"
    console = _out()
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


# --- users ---------------------------------------------------------------------------------


def _valid_user(email: str, password: str, role: Role) -> UserCreate:
    """The same rules as the API (a valid e-mail, a password of at least 8 characters)."""
    try:
        return UserCreate(email=email, password=password, role=role)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise _fail(problems, EXIT_USAGE) from None


EmailOption = Annotated[str, typer.Option("--email", help="The user's e-mail (the login name).")]
PasswordOption = Annotated[
    str,
    typer.Option(
        "--password",
        prompt=True,
        hide_input=True,
        confirmation_prompt=True,
        help="At least 8 characters; asked for when left out.",
    ),
]


@users_app.command("create-admin")
def users_create_admin(ctx: typer.Context, email: EmailOption, password: PasswordOption) -> None:
    """Create an admin; does nothing if a user with that e-mail exists (safe to repeat)."""
    body = _valid_user(email, password, Role.admin)

    async def ensure(session: AsyncSession) -> tuple[str, Role, bool]:
        user, created = await auth_service.ensure_user(
            session, email=body.email, password=body.password, role=Role.admin
        )
        return user.email, user.role, created

    stored_email, role, created = _in_transaction(_settings(ctx), ensure)
    if created:
        _out().print(f"Created admin {stored_email}.")
    elif role is Role.admin:
        _out().print(f"Admin {stored_email} already exists; nothing changed (password unchanged).")
    else:
        raise _fail(
            f"{stored_email} already exists with role {role.value}, not admin; nothing changed"
        )


@users_app.command("create")
def users_create(
    ctx: typer.Context,
    email: EmailOption,
    password: PasswordOption,
    role: Annotated[Role, typer.Option("--role", help="What the user may do.")] = Role.viewer,
) -> None:
    """Create a user with a role (admin, operator or viewer)."""
    body = _valid_user(email, password, role)

    async def create(session: AsyncSession) -> str:
        user = await auth_service.create_user(
            session, email=body.email, password=body.password, role=body.role
        )
        return user.email

    try:
        stored_email = _in_transaction(_settings(ctx), create)
    except auth_service.EmailTaken as exc:
        raise _fail(str(exc)) from None
    _out().print(f"Created {body.role.value} {stored_email}.")


# --- demo ----------------------------------------------------------------------------------


def _print_demo_login(credentials: sample_data.Credentials | None, host: str, port: int) -> None:
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown_host}:{port}"
    email = sample_data.DEMO_ADMIN_EMAIL
    console = _out()
    console.print()
    console.print(Text(f"Dashboard: {base}/", style="bold"))
    console.print(Text(f"API docs:  {base}/docs", style="bold"))
    if credentials is None:
        console.print(
            f"Log in as {email} with the password printed when it was created, or make "
            "another admin:\n  homepot users create-admin --email you@example.com"
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


@app.command()
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
    """Set up a database with sample data and a demo admin, then serve the API with a
    simulated fleet (3 sites, 12 terminals) that fills every analytics table within a minute."""
    settings = _settings(ctx)
    if fleet and devices < sites:
        raise _fail("--devices must be at least --sites (one terminal per site)", EXIT_USAGE)
    created = _init_database(settings, with_sample_data=True)
    admin = next((c for c in created if c.email == sample_data.DEMO_ADMIN_EMAIL), None)
    if admin is None:
        admin = _in_transaction(settings, sample_data.ensure_demo_admin)
    _print_demo_login(admin, host, port)
    if not fleet:
        os.environ.pop(fleet_simulator.DEMO_FLEET_ENV, None)
        _serve(settings, host, port, reload=False)
        return
    fleet_config = fleet_simulator.DemoFleet(
        sites=sites,
        devices=devices,
        server_url=f"http://{host}:{port}",
        admin_email=sample_data.DEMO_ADMIN_EMAIL,
    )
    # The app factory reads it from the environment, as it reads the database URL.
    os.environ[fleet_simulator.DEMO_FLEET_ENV] = fleet_config.model_dump_json()
    _out().print(
        f"Simulated fleet: {devices} terminals in {sites} sites, reporting every "
        f"{fleet_config.report_seconds:g} s, with an operator at the dashboard. "
        "Watch the tables fill: homepot db count"
    )
    _serve(settings, host, port, reload=False)


# --- agent and simulator -------------------------------------------------------------------

simulate_app = typer.Typer(
    help="Run a simulated fleet against a server, or backfill days of history.",
)
app.add_typer(simulate_app, name="simulate")

ServerOption = Annotated[
    str, typer.Option("--server", help="The HOMEPOT server's base URL.", show_default=True)
]


def _until_interrupted(work: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run ``work(stop)``; SIGINT or SIGTERM sets ``stop`` so that it can finish cleanly."""
    import signal

    async def main() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await work(stop)

    return asyncio.run(main())


@app.command()
def agent(
    server: ServerOption,
    site_id: Annotated[str, typer.Option("--site-id", help="The terminal's site.")],
    device_id: Annotated[str, typer.Option("--device-id", help="The terminal's id.")],
    bootstrap_key: Annotated[
        str | None,
        typer.Option(
            "--bootstrap-key",
            envvar="HOMEPOT_BOOTSTRAP_KEY",
            help="The site's bootstrap key; needed only for the first registration.",
        ),
    ] = None,
    state_dir: Annotated[
        Path,
        typer.Option(
            "--state-dir",
            help="Where the agent keeps its API key and its retry queue.",
        ),
    ] = Path("var/agent"),
    interval: Annotated[
        float, typer.Option("--interval", min=1, max=3600, help="Seconds between reports.")
    ] = 30.0,
) -> None:
    """Run the terminal agent: report this host's metrics, run jobs, never lose a message."""
    import logging

    from homepot.fleet.agent import Agent, AgentConfig, AgentError
    from homepot.fleet.client import DeviceClient

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = AgentConfig(
        server_url=server.rstrip("/"),
        site_id=site_id,
        device_id=device_id,
        bootstrap_key=bootstrap_key,
        state_dir=state_dir,
        interval_seconds=interval,
    )

    async def run(stop: asyncio.Event) -> None:
        client = DeviceClient.connect(config.server_url)
        try:
            await Agent(config, client).run(stop)
        finally:
            await client.aclose()

    try:
        _until_interrupted(run)
    except AgentError as exc:
        raise _fail(str(exc)) from None


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
    config = fleet_simulator.SimulationConfig(
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
    except fleet_simulator.SimulationError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    console = _out()

    async def run(stop: asyncio.Event) -> fleet_simulator.SimulationStats:
        async with (
            httpx.AsyncClient(base_url=config.server_url, timeout=30) as http,
            fleet_simulator.device_connection_pools(config) as pools,
        ):
            simulator = fleet_simulator.FleetSimulator(config, http, device_http=pools)
            await simulator.setup()
            console.print(
                f"{simulator.stats.registered} terminals registered in {sites} sites; "
                "reporting (Ctrl-C stops)."
            )
            if duration is not None:
                asyncio.get_running_loop().call_later(duration, stop.set)
            return await simulator.run(stop)

    try:
        stats = _until_interrupted(run)
    except fleet_simulator.SimulationError as exc:
        raise _fail(str(exc)) from None
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
    from homepot.fleet.backfill import BackfillConfig, BackfillError, run_backfill

    settings = _settings(ctx)
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
        raise _fail(str(exc), EXIT_USAGE) from None
    with _database_errors(settings):
        try:
            run_migrations(settings.database_url)
        except CommandError as exc:
            raise _fail(f"migrations failed: {mask_url_credentials(str(exc))}") from None
    console = _out()
    console.print(f"Backfilling {days:g} days for {devices} terminals in {sites} stores ...")
    try:
        result = _run(settings, lambda engine: run_backfill(engine, config, progress=console.print))
    except BackfillError as exc:
        raise _fail(str(exc)) from None
    table = Table(
        title=f"History from {result.start:%Y-%m-%d %H:%M} to {result.end:%Y-%m-%d %H:%M} UTC"
    )
    table.add_column("Table")
    table.add_column("Rows added", justify="right")
    for name, rows in {**result.core, **result.events}.items():
        table.add_row(name, f"{rows:,}")
    console.print(table)
    console.print(f"{result.faults} injected faults are listed in {labels}.")


# --- retention -----------------------------------------------------------------------------

retention_app = typer.Typer(
    help="Prune old analytics and operational rows (HOMEPOT_RETENTION_DAYS and "
    "HOMEPOT_RETENTION__TABLES set how long each table keeps them).",
    no_args_is_help=True,
)
app.add_typer(retention_app, name="retention")

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


def _cli_actor() -> Actor:
    """Who runs the command, for the audit row: ``cli:<OS user>``."""
    import getpass

    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return Actor(user_id=f"cli:{user}"[:64], ip_address=None)


def _retention_policy(settings: Settings, tables: list[str] | None) -> list[TablePolicy]:
    try:
        return resolve_policy(settings, parse_overrides(tables or []))
    except RetentionPolicyError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None


@retention_app.command("show")
def retention_show(
    ctx: typer.Context, tables: TableOverrideOption = None, as_json: JsonOption = False
) -> None:
    """How long each pruned table keeps its rows, and which setting decided it."""
    settings = _settings(ctx)
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
    console = _out()
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

    settings = _settings(ctx)
    policy = _retention_policy(settings, tables)
    moment = None
    if as_of is not None:
        try:
            moment = TimeRange.between(parse_time_bound(as_of), None).start
        except ValueError as exc:
            raise _fail(f"--as-of: {exc}", EXIT_USAGE) from None
        if moment is not None and moment > utcnow():
            raise _fail(
                f"--as-of {moment.isoformat()} is in the future; periods count back from now "
                "or an earlier moment",
                EXIT_USAGE,
            )
    actor = _cli_actor()
    try:
        report = _run(
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
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    console = _out()
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


# --- data quality and validation -----------------------------------------------------------


@app.command()
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
            return await assess_quality(connection, thresholds)

    result = _run(_settings(ctx), assess)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        console = _out()
        console.print(quality_report.quality_table(result))
        details = quality_report.quality_details(result)
        if details is not None:
            console.print(details)
    if not result.passed:
        raise _fail(f"quality gate failed: {result.summary()}")


@app.command()
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
    ] = sample_data.DEMO_ADMIN_EMAIL,
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
        raise _fail(
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
    console = _out()

    async def run() -> ValidationResult:
        async with httpx.AsyncClient(base_url=config.url, timeout=30) as http:
            return await run_validation(http, config, progress=console.print)

    try:
        result = asyncio.run(run())
    except ValidationFailed as exc:
        raise _fail(str(exc)) from None
    console.print(quality_report.calls_table(result))
    console.print(quality_report.validation_table(result))
    if not result.passed:
        raise _fail(
            f"no rows collected by: {', '.join(result.missing)} "
            f"(waited {result.waited_seconds:g} s)"
        )
    console.print(f"All {len(result.streams)} analytics streams are collecting.")


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


@app.command("export")
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
) -> None:
    """Export analytics tables for the AI team, pseudonymized (user ids keyed with
    HOMEPOT_EXPORT_KEY, IPs cut to /24 or /48, free text scrubbed), with a manifest."""
    import time as clock

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from homepot.export import service as export_service
    from homepot.export.pseudonym import ExportKeyError, pseudonymizer_from

    settings = _settings(ctx)
    key = settings.export_key.get_secret_value() if settings.export_key is not None else None
    try:
        request = export_service.build_request(tables, since, until, fmt)
        pseudonymizer = pseudonymizer_from(key)
        export_service.prepare_out_dir(out, request, force=force)
    except (export_service.ExportError, ExportKeyError) as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    started = clock.perf_counter()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        manifest = _run(
            settings,
            lambda engine: export_service.export_tables(
                engine, request, out, pseudonymizer, progress=_ExportProgressBar(bar)
            ),
        )
    seconds = clock.perf_counter() - started
    actor = _cli_actor()

    async def audit(session: AsyncSession) -> None:
        export_service.write_export_audit(session, actor, manifest)

    _in_transaction(settings, audit)
    table = Table(title=f"Export {manifest.export_id} ({manifest.format}) in {out}")
    table.add_column("Table")
    table.add_column("File")
    table.add_column("Rows", justify="right")
    for name, entry in manifest.tables.items():
        table.add_row(name, entry.file, f"{entry.rows:,}")
    total = sum(entry.rows for entry in manifest.tables.values())
    table.add_section()
    table.add_row("total", "manifest.json", f"{total:,}")
    console = _out()
    console.print(table)
    console.print(
        f"{total:,} rows in {seconds:.1f} s; pseudonyms under key id {manifest.key_id} "
        "(the same key keeps them joinable across exports)."
    )
