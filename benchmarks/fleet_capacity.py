"""How big a fleet one server process carries, and how fast it ingests telemetry.

Two measurements against the real server (uvicorn, one worker, ``homepot.main:create_app``)
on a throw-away PostgreSQL database:

1. **Capacity**: N simulated terminals (:class:`homepot.fleet.simulator.FleetSimulator`,
   the same code as ``homepot simulate``) report every 30 s over HTTP: a heartbeat, a
   telemetry sample and a job poll each (no push channel over plain HTTP, so they poll).
   After one interval of warm-up the script measures, for a window:
   the server's CPU (cores, from ``/proc/<pid>/stat``), the reports the fleet achieved
   against the N/30 per second it should, the terminals' report round trip (p50/p99), and
   the **ingest lag**: how far the newest stored ``device_metrics`` row trails the wall
   clock (sampled every 2 s; with thousands of staggered terminals a fresh sample arrives
   every few milliseconds, so this is the time a sample takes from device to table).
2. **Ingest rate**: telemetry rows stored per second when devices send 500-sample batches as
   fast as the server takes them, over HTTP and over MQTT (Mosquitto at 127.0.0.1:1883; the
   server's uplink bridge), counted in the database.

The server is pinned to cpu 0 and this script (the load) to cpu 1 when ``taskset`` exists,
so the load generator does not steal the server's core. The generator itself (httpx, one
core) tops out near 35-40 reports a second; beyond that the table's "load CPU" is ~1.0 and
the server is no longer what limits the fleet, so the script also prints the server's CPU
per report and the fleet size one core of it would carry at 30 s. Goal on record: 5,000
terminals at 30 s with the server under one core.

    .venv/bin/python benchmarks/fleet_capacity.py                       # about 8 minutes
    .venv/bin/python benchmarks/fleet_capacity.py --terminals 500,1000 --window 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from _common import (
    DEFAULT_POSTGRES_SERVER,
    benchmark_database,
    console,
    describe_database,
    percentile,
    raise_keyboard_interrupt_on_sigterm,
)
from rich.table import Table
from sqlalchemy import func, select

from homepot.analytics.models import DeviceMetrics
from homepot.auth.models import Role
from homepot.auth.service import create_user
from homepot.db import create_engine, create_session_factory
from homepot.fleet.protocol import MetricSample, TelemetryBatch
from homepot.fleet.simulator import FleetSimulator, SimulatedTerminal, SimulationConfig

ADMIN_EMAIL = "fleet-benchmark@example.com"
ADMIN_PASSWORD = "fleet-benchmark-password"
SERVER_CPU, LOAD_CPU = "0", "1"
BROKER = ("127.0.0.1", 1883)
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


class Server:
    def __init__(self, database_url: str, workdir: Path, *, mqtt: bool, pin: bool) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "HOMEPOT_DATABASE_URL": database_url,
            "HOMEPOT_AUTH__SECRET_KEY": "fleet-benchmark-secret-key-long-enough-for-hs256",
            "HOMEPOT_ANALYTICS__SPOOL_DIR": str(workdir / "spool"),
            "HOMEPOT_FLEET__MQTT_URL": f"mqtt://{BROKER[0]}:{BROKER[1]}" if mqtt else "",
        }
        self.pin = pin
        self.log = workdir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "homepot.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        if self.pin:
            command = ["taskset", "-c", SERVER_CPU, *command]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}/api/v1/health", timeout=1).status_code == 200:
                    return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"the server did not start:\n{self.log.read_text()[-2000:]}")

    def __exit__(self, *_exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


async def make_admin(database_url: str) -> None:
    engine = create_engine(database_url)
    async with create_session_factory(engine)() as session:
        await create_user(session, email=ADMIN_EMAIL, password=ADMIN_PASSWORD, role=Role.admin)
        await session.commit()
    await engine.dispose()


async def metric_rows(engine: Any) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(DeviceMetrics)) or 0)


# -- 1. capacity ----------------------------------------------------------------------------


async def capacity_run(
    server: Server, database_url: str, terminals: int, window: float
) -> dict[str, Any]:
    config = SimulationConfig(
        server_url=server.base_url,
        sites=max(1, terminals // 50),
        devices=terminals,
        fault_rate=0,
        seed=1,
        admin_email=ADMIN_EMAIL,
        admin_password=ADMIN_PASSWORD,
        site_prefix=f"cap{terminals}",
        device_prefix=f"cap{terminals}-pos",
        registration_concurrency=100,
    )
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    round_trips: list[float] = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as http:
        simulator = FleetSimulator(config, http)
        registered_in = time.perf_counter()
        await simulator.setup()
        registered_in = time.perf_counter() - registered_in
        report = simulator.report

        async def timed(terminal: SimulatedTerminal) -> None:
            started = time.perf_counter()
            await report(terminal)
            round_trips.append(time.perf_counter() - started)

        simulator.report = timed  # type: ignore[method-assign]
        stop = asyncio.Event()
        running = asyncio.create_task(simulator.run(stop))
        await asyncio.sleep(config.interval_seconds)  # every terminal has started
        round_trips.clear()
        engine = create_engine(database_url)
        heartbeats = simulator.stats.heartbeats
        cpu = process_cpu_seconds(server.pid)
        load_cpu = process_cpu_seconds(os.getpid())
        started = time.monotonic()
        lags: list[float] = []
        while time.monotonic() - started < window:
            await asyncio.sleep(2)
            async with engine.connect() as connection:
                newest = await connection.scalar(select(func.max(DeviceMetrics.timestamp)))
            if newest is not None:
                lags.append((datetime.now(UTC) - newest).total_seconds())
        elapsed = time.monotonic() - started
        cores = (process_cpu_seconds(server.pid) - cpu) / elapsed
        load_cores = (process_cpu_seconds(os.getpid()) - load_cpu) / elapsed
        achieved = (simulator.stats.heartbeats - heartbeats) / elapsed
        stop.set()
        await running
        await engine.dispose()
    return {
        "terminals": terminals,
        "registration_s": registered_in,
        "server_cores": cores,
        "load_cores": load_cores,
        "reports_per_s": achieved,
        "expected_per_s": terminals / config.interval_seconds,
        "round_trip_p50_ms": percentile(round_trips, 0.5) * 1000 if round_trips else float("nan"),
        "round_trip_p99_ms": percentile(round_trips, 0.99) * 1000 if round_trips else float("nan"),
        "lag_p50_s": percentile(lags, 0.5) if lags else float("nan"),
        "lag_max_s": max(lags) if lags else float("nan"),
        "unavailable": simulator.stats.unavailable,
    }


# -- 2. ingest rate -------------------------------------------------------------------------


def batch(size: int) -> TelemetryBatch:
    now = datetime.now(UTC)
    return TelemetryBatch(
        samples=[
            MetricSample(
                event_id=uuid.uuid4(),
                timestamp=now - timedelta(milliseconds=n),
                collection_interval_seconds=30,
                cpu_percent=30.0,
                memory_percent=50.0,
                disk_percent=40.0,
                network_latency_ms=20.0,
                transaction_count=3,
                transaction_volume=42.5,
                error_rate=0.4,
                active_connections=2,
                queue_depth=0,
                extra_metrics={"site_load": 0.5},
            )
            for n in range(size)
        ]
    )


async def register_devices(
    http: httpx.AsyncClient, count: int, label: str
) -> list[tuple[str, str]]:
    config = SimulationConfig(
        server_url=str(http.base_url),
        sites=1,
        devices=count,
        admin_email=ADMIN_EMAIL,
        admin_password=ADMIN_PASSWORD,
        site_prefix=f"ingest-{label}",
        device_prefix=f"ingest-{label}",
    )
    simulator = FleetSimulator(config, http)
    await simulator.setup()
    return [(t.device_id, str(t.client.api_key)) for t in simulator.terminals]


async def ingest_run(
    server: Server, database_url: str, transport: str, seconds: float, senders: int, batch_size: int
) -> dict[str, Any]:
    engine = create_engine(database_url)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
        devices = await register_devices(http, senders, transport)
        before = await metric_rows(engine)
        deadline = time.monotonic() + seconds
        sent = 0

        async def over_http(index: int) -> None:
            nonlocal sent
            device_id, key = devices[index]
            headers = {"Authorization": f"Bearer {key}"}
            while time.monotonic() < deadline:
                fresh = batch(batch_size).model_dump(mode="json", exclude_none=True)
                response = await http.post("/api/v1/agent/telemetry", json=fresh, headers=headers)
                if response.status_code == 202:
                    sent += batch_size

        async def over_mqtt(index: int) -> None:
            nonlocal sent
            from homepot.fleet.mqtt import DeviceMqttLink

            device_id, key = devices[index]
            async with DeviceMqttLink(BROKER[0], BROKER[1], device_id, key) as link:
                while time.monotonic() < deadline:
                    await link.publish_telemetry(batch(batch_size))
                    sent += batch_size

        started = time.monotonic()
        cpu = process_cpu_seconds(server.pid)
        sender = over_http if transport == "http" else over_mqtt
        await asyncio.gather(*(sender(i) for i in range(senders)))
        # Until everything sent is stored (or 60 s pass): the rate counts stored rows.
        settle = time.monotonic() + 60
        # Polls the database: nothing to wait on.
        while time.monotonic() < settle and await metric_rows(engine) - before < sent:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        stored = await metric_rows(engine) - before
        cores = (process_cpu_seconds(server.pid) - cpu) / elapsed
    await engine.dispose()
    return {
        "transport": transport,
        "sent": sent,
        "stored": stored,
        "rows_per_s": stored / elapsed,
        "server_cores": cores,
        "seconds": elapsed,
    }


def broker_up() -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(BROKER) == 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--terminals", default="1000,2500,5000", help="fleet sizes to try, comma-separated"
    )
    parser.add_argument("--window", type=float, default=60, help="seconds measured per size")
    parser.add_argument("--ingest-seconds", type=float, default=20)
    parser.add_argument("--senders", type=int, default=8, help="devices sending at once")
    parser.add_argument("--batch", type=int, default=500, help="samples per batch")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER)
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and load")
    args = parser.parse_args()
    raise_keyboard_interrupt_on_sigterm()
    pin = (
        not args.no_pin and shutil.which("taskset") is not None and os.cpu_count() not in (None, 1)
    )
    if pin:
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    sizes = [int(n) for n in args.terminals.split(",") if n.strip()]

    capacity: list[dict[str, Any]] = []
    ingest: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="homepot-fleet-bench-") as tmp:
        workdir = Path(tmp)
        for terminals in sizes:
            with benchmark_database("postgresql", args.postgres_server, "fleet") as url:
                asyncio.run(make_admin(url))
                with Server(url, workdir, mqtt=False, pin=pin) as server:
                    console.print(
                        f"capacity: {terminals} terminals on {describe_database(url)} ..."
                    )
                    capacity.append(asyncio.run(capacity_run(server, url, terminals, args.window)))
        transports = ["http"] + (["mqtt"] if broker_up() else [])
        for transport in transports:
            with benchmark_database("postgresql", args.postgres_server, "ingest") as url:
                asyncio.run(make_admin(url))
                with Server(url, workdir, mqtt=transport == "mqtt", pin=pin) as server:
                    console.print(f"ingest over {transport} ...")
                    ingest.append(
                        asyncio.run(
                            ingest_run(
                                server,
                                url,
                                transport,
                                args.ingest_seconds,
                                args.senders,
                                args.batch,
                            )
                        )
                    )

    table = Table(title="Capacity: terminals reporting every 30 s (heartbeat + telemetry)")
    for heading in (
        "terminals",
        "server CPU (cores)",
        "load CPU (cores)",
        "reports/s (expected)",
        "report p50 / p99 ms",
        "ingest lag p50 / max s",
        "server CPU ms / report",
        "projected terminals / core",
        "registration s",
        "failed calls",
    ):
        table.add_column(heading, justify="right")
    for r in capacity:
        table.add_row(
            f"{r['terminals']:,}",
            f"{r['server_cores']:.2f}",
            f"{r['load_cores']:.2f}",
            f"{r['reports_per_s']:.0f} ({r['expected_per_s']:.0f})",
            f"{r['round_trip_p50_ms']:.0f} / {r['round_trip_p99_ms']:.0f}",
            f"{r['lag_p50_s']:.1f} / {r['lag_max_s']:.1f}",
            f"{r['server_cores'] * 1000 / r['reports_per_s']:.1f}",
            f"{30 * r['reports_per_s'] / r['server_cores']:,.0f}",
            f"{r['registration_s']:.0f}",
            str(r["unavailable"]),
        )
    console.print(table)
    if any(r["load_cores"] > 0.9 for r in capacity):
        console.print(
            "Rows with load CPU near 1.0: the load generator (one core, httpx) was the limit, "
            "not the server; 'projected terminals / core' extrapolates the server's own cost."
        )
    rates = Table(
        title=f"Telemetry ingest: {args.senders} devices sending {args.batch}-sample batches"
    )
    for heading in ("transport", "rows sent", "rows stored", "rows/s stored", "server CPU (cores)"):
        rates.add_column(heading, justify="right")
    for r in ingest:
        rates.add_row(
            r["transport"],
            f"{r['sent']:,}",
            f"{r['stored']:,}",
            f"{r['rows_per_s']:,.0f}",
            f"{r['server_cores']:.2f}",
        )
    console.print(rates)
    if "mqtt" not in [r["transport"] for r in ingest]:
        console.print("MQTT skipped: no broker at 127.0.0.1:1883 (scripts/ensure-services.sh)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        console.print("interrupted; the throw-away databases were removed")
        sys.exit(130)
