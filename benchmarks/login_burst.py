"""Does a burst of logins stall everyone else? Latency of a cheap authenticated GET alone and
during 20 and 100 concurrent wrong logins.

Starts the real server (uvicorn, one worker, production argon2 cost) on a throw-away
database, logs a viewer in, then measures ``GET /api/v1/users/me`` one request at a time
(median and p95) for ``--seconds`` per phase: alone, then while separate processes keep
``N`` wrong-password logins in flight. Rate limiting is switched off in the server
(``HOMEPOT_RATE_LIMITS__ENABLED=false``) so that every wrong login really costs an argon2
verification: the worst case a limit would otherwise cut short.

``--server-src DIR`` runs the server from another source tree (e.g. an export of an older
commit) to compare before and after on the same machine:

    git archive <commit> src | tar -x -C /tmp/before
    python benchmarks/login_burst.py --server-src /tmp/before/src
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx
from _common import (
    DEFAULT_POSTGRES_SERVER,
    benchmark_database,
    console,
    describe_database,
    median,
    percentile,
    raise_keyboard_interrupt_on_sigterm,
)

from homepot.auth.models import Role
from homepot.auth.service import create_user
from homepot.db import create_engine, create_session_factory

THIS_CHECKOUT_SRC = Path(__file__).resolve().parents[1] / "src"
EMAIL = "burst-viewer@example.com"
PROBE = "/api/v1/users/me"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def create_viewer(database_url: str, password: str) -> None:
    async def create() -> None:
        engine = create_engine(database_url)
        try:
            async with create_session_factory(engine)() as session:
                await create_user(session, email=EMAIL, password=password, role=Role.viewer)
                await session.commit()
        finally:
            await engine.dispose()

    asyncio.run(create())


@contextlib.contextmanager
def running_server(database_url: str, workdir: Path, server_src: Path | None) -> object:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPOT_")}
    env.update(
        HOMEPOT_DATABASE_URL=database_url,
        HOMEPOT_AUTH__SECRET_KEY=secrets.token_urlsafe(48),
        HOMEPOT_DATA_DIR=str(workdir / "var"),
        HOMEPOT_ANALYTICS__SPOOL_DIR=str(workdir / "spool"),
        HOMEPOT_ANALYTICS__RECORD_REQUESTS="false",
        HOMEPOT_RATE_LIMITS__ENABLED="false",
    )
    # Absolute, because the server runs in the work directory: a relative PYTHONPATH would
    # silently fall back to whatever homepot the environment has installed.
    env["PYTHONPATH"] = str((server_src or THIS_CHECKOUT_SRC).resolve())
    log = (workdir / f"server-{port}.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            *("-m", "uvicorn", "--factory", "homepot.main:create_app"),
            *("--host", "127.0.0.1", "--port", str(port)),
            *("--no-access-log", "--log-level", "warning"),
        ],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited at start-up; see {log.name}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base_url}/api/v1/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer within 30 s")
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        if process.poll() is None:
            process.kill()
        log.close()


def wrong_logins(base_url: str, concurrency: int, stop: Event, started: Event) -> None:
    """Keep ``concurrency`` wrong-password logins in flight until ``stop`` is set."""

    async def attacker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                await client.post(
                    "/api/v1/auth/token", data={"username": EMAIL, "password": "wrong-password"}
                )

    async def run() -> None:
        limits = httpx.Limits(max_connections=concurrency + 1)
        async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
            tasks = [asyncio.create_task(attacker(client)) for _ in range(concurrency)]
            started.set()
            await asyncio.gather(*tasks)

    asyncio.run(run())


@dataclass
class Phase:
    name: str
    latencies_ms: list[float]

    @property
    def median(self) -> float:
        return median(self.latencies_ms)

    @property
    def p95(self) -> float:
        return percentile(self.latencies_ms, 0.95)


def probe(base_url: str, token: str, seconds: float) -> list[float]:
    """The probe's latencies (ms), one request at a time for ``seconds``."""
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, timeout=120) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or len(latencies) < 5:
            started = time.perf_counter()
            response = client.get(PROBE, headers=headers)
            latencies.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return latencies


def measure(base_url: str, token: str, concurrency: int, seconds: float) -> Phase:
    if concurrency == 0:
        return Phase("alone", probe(base_url, token, seconds))
    context = multiprocessing.get_context("spawn")
    stop, started = context.Event(), context.Event()
    burst = context.Process(target=wrong_logins, args=(base_url, concurrency, stop, started))
    burst.start()
    try:
        started.wait(30)
        time.sleep(1)  # let the burst fill the server's queue before measuring
        return Phase(f"{concurrency} wrong logins", probe(base_url, token, seconds))
    finally:
        stop.set()
        burst.join(timeout=120)
        if burst.is_alive():
            burst.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER)
    parser.add_argument("--seconds", type=float, default=10, help="measuring time per phase")
    parser.add_argument(
        "--bursts", default="20,100", help="concurrent wrong logins per phase (comma-separated)"
    )
    parser.add_argument(
        "--server-src", type=Path, help="run the server from this source tree (before/after)"
    )
    args = parser.parse_args()
    raise_keyboard_interrupt_on_sigterm()
    bursts = [int(n) for n in args.bursts.split(",") if n.strip()]
    password = secrets.token_urlsafe(16)
    with (
        benchmark_database(args.database, args.postgres_server, "login") as url,
        tempfile.TemporaryDirectory(prefix="homepot-login-burst-") as directory,
    ):
        create_viewer(url, password)
        console.print(
            f"database {describe_database(url)}; server from "
            f"{args.server_src or 'this checkout'}; {os.cpu_count()} CPUs; "
            f"probe GET {PROBE}, {args.seconds:g} s per phase"
        )
        with running_server(url, Path(directory), args.server_src) as base_url:
            login = httpx.post(
                f"{base_url}/api/v1/auth/token",
                data={"username": EMAIL, "password": password},
                timeout=30,
            )
            login.raise_for_status()
            token = login.json()["access_token"]
            phases = [measure(str(base_url), token, 0, args.seconds)]
            for concurrency in bursts:
                phases.append(measure(str(base_url), token, concurrency, args.seconds))
    alone = phases[0].median
    console.print()
    console.print(f"{'phase':<20} {'requests':>9} {'median ms':>10} {'p95 ms':>9} {'x alone':>8}")
    for phase in phases:
        console.print(
            f"{phase.name:<20} {len(phase.latencies_ms):>9} {phase.median:>10.1f} "
            f"{phase.p95:>9.1f} {phase.median / alone:>8.1f}"
        )


if __name__ == "__main__":
    main()
