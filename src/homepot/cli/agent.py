"""`homepot agent`: run the terminal agent on this host."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from homepot.cli.common import ServerOption, fail, until_interrupted


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

    from homepot.agent.agent import Agent, AgentConfig, AgentError
    from homepot.agent.client import DeviceClient
    from homepot.simulation.model import SimulatedTransactions

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
            await Agent(config, client, source=SimulatedTransactions()).run(stop)
        finally:
            await client.aclose()

    try:
        until_interrupted(run)
    except AgentError as exc:
        raise fail(str(exc)) from None
