"""Load and soak: many concurrent clients with 0 errors, and flat memory over ten minutes.

Starts the real server (uvicorn, one worker, ``homepot.main:create_app``) on a free port of
127.0.0.1 against a throw-away database (PostgreSQL by default, ``--database sqlite``), creates
an admin, registers a few terminals through the API (sites, bootstrap keys,
``/api/v1/agent/register``, the same code as ``homepot simulate``), then:

1. **Load**: ``--clients`` (200) concurrent clients for ``--seconds`` (60), each sending one
   request after the other, a mix of what the dashboard and the terminals send: authenticated
   GETs (sites, devices, overview, analytics device metrics and device states), device
   heartbeats and telemetry batches with the devices' own keys, and dashboard activity
   batches. Every answer is counted: the target is 0 errors (no 5xx, no connection error or
   timeout, no 4xx). Prints requests/s, p50/p95/p99 latency per kind and errors by status.
2. **Soak**: a fresh server process, ``--soak-seconds`` (600) at a steady ``--soak-rate``
   (requests/s, the same mix), its resident memory (RSS, psutil) sampled every
   ``--sample-seconds`` (10). After ``--warmup-seconds`` (120) the memory must be flat: RSS at
   the end within 10 % of RSS at the end of the warm-up.

Rate limits: the dashboard ingest limit (``HOMEPOT_RATE_LIMITS__INGEST_REQUESTS_PER_MINUTE``,
300 per user per minute by default) would refuse most activity batches of one admin sending
from 200 clients, so the server runs with it raised to 10,000,000; the other limits (failed
logins and registrations) are not hit by this traffic and keep their defaults. Telemetry
answered 503 ("busy, send again") counts as an error here: a busy server is what the
benchmark looks for.

Bounded: every loop stops at its deadline; the script stops the server (SIGINT, then
SIGKILL after 60 s) and removes the database, also after Ctrl-C or SIGTERM.

    .venv/bin/python benchmarks/load.py                                # about 12 minutes
    .venv/bin/python benchmarks/load.py --soak-seconds 0               # load only
    .venv/bin/python benchmarks/load.py --seconds 0 --soak-seconds 300 # a shorter soak only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import (
    DEFAULT_POSTGRES_SERVER,
    ServerProcess,
    benchmark_database,
    console,
    describe_database,
    percentile,
    raise_keyboard_interrupt_on_sigterm,
    server_environment,
)
from rich.table import Table

from homepot.auth.models import Role
from homepot.auth.service import create_user
from homepot.db import create_engine, create_session_factory
from homepot.simulation.fleet_config import SimulationConfig
from homepot.simulation.live import FleetSimulator

ADMIN_EMAIL = "load-benchmark@example.com"
ADMIN_PASSWORD = "load-benchmark-password"
API = "/api/v1"
REQUEST_TIMEOUT = 30.0
# Idle connections are dropped before uvicorn's keep-alive (5 s) would close them.
CLIENT_KEEPALIVE_SECONDS = 4.0
RSS_TOLERANCE = 0.10
INGEST_LIMIT = 10_000_000
TELEMETRY_SAMPLES = 10

# The mix: (kind, weight). Terminals report more often than people look.
MIX: tuple[tuple[str, int], ...] = (
    ("GET sites", 8),
    ("GET devices", 8),
    ("GET overview", 6),
    ("GET analytics/device-metrics", 4),
    ("GET analytics/device-states", 4),
    ("POST heartbeat", 30),
    ("POST telemetry", 30),
    ("POST user-activities", 10),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Concurrent-client load (0 errors) and a soak (flat memory) against the "
        "real server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER)
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients (load)")
    parser.add_argument("--seconds", type=int, default=60, help="load duration (0 skips it)")
    parser.add_argument(
        "--pools", type=int, default=10, help="httpx clients (connection pools) the load shares"
    )
    parser.add_argument("--devices", type=int, default=20, help="registered terminals")
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument(
        "--soak-seconds", type=int, default=600, help="soak duration (0 skips the soak)"
    )
    parser.add_argument("--soak-rate", type=float, default=50.0, help="soak requests per second")
    parser.add_argument(
        "--warmup-seconds", type=int, default=120, help="soak warm-up before the RSS baseline"
    )
    parser.add_argument("--sample-seconds", type=int, default=10, help="RSS sampling interval")
    parser.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="HOMEPOT_NAME=VALUE",
        help="an extra setting for the server (repeatable), e.g. "
        "HOMEPOT_DATABASE__POOL_TIMEOUT_SECONDS=30; printed with the results",
    )
    args = parser.parse_args()
    if (
        args.clients < 1
        or args.pools < 1
        or args.devices < 1
        or args.sites < 1
        or args.soak_rate <= 0
    ):
        parser.error("--clients, --devices, --sites and --soak-rate must be positive")
    if args.seconds < 0 or args.soak_seconds < 0 or args.sample_seconds < 1:
        parser.error("durations must not be negative")
    for setting in args.server_setting:
        if not setting.startswith("HOMEPOT_") or "=" not in setting:
            parser.error(f"--server-setting {setting!r}: expected HOMEPOT_NAME=VALUE")
    if args.soak_seconds and args.warmup_seconds >= args.soak_seconds:
        parser.error("--warmup-seconds must be shorter than --soak-seconds")
    return args


# -- the server ----------------------------------------------------------------------------


class Server(ServerProcess):
    """The server under load: the benchmark's environment, its ingest limit and ``settings``
    (``HOMEPOT_NAME=VALUE``) on top."""

    def __init__(self, database_url: str, workdir: Path, secret: str, settings: list[str]) -> None:
        extra = dict(setting.split("=", 1) for setting in settings)
        env = server_environment(
            database_url,
            workdir,
            secret=secret,
            HOMEPOT_RATE_LIMITS__INGEST_REQUESTS_PER_MINUTE=str(INGEST_LIMIT),
            **extra,
        )
        super().__init__(env, workdir)


async def make_admin(database_url: str) -> None:
    engine = create_engine(database_url)
    async with create_session_factory(engine)() as session:
        await create_user(session, email=ADMIN_EMAIL, password=ADMIN_PASSWORD, role=Role.admin)
        await session.commit()
    await engine.dispose()


async def login(http: httpx.AsyncClient) -> str:
    response = await http.post(
        f"{API}/auth/token", data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


async def register_devices(http: httpx.AsyncClient, args: argparse.Namespace) -> list[str]:
    """Sites, bootstrap keys and registrations through the API; returns the device keys."""
    config = SimulationConfig(
        server_url=str(http.base_url),
        sites=args.sites,
        devices=args.devices,
        admin_email=ADMIN_EMAIL,
        admin_password=ADMIN_PASSWORD,
        site_prefix="load-site",
        device_prefix="load-pos",
    )
    simulator = FleetSimulator(config, http, use_mqtt=False)
    await simulator.setup()
    return [str(t.client.api_key) for t in simulator.terminals]


# -- the traffic ---------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)  # "kind: status" -> count
    by_status: Counter[str] = field(default_factory=Counter)  # status -> count (errors)

    def answered(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def error_count(self) -> int:
        return sum(self.by_status.values())


class Traffic:
    """Builds and sends one request of a kind; records the latency and any error."""

    def __init__(self, token: str, device_keys: list[str], tally: Tally) -> None:
        self.admin = {"Authorization": f"Bearer {token}"}
        self.devices = [{"Authorization": f"Bearer {key}"} for key in device_keys]
        self.tally = tally
        self.kinds = [kind for kind, _ in MIX]
        self.weights = [weight for _, weight in MIX]
        self.rng = random.Random(12)

    def pick(self) -> str:
        return self.rng.choices(self.kinds, self.weights)[0]

    def request(self, kind: str) -> tuple[str, str, dict[str, str], Any, int]:
        """(method, path, headers, json body, expected status)."""
        if kind == "GET sites":
            return "GET", f"{API}/sites", self.admin, None, 200
        if kind == "GET devices":
            return "GET", f"{API}/devices", self.admin, None, 200
        if kind == "GET overview":
            return "GET", f"{API}/overview", self.admin, None, 200
        if kind == "GET analytics/device-metrics":
            return "GET", f"{API}/analytics/device-metrics?limit=50", self.admin, None, 200
        if kind == "GET analytics/device-states":
            return "GET", f"{API}/analytics/device-states?limit=50", self.admin, None, 200
        if kind == "POST heartbeat":
            body = {"status": "ok", "uptime_seconds": 3600.0, "response_time_ms": 12.0}
            return "POST", f"{API}/agent/heartbeat", self.rng.choice(self.devices), body, 200
        if kind == "POST telemetry":
            now = datetime.now(UTC)
            samples = [
                {
                    "event_id": str(uuid.uuid4()),
                    "timestamp": (now - timedelta(seconds=30 * n)).isoformat(),
                    "collection_interval_seconds": 30,
                    "cpu_percent": self.rng.uniform(5, 90),
                    "memory_percent": self.rng.uniform(20, 80),
                    "disk_percent": 40.0,
                    "network_latency_ms": self.rng.uniform(5, 80),
                    "transaction_count": self.rng.randint(0, 10),
                    "error_rate": 0.2,
                }
                for n in range(TELEMETRY_SAMPLES)
            ]
            headers = self.rng.choice(self.devices)
            return "POST", f"{API}/agent/telemetry", headers, {"samples": samples}, 202
        if kind == "POST user-activities":
            page = self.rng.choice(["/", "/sites", "/devices", "/analytics", "/jobs"])
            events = [
                {"event_id": str(uuid.uuid4()), "activity_type": "page_view", "page_url": page},
                {"event_id": str(uuid.uuid4()), "activity_type": "click", "page_url": page},
            ]
            return "POST", f"{API}/analytics/user-activities", self.admin, {"events": events}, 202
        raise ValueError(kind)

    async def send(self, http: httpx.AsyncClient, kind: str) -> None:
        method, path, headers, body, expected = self.request(kind)
        sent = time.perf_counter()
        try:
            response = await http.request(method, path, headers=headers, json=body)
        except httpx.TimeoutException:
            self._error(kind, "timeout")
            return
        except httpx.HTTPError as exc:
            self._error(kind, f"connection error ({type(exc).__name__})")
            return
        self.tally.latencies.setdefault(kind, []).append((time.perf_counter() - sent) * 1000)
        if response.status_code != expected:
            self._error(kind, str(response.status_code))

    def _error(self, kind: str, status: str) -> None:
        self.tally.errors[f"{kind}: {status}"] += 1
        self.tally.by_status[status] += 1


def client_pool(base_url: str, connections: int) -> httpx.AsyncClient:
    # An idle connection is dropped before uvicorn's keep-alive (5 s) closes it, as any
    # well-behaved client does: else a request sent just as the server closes it fails
    # with a ReadError that says nothing about the server.
    limits = httpx.Limits(
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=CLIENT_KEEPALIVE_SECONDS,
    )
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


@dataclass(frozen=True)
class CpuUse:
    """Cores kept busy during a run: the server, this script (the load), everything else."""

    server: float
    load: float
    other: float


async def run_load(
    server: Server, traffic: Traffic, clients: int, seconds: int, pools: int
) -> tuple[float, CpuUse]:
    """``clients`` workers, each one request after the other, until the deadline."""
    server_process, own = psutil.Process(server.pid), psutil.Process()
    # Several small pools: one httpx pool of 200 connections costs the load generator more
    # CPU per request than the server spends (httpcore scans its pool for every request).
    sizes = [clients // pools + (i < clients % pools) for i in range(min(pools, clients))]
    async with contextlib.AsyncExitStack() as stack:
        https = [
            await stack.enter_async_context(client_pool(server.base_url, size)) for size in sizes
        ]
        started = time.perf_counter()
        deadline = started + seconds
        before = (cpu_seconds(server_process), cpu_seconds(own), machine_busy_seconds())

        async def worker(http: httpx.AsyncClient) -> None:
            while time.perf_counter() < deadline:
                await traffic.send(http, traffic.pick())

        await asyncio.gather(
            *(worker(http) for http, size in zip(https, sizes, strict=True) for _ in range(size))
        )
        elapsed = time.perf_counter() - started
        server_cpu = cpu_seconds(server_process) - before[0]
        load_cpu = cpu_seconds(own) - before[1]
        busy = machine_busy_seconds() - before[2]
    use = CpuUse(
        server=server_cpu / elapsed,
        load=load_cpu / elapsed,
        other=max(busy - server_cpu - load_cpu, 0.0) / elapsed,
    )
    return elapsed, use


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (psutil's /proc/stat)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


async def run_soak(
    server: Server, traffic: Traffic, args: argparse.Namespace
) -> tuple[float, list[tuple[float, float]]]:
    """A steady rate (open loop, requests start on schedule) and RSS samples (s, MiB)."""
    process = psutil.Process(server.pid)
    samples: list[tuple[float, float]] = []
    workers = max(1, min(50, int(args.soak_rate)))
    interval = workers / args.soak_rate
    async with client_pool(server.base_url, workers) as http:
        started = time.perf_counter()
        deadline = started + args.soak_seconds

        async def worker(offset: float) -> None:
            next_at = started + offset
            while next_at < deadline:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await traffic.send(http, traffic.pick())
                next_at += interval

        async def sampler() -> None:
            number = 0
            while True:
                at = started + number * args.sample_seconds
                if at > deadline + 0.5:
                    return
                await asyncio.sleep(max(at - time.perf_counter(), 0))
                rss = process.memory_info().rss / 2**20
                samples.append((time.perf_counter() - started, rss))
                if number % 6 == 0:
                    console.print(f"  soak {samples[-1][0]:5.0f}s  rss {rss:7.1f} MiB")
                number += 1

        await asyncio.gather(sampler(), *(worker(i * interval / workers) for i in range(workers)))
        return time.perf_counter() - started, samples


# -- reporting -----------------------------------------------------------------------------


def verdict(met: bool) -> str:
    return "[green]met[/]" if met else "[red]MISSED[/]"


def latency_table(title: str, tally: Tally, elapsed: float) -> Table:
    table = Table(title=title)
    for column in ("kind", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    errors_by_kind: Counter[str] = Counter()
    for key, count in tally.errors.items():
        errors_by_kind[key.split(": ", 1)[0]] += count
    everything: list[float] = []
    for kind, _ in MIX:
        values = tally.latencies.get(kind, [])
        everything.extend(values)
        if not values:
            table.add_row(kind, "0", "-", "-", "-", "-", "-", str(errors_by_kind[kind]))
            continue
        table.add_row(
            kind,
            str(len(values)),
            f"{len(values) / elapsed:.1f}",
            f"{percentile(values, 0.50):.1f}",
            f"{percentile(values, 0.95):.1f}",
            f"{percentile(values, 0.99):.1f}",
            f"{max(values):.1f}",
            str(errors_by_kind[kind]),
        )
    if everything:
        table.add_row(
            "[bold]all[/]",
            str(len(everything)),
            f"{len(everything) / elapsed:.1f}",
            f"{percentile(everything, 0.50):.1f}",
            f"{percentile(everything, 0.95):.1f}",
            f"{percentile(everything, 0.99):.1f}",
            f"{max(everything):.1f}",
            str(tally.error_count()),
        )
    return table


def print_errors(tally: Tally, server: Server) -> None:
    if tally.errors:
        table = Table(title="Errors by kind and status")
        table.add_column("kind: status")
        table.add_column("count", justify="right")
        for key, count in tally.errors.most_common():
            table.add_row(key, str(count))
        console.print(table)
    logged = server.log_errors()
    console.print(f"  server log: {len(logged)} error/exception line(s), by kind:")
    for line, count in Counter(line[:160] for line in logged).most_common(5):
        console.print(f"    {count} x {line}")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def report_load(tally: Tally, elapsed: float, server: Server, clients: int, cpu: CpuUse) -> None:
    console.print(latency_table(f"Load: {clients} clients, {elapsed:.0f} s", tally, elapsed))
    print_errors(tally, server)
    errors = tally.error_count()
    by_status = ", ".join(f"{s}: {n}" for s, n in tally.by_status.most_common()) or "none"
    table = Table(title="Load: target vs measured")
    for column in ("measure", "target", "measured", "verdict"):
        table.add_column(column)
    table.add_row(
        "errors (5xx, 4xx, connection, timeout)",
        "0",
        f"{errors} ({by_status})",
        verdict(errors == 0),
    )
    table.add_row("clients", str(clients), str(clients), "")
    table.add_row("throughput", "(recorded)", f"{tally.answered() / elapsed:.1f} req/s", "")
    table.add_row(
        "cores busy: server / load generator / other",
        f"of {os.cpu_count()}",
        f"{cpu.server:.2f} / {cpu.load:.2f} / {cpu.other:.2f}",
        "",
    )
    table.add_row("load average after (1/5/15 min)", "", load_average(), "")
    console.print(table)


def report_soak(
    tally: Tally,
    elapsed: float,
    samples: list[tuple[float, float]],
    args: argparse.Namespace,
    server: Server,
) -> bool:
    console.print(latency_table(f"Soak: {args.soak_rate:g} req/s, {elapsed:.0f} s", tally, elapsed))
    print_errors(tally, server)
    after_warmup = [rss for at, rss in samples if at <= args.warmup_seconds + 0.5]
    baseline = after_warmup[-1]
    end = samples[-1][1]
    steady = [rss for at, rss in samples if at >= args.warmup_seconds - 0.5]
    change = (end - baseline) / baseline
    series = Table(title=f"Server RSS (MiB), sampled every {args.sample_seconds} s")
    for column in ("start", "end of warm-up", "min after", "max after", "end", "change"):
        series.add_column(column, justify="right")
    series.add_row(
        f"{samples[0][1]:.1f}",
        f"{baseline:.1f} @{args.warmup_seconds}s",
        f"{min(steady):.1f}",
        f"{max(steady):.1f}",
        f"{end:.1f} @{samples[-1][0]:.0f}s",
        f"{change:+.1%}",
    )
    console.print(series)
    console.print("  series: " + " ".join(f"{rss:.0f}" for _at, rss in samples))
    flat = abs(change) <= RSS_TOLERANCE
    errors = tally.error_count()
    table = Table(title="Soak: target vs measured")
    for column in ("measure", "target", "measured", "verdict"):
        table.add_column(column)
    table.add_row(
        "RSS end vs end of warm-up", f"within ±{RSS_TOLERANCE:.0%}", f"{change:+.1%}", verdict(flat)
    )
    table.add_row("errors", "0", str(errors), verdict(errors == 0))
    table.add_row(
        "duration",
        "600 s",
        f"{elapsed:.0f} s",
        "" if args.soak_seconds >= 600 else "[yellow]SHORTER than the 10-minute target[/]",
    )
    table.add_row(
        "rate", f"{args.soak_rate:g} req/s", f"{tally.answered() / elapsed:.1f} req/s", ""
    )
    table.add_row("load average after (1/5/15 min)", "", load_average(), "")
    console.print(table)
    return flat and errors == 0


# -- main ----------------------------------------------------------------------------------


async def prepare(server: Server, args: argparse.Namespace) -> tuple[str, list[str]]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
        token = await login(http)
        keys = await register_devices(http, args)
    return token, keys


def run(args: argparse.Namespace, database_url: str, workdir: Path) -> int:
    import secrets

    secret = secrets.token_urlsafe(32)
    console.print(
        f"[bold]Load and soak benchmark[/]  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
        f"  database      {describe_database(database_url)}\n"
        "  server        uvicorn, 1 worker, --no-access-log, 127.0.0.1 (not pinned); "
        f"HOMEPOT_RATE_LIMITS__INGEST_REQUESTS_PER_MINUTE={INGEST_LIMIT}\n"
        f"  settings      {' '.join(args.server_setting) or '(no extra server settings)'}\n"
        f"  fleet         {args.sites} sites, {args.devices} terminals registered via the API\n"
        "  mix           " + ", ".join(f"{k} {w}" for k, w in MIX) + " (weights)\n"
        f"  machine       {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"load average {load_average()}"
    )
    asyncio.run(make_admin(database_url))
    ok = True
    token: str | None = None
    keys: list[str] = []
    if args.seconds:
        tally = Tally()
        with Server(database_url, workdir, secret, args.server_setting) as server:
            token, keys = asyncio.run(prepare(server, args))
            traffic = Traffic(token, keys, tally)
            console.print(
                f"  load          {args.clients} clients in {args.pools} httpx pools for "
                f"{args.seconds} s "
                f"(load average before: {load_average()})"
            )
            elapsed, cpu = asyncio.run(
                run_load(server, traffic, args.clients, args.seconds, args.pools)
            )
        report_load(tally, elapsed, server, args.clients, cpu)
        ok = ok and tally.error_count() == 0
    if args.soak_seconds:
        tally = Tally()
        with Server(database_url, workdir, secret, args.server_setting) as server:
            if token is None:
                token, keys = asyncio.run(prepare(server, args))
            traffic = Traffic(token, keys, tally)
            console.print(
                f"  soak          {args.soak_rate:g} req/s for {args.soak_seconds} s, warm-up "
                f"{args.warmup_seconds} s, fresh server process "
                f"(load average before: {load_average()})"
            )
            elapsed, samples = asyncio.run(run_soak(server, traffic, args))
        ok = report_soak(tally, elapsed, samples, args, server) and ok
    console.print("[bold]all targets met[/]" if ok else "[bold red]some targets missed[/]")
    return 0 if ok else 1


def main() -> None:
    args = parse_args()
    raise_keyboard_interrupt_on_sigterm()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="homepot-load-") as workdir,
            benchmark_database(args.database, args.postgres_server, "load") as url,
        ):
            code = run(args, url, Path(workdir))
    except KeyboardInterrupt:
        console.print("interrupted; server stopped and the benchmark database removed")
        sys.exit(130)
    sys.exit(code)


if __name__ == "__main__":
    main()
