"""The demo's fleet: a simulated fleet running inside the server's own process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from homepot.simulation.faults import FaultKind
from homepot.simulation.live import SimulationConfig, embedded_simulator
from homepot.simulation.model import SimulationError

logger = logging.getLogger(__name__)

DEMO_FLEET_ENV = "HOMEPOT_DEMO_FLEET"
DEMO_SPEED = 10.0


class DemoFleet(BaseModel):
    """What ``homepot demo`` asks for; travels to the app factory as JSON in the environment."""

    sites: int = Field(default=3, ge=1)
    devices: int = Field(default=12, ge=1)
    server_url: str = "http://127.0.0.1:8000"
    admin_email: str

    @property
    def report_seconds(self) -> float:
        return SimulationConfig().interval_seconds / DEMO_SPEED

    def simulation(self) -> SimulationConfig:
        return SimulationConfig(
            server_url=self.server_url,
            sites=self.sites,
            devices=self.devices,
            speed=DEMO_SPEED,
            fault_rate=20,
            site_prefix="demo-site",
            device_prefix="demo-pos",
            operator=True,
            operator_interval_seconds=5,
            opening_faults=(FaultKind.payment_gateway_timeout, FaultKind.memory_leak_crash),
        )


def create_demo_app() -> FastAPI:
    """The app with a simulated fleet running in its lifespan (``homepot demo``).

    The fleet starts once the app's own services run and stops before they do, so no
    terminal ever calls an app that is shutting down.
    """
    import os

    from homepot.config import get_settings
    from homepot.main import create_app

    demo = DemoFleet.model_validate_json(os.environ[DEMO_FLEET_ENV])
    app = create_app(get_settings())
    app_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[Any]:
        async with app_lifespan(application) as state:
            stop = asyncio.Event()
            running = asyncio.create_task(_run_demo_fleet(application, demo, stop))
            try:
                yield state
            finally:
                stop.set()
                await asyncio.wait_for(running, timeout=15)

    app.router.lifespan_context = lifespan
    return app


async def _run_demo_fleet(app: FastAPI, demo: DemoFleet, stop: asyncio.Event) -> None:
    try:
        async with embedded_simulator(
            app, demo.simulation(), admin_email=demo.admin_email
        ) as simulator:
            await simulator.setup()
            logger.warning(
                "simulated fleet: %d terminals registered in %d sites",
                simulator.stats.registered,
                demo.sites,
            )
            stats = await simulator.run(stop)
            logger.warning("simulated fleet stopped: %s", stats.summary())
    except SimulationError as exc:
        logger.error("the simulated fleet could not start: %s", exc)
