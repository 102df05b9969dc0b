"""What a live simulation run is set up with (:class:`SimulationConfig`), how its terminals
reach the server (:func:`device_connection_pools`), and what it counts
(:class:`SimulationStats`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from homepot.simulation.faults import FaultKind
from homepot.simulation.model import SimulationError

# The simulator's User-Agent: the server records every request carrying it as simulated
# (homepot.analytics.middleware.SIMULATOR_PRODUCT).
SIM_AGENT_VERSION = "homepot-sim/1"
# A sample in the backlog of an unreachable terminal is kept this many ticks at most.
MAX_BACKLOG_SAMPLES = 2_000
# Connections per HTTP pool of the terminals (device_connection_pools).
POOL_CONNECTIONS = 16
# With a push channel, the share of ticks on which a terminal also polls for jobs.
PUSHED_POLL_SHARE = 0.1
REGISTRATION_ATTEMPTS = 5
REGISTRATION_MAX_SECONDS = 60.0


@dataclass
class SimulationConfig:
    server_url: str = "http://127.0.0.1:8000"
    sites: int = 3
    devices: int = 12
    speed: float = 1.0
    fault_rate: float = 0.5  # faults per terminal per simulated day
    interval_seconds: float = 30.0  # simulated seconds between reports
    labels: Path | None = None
    schedules: Path | None = None
    seed: int | None = None
    token: str | None = None
    admin_email: str | None = None
    admin_password: str | None = None
    site_prefix: str = "sim-site"
    device_prefix: str = "sim-pos"
    # Ticks between job polls when no push channel delivers jobs.
    poll_every: int = 1
    # Also act as an operator: dashboard activity, API reads, jobs and config changes.
    operator: bool = False
    operator_interval_seconds: float = 10.0
    registration_concurrency: int = 50
    # Reports in flight at once (``--max-in-flight``). Terminals beyond it wait on a
    # semaphore, not in an HTTP connection pool (see device_connection_pools). Too low a cap
    # limits the fleet instead of the server: N terminals at interval T need about
    # N / T x (report round trip) reports in flight.
    max_concurrent_reports: int = 64
    # Faults injected at start on terminals picked at random (the demo shows some at once).
    opening_faults: tuple[FaultKind, ...] = ()
    # Floors in wall-clock time, so that a crash stays visible to the server's watchdog.
    min_fault_silence_seconds: float = 100.0

    def validate(self) -> None:
        if self.sites < 1 or self.devices < 1:
            raise SimulationError("--sites and --devices must be at least 1")
        if self.devices < self.sites:
            raise SimulationError(
                f"{self.devices} terminals cannot cover {self.sites} sites: "
                "use at least one terminal per site"
            )
        if self.speed <= 0:
            raise SimulationError("--speed must be above 0")
        if self.fault_rate < 0:
            raise SimulationError("--fault-rate cannot be negative")
        if self.max_concurrent_reports < 1:
            raise SimulationError("--max-in-flight must be at least 1")


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` near-equal shares, none below 1."""
    return [max(1, total // parts + (n < total % parts)) for n in range(parts)]


@contextlib.asynccontextmanager
async def device_connection_pools(
    config: SimulationConfig, *, request_timeout: float = 30.0
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Kept-alive HTTP clients for the terminals, ``max_concurrent_reports`` connections in all.

    Several small pools rather than one large one: httpcore looks at every connection of a
    pool each time a request starts or ends, so one pool of 200 connections costs the load
    process a whole core at ~30 reports a second. Each pool has a few connections more than
    its share of reports, for job results sent outside the report cap.
    """
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        pools = math.ceil(config.max_concurrent_reports / POOL_CONNECTIONS)
        for size in split_evenly(config.max_concurrent_reports, pools):
            limits = httpx.Limits(max_connections=size + 2, max_keepalive_connections=size + 2)
            client = httpx.AsyncClient(
                base_url=config.server_url,
                timeout=request_timeout,
                limits=limits,
                headers={"User-Agent": SIM_AGENT_VERSION},
            )
            clients.append(await stack.enter_async_context(client))
        yield clients


@dataclass
class SimulationStats:
    registered: int = 0
    heartbeats: int = 0
    samples_sent: int = 0
    samples_dropped: int = 0
    # Samples the server refused by name (400, 409, 413, 422): dropped, one by one.
    samples_refused: int = 0
    unavailable: int = 0
    refused: int = 0
    jobs_received: int = 0
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    faults: int = 0
    activities: int = 0
    operator_calls: int = 0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def summary(self) -> str:
        return (
            f"{self.registered} terminals, {self.heartbeats} heartbeats, "
            f"{self.samples_sent} samples, {self.jobs_succeeded + self.jobs_failed} jobs "
            f"({self.jobs_failed} failed), {self.faults} faults, "
            f"{self.unavailable} unreachable calls"
        )
