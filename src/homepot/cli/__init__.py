"""The ``homepot`` command: serve the API, set up and inspect the database, manage users, run
the agent or a simulated fleet, prepare the brokers, apply retention, check data quality and
export.

One module per command group; each command is a thin call into the domain modules, async work
runs with ``asyncio.run``. The database comes from the settings (HOMEPOT_DATABASE_URL, default
``./homepot.db``) unless the global ``--database-url`` option overrides it.
"""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from homepot.cli.agent import agent
from homepot.cli.broker import broker_app
from homepot.cli.common import EXIT_USAGE, SUPPORTED_DRIVERS, URL_FORMS, fail
from homepot.cli.db import db_app
from homepot.cli.export import export
from homepot.cli.insights import insights_app
from homepot.cli.quality import quality, validate
from homepot.cli.retention import retention_app
from homepot.cli.server import demo, serve
from homepot.cli.simulate import simulate_app
from homepot.cli.users import users_app
from homepot.config import Settings

app = typer.Typer(
    name="homepot",
    help="HOMEPOT: fleet management and analytics for point-of-sale terminals.",
    no_args_is_help=True,
    add_completion=False,
)


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
        raise fail(f"invalid settings: {problems}", EXIT_USAGE) from None
    try:
        url = make_url(settings.database_url)
    except ArgumentError:
        raise fail(f"the database URL is not a URL; {URL_FORMS}", EXIT_USAGE) from None
    if url.drivername not in SUPPORTED_DRIVERS:
        shown = url.render_as_string(hide_password=True)
        raise fail(f"unsupported database URL {shown}; {URL_FORMS}", EXIT_USAGE)
    ctx.obj = settings


app.command()(serve)
app.command()(demo)
app.command()(agent)
app.command()(quality)
app.command()(validate)
app.command("export")(export)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(simulate_app, name="simulate")
app.add_typer(retention_app, name="retention")
app.add_typer(insights_app, name="insights")
app.add_typer(broker_app, name="broker")
