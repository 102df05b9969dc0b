"""The demo's fleet: the sample fleet running on, live, inside the server's own process.

``homepot demo`` loads the sample fleet's history (:mod:`homepot.simulation.sample`) and then
serves the app with these very terminals reporting: same sites, same device ids, same
terminal models (same seed), so every chart is full from the first second and goes on from
there. No terminal goes offline unless an injected fault (a crash, a flapping link) says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from homepot.config import Settings
from homepot.simulation.embedded import embedded_simulator
from homepot.simulation.faults import FaultKind
from homepot.simulation.fleet_config import SimulationConfig
from homepot.simulation.model import SimulationError
from homepot.simulation.sample import SampleFleet

logger = logging.getLogger(__name__)

DEMO_FLEET_ENV = "HOMEPOT_DEMO_FLEET"
DEMO_SPEED = 10.0


class DemoFleet(BaseModel):
    """What ``homepot demo`` asks for; travels to the app factory as JSON in the environment."""

    sites: int = Field(default=SampleFleet.sites, ge=1)
    devices: int = Field(default=SampleFleet.devices, ge=1)
    server_url: str = "http://127.0.0.1:8000"
    admin_email: str
    # The sample fleet's names and seed: the live terminals are those of the history.
    site_prefix: str = SampleFleet.site_prefix
    device_prefix: str = SampleFleet.device_prefix
    seed: int = SampleFleet.seed
    speed: float = Field(default=DEMO_SPEED, gt=0)
    fault_rate: float = Field(default=20, ge=0)  # faults per terminal per simulated day
    min_fault_silence_seconds: float = Field(default=100, gt=0)
    labels: str | None = None  # where to write the injected faults (JSON lines)

    @property
    def report_seconds(self) -> float:
        return SimulationConfig().interval_seconds / self.speed

    def simulation(self) -> SimulationConfig:
        return SimulationConfig(
            server_url=self.server_url,
            sites=self.sites,
            devices=self.devices,
            speed=self.speed,
            fault_rate=self.fault_rate,
            seed=self.seed,
            site_prefix=self.site_prefix,
            device_prefix=self.device_prefix,
            labels=Path(self.labels) if self.labels else None,
            operator=True,
            operator_interval_seconds=5,
            opening_faults=(FaultKind.payment_gateway_timeout, FaultKind.memory_leak_crash),
            min_fault_silence_seconds=self.min_fault_silence_seconds,
        )


def create_demo_app(settings: Settings | None = None, demo: DemoFleet | None = None) -> FastAPI:
    """The app with the demo fleet running in its lifespan (``homepot demo``).

    Without arguments (as uvicorn's factory) the settings and the fleet come from the
    environment. The fleet starts once the app's own services run and stops before they do,
    so no terminal ever calls an app that is shutting down.
    """
    import os

    from homepot.config import get_settings
    from homepot.main import create_app

    demo = demo or DemoFleet.model_validate_json(os.environ[DEMO_FLEET_ENV])
    app = create_app(settings or get_settings())
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
