"""A simulator inside the server's own process (``homepot demo``, tests)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI

from homepot.simulation.fleet_config import SIM_AGENT_VERSION, SimulationConfig
from homepot.simulation.live import FleetSimulator
from homepot.simulation.model import SimulationError


@contextlib.asynccontextmanager
async def embedded_simulator(
    app: FastAPI, config: SimulationConfig, *, admin_email: str
) -> AsyncIterator[FleetSimulator]:
    """A simulator living in the server's own process (``homepot demo``, tests).

    It calls the app through an in-process ASGI transport (its calls still pass the request
    log like any client's), receives pushed jobs from the app's in-process channel when no
    broker is configured, and acts as ``admin_email`` with tokens minted from the database.
    Its terminals report their own errors through the protocol, like any device.
    """
    from homepot.auth.service import create_access_token, get_user_by_email
    from homepot.protocol.channels import InProcessChannel

    async def token() -> str:
        async with app.state.session_factory() as session:
            user = await get_user_by_email(session, admin_email)
        if user is None:
            raise SimulationError(f"the simulator's operator {admin_email} does not exist")
        return create_access_token(user, app.state.settings.auth)

    channel = getattr(app.state, "push_channel", None)
    inbox = channel.inbox if isinstance(channel, InProcessChannel) else None
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50_000))
    async with httpx.AsyncClient(
        transport=transport, base_url=config.server_url, headers={"User-Agent": SIM_AGENT_VERSION}
    ) as http:
        yield FleetSimulator(
            config,
            http,
            job_inbox=inbox,
            use_mqtt=inbox is None,
            token_provider=token,
        )
