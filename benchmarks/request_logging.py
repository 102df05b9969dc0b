"""What request recording costs: an authenticated endpoint with the request log on versus off.

Starts the real server (uvicorn, one worker, ``homepot.main:create_app``) twice, side by
side, each on a database of its own (so that each runs its background singletons over its
own rows, as a lone server does): one with ``HOMEPOT_ANALYTICS__RECORD_REQUESTS`` false ("off"),
one with it true ("on"), both pinned to the same core (only one is loaded at a time) and the
load generator to the other. It drives ``GET /api/v1/users/me`` with a bearer token using
``wrk`` (or, when wrk is missing, an asyncio httpx client, which is slower and says so), for
each ``--connections`` count in turn, in short rounds that alternate between the two servers
in ABBA order (off, on | on, off | ...): both modes see the same machine, second by second.

Per round it measures the throughput and the **server CPU per request** (the server
process's user + system time over the round and a short settle after it, so that the
writer's flush of the round's rows is counted in it). Each off/on pair of a round gives a
throughput ratio and a CPU difference; the report gives their medians per connection count,
next to the goals (ratio on/off >= 0.97, <= 20 us of server CPU added per request). The CPU
figure moves far less than the throughput when other processes share the machine.

At the end it checks that the requests really reached ``api_request_logs``: the "on" server
must have stored one row per request it answered, give or take those in flight when a wrk
run stopped, and dropped none.

Run: ``.venv/bin/python benchmarks/request_logging.py`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from _common import (
    DEFAULT_POSTGRES_SERVER,
    ServerProcess,
    benchmark_database,
    console,
    describe_database,
    median,
    percentile,
    raise_keyboard_interrupt_on_sigterm,
    server_environment,
)
from rich.table import Table
from sqlalchemy import func, select

from homepot.analytics.models import APIRequestLog
from homepot.auth.models import Role
from homepot.auth.service import create_user
from homepot.db import create_engine, create_session_factory

ENDPOINT = "/api/v1/users/me"
EMAIL = "benchmark-admin@example.com"
MODES = ("off", "on")
SERVER_CPU = "0"
CLIENT_CPU = "1"
# Issue 13: recording nearly free: on/off throughput >= 0.97 at 1, 10 and 200 connections and
# <= 20 us of server CPU added per recorded request.
RATIO_GOAL = 0.97
CPU_ADDED_GOAL_US = 20.0


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers plus socket errors and timeouts


@dataclass(frozen=True)
class RunResult:
    connections: int
    round: int
    mode: str
    load: LoadResult
    # CPU time the server process spent per answered request, in microseconds, over the
    # round and its settle time: unlike the throughput, hardly moved by other processes.
    server_cpu_us: float
    # Cores kept busy by everything but the loaded server and the load generator (the
    # database, the idle server, any other process); a high figure means the round competed
    # for CPU.
    other_cores: float


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Throughput and server CPU per request of GET /api/v1/users/me (bearer token) "
            "with request recording on versus off, against two real uvicorn servers."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--database",
        choices=("postgresql", "sqlite"),
        default="postgresql",
        help="postgresql: a database created on --postgres-server and dropped afterwards; "
        "sqlite: a temporary file",
    )
    parser.add_argument(
        "--postgres-server",
        default=DEFAULT_POSTGRES_SERVER,
        help="PostgreSQL server URL (without a database name) to create the benchmark db on",
    )
    parser.add_argument(
        "--connections",
        default="1,10,200",
        help="comma-separated connection counts; each gets its own rounds",
    )
    parser.add_argument("--rounds", type=int, default=6, help="off/on pairs per connection count")
    parser.add_argument("--duration", type=int, default=3, help="seconds of load per round")
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of unmeasured load per server first"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds after each round before the server's CPU is read (the writer flushes "
        "every 0.5 s; its flush of the round's rows belongs to the round)",
    )
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "httpx"),
        default="auto",
        help="load generator; auto uses wrk when it is installed",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the servers and the load generator to separate cores with taskset",
    )
    args = parser.parse_args()
    try:
        args.connection_counts = [int(c) for c in args.connections.split(",") if c.strip()]
    except ValueError:
        parser.error("--connections must be comma-separated integers, e.g. 1,10,200")
    if not args.connection_counts or min(args.connection_counts) < 1:
        parser.error("--connections must hold counts of at least 1")
    for name in ("rounds", "duration"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0 or args.settle < 0:
        parser.error("--warmup and --settle must not be negative")
    return args


# -- the server ----------------------------------------------------------------------------


def event_loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


class Server(ServerProcess):
    """The server with request recording on or off, on ``event_loop_name()``, pinned to
    SERVER_CPU or not, run from ``workdir``."""

    def __init__(self, env: dict[str, str], record: bool, workdir: Path, pin: bool) -> None:
        super().__init__(
            {**env, "HOMEPOT_ANALYTICS__RECORD_REQUESTS": "true" if record else "false"},
            workdir,
            uvicorn_args=["--loop", event_loop_name()],
            pin_cpu=SERVER_CPU if pin else None,
        )
        # The recorder's counters in /api/v1/health are shown to admins only.
        self.token: str | None = None

    def recorder_counters(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        response = httpx.get(f"{self.base_url}/api/v1/health", headers=headers, timeout=5)
        response.raise_for_status()
        counters: dict[str, Any] = response.json()["recorder"]
        return counters

    def wait_until_recorder_idle(self, timeout: float = 30.0) -> None:
        """Until every event enqueued so far has been written (or counted as lost)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c = self.recorder_counters()
            settled = c["written"] + c["duplicates_skipped"] + c["spilled"] + c["dropped"]
            if c["queued"] == 0 and settled >= c["enqueued"]:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the recorder did not catch up within {timeout:.0f}s")


# -- users and tokens ----------------------------------------------------------------------


def create_benchmark_user(database_url: str, env: dict[str, str], password: str) -> str:
    """An admin to log in as (health shows the recorder counters to admins only)."""
    cli = Path(sys.executable).with_name("homepot")
    if cli.exists():
        probe = subprocess.run(
            [str(cli), "users", "create", "--help"], env=env, capture_output=True, check=False
        )
        if probe.returncode == 0:
            subprocess.run(
                [
                    str(cli),
                    *("users", "create", "--email", EMAIL, "--password", password),
                    *("--role", Role.admin.value),
                ],
                env=env,
                capture_output=True,
                check=True,
            )
            return "homepot users create"

    async def create() -> None:
        engine = create_engine(database_url)
        try:
            async with create_session_factory(engine)() as session:
                await create_user(session, email=EMAIL, password=password, role=Role.admin)
                await session.commit()
        finally:
            await engine.dispose()

    asyncio.run(create())
    return "homepot.auth.service.create_user (the CLI has no `users create` yet)"


def obtain_token(server: Server, password: str) -> str:
    response = httpx.post(
        f"{server.base_url}/api/v1/auth/token",
        data={"username": EMAIL, "password": password},
        timeout=10,
    )
    if response.status_code != 200:
        raise RuntimeError(f"login failed: {response.status_code} {response.text}")
    token = str(response.json()["access_token"])
    check = httpx.get(
        f"{server.base_url}{ENDPOINT}", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    if check.status_code != 200:
        raise RuntimeError(f"{ENDPOINT} refused the token: {check.status_code} {check.text}")
    return token


def count_logged_requests(database_url: str) -> int:
    async def count() -> int:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                total = await connection.scalar(
                    select(func.count())
                    .select_from(APIRequestLog)
                    .where(APIRequestLog.route == ENDPOINT)
                )
                return int(total or 0)
        finally:
            await engine.dispose()

    return asyncio.run(count())


# -- CPU accounting (Linux /proc) ----------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def own_and_children_cpu_seconds() -> float:
    """This script plus its finished children: the load generator, whichever one runs."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


# -- load generators -----------------------------------------------------------------------

_UNIT_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk_duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match[1]) * _UNIT_TO_MS[match[2]]


def parse_wrk(output: str) -> LoadResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output has no line matching {pattern!r}:\n{output}")
        return match

    done = find(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s)")
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx[1])
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return LoadResult(
        requests=int(done[1]),
        seconds=float(done[2]) * _UNIT_TO_MS[done[3]] / 1000,
        requests_per_second=float(find(r"^Requests/sec:\s+([\d.]+)")[1]),
        p50_ms=_wrk_duration_ms(find(r"^\s+50%\s+(\S+)")[1]),
        p99_ms=_wrk_duration_ms(find(r"^\s+99%\s+(\S+)")[1]),
        errors=errors,
    )


def run_wrk(url: str, token: str, connections: int, seconds: int, pin: bool) -> LoadResult:
    command = [
        "wrk",
        "--latency",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-H",
        f"Authorization: Bearer {token}",
        url,
    ]
    if pin:
        command = ["taskset", "-c", CLIENT_CPU, *command]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()}")
    return parse_wrk(completed.stdout)


def run_httpx(url: str, token: str, connections: int, seconds: int, pin: bool) -> LoadResult:
    """The fallback: ``connections`` asyncio workers, each sending one request at a time."""

    async def load() -> LoadResult:
        latencies: list[float] = []
        errors = 0
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(limits=limits, headers=headers, timeout=5) as client:
            started = time.perf_counter()
            deadline = started + seconds

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < deadline:
                    sent = time.perf_counter()
                    try:
                        response = await client.get(url)
                    except httpx.HTTPError:
                        errors += 1
                        continue
                    latencies.append((time.perf_counter() - sent) * 1000)
                    if response.status_code != 200:
                        errors += 1

            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.perf_counter() - started
        if not latencies:
            raise RuntimeError("the httpx load generator completed no request")
        return LoadResult(
            requests=len(latencies),
            seconds=elapsed,
            requests_per_second=len(latencies) / elapsed,
            p50_ms=percentile(latencies, 0.50),
            p99_ms=percentile(latencies, 0.99),
            errors=errors,
        )

    previous = os.sched_getaffinity(0)
    if pin:
        os.sched_setaffinity(0, {int(CLIENT_CPU)})
    try:
        return asyncio.run(load())
    finally:
        os.sched_setaffinity(0, previous)


# -- the benchmark -------------------------------------------------------------------------


def mode_order(rounds: int) -> list[tuple[int, str]]:
    """ABBA: off, on | on, off | off, on ... so that a linear drift cancels out."""
    order: list[tuple[int, str]] = []
    for number in range(1, rounds + 1):
        pair = MODES if number % 2 else tuple(reversed(MODES))
        order.extend((number, mode) for mode in pair)
    return order


def load_average() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


LoadFunction = Callable[[str, str, int, int, bool], LoadResult]


def measure(
    server: Server, load: LoadFunction, connections: int, args: argparse.Namespace
) -> tuple[LoadResult, float, float]:
    """One round against ``server``: the load, its server CPU per request (us), and the
    cores used by everything else."""
    pin = args.pin
    assert server.process is not None
    before = (
        machine_busy_seconds(),
        process_cpu_seconds(server.process.pid),
        own_and_children_cpu_seconds(),
    )
    started = time.monotonic()
    assert server.token is not None
    result = load(f"{server.base_url}{ENDPOINT}", server.token, connections, args.duration, pin)
    time.sleep(args.settle)
    elapsed = time.monotonic() - started
    busy = machine_busy_seconds() - before[0]
    server_cpu = process_cpu_seconds(server.process.pid) - before[1]
    load_cpu = own_and_children_cpu_seconds() - before[2]
    other = max(busy - server_cpu - load_cpu, 0.0) / elapsed
    return result, server_cpu / max(result.requests, 1) * 1e6, other


def run_benchmark(args: argparse.Namespace, urls: dict[str, str], workdir: Path) -> None:
    """``urls``: each mode's own database, so that each server is the only one on it and
    runs its background singletons (rollups, insights, ...) over its own rows, as one
    server does in production: rolling up what recording stored is part of its cost."""
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))
    if args.client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install -y wrk, or use --client httpx")
    args.pin = (
        not args.no_pin and shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) > 1
    )
    load: LoadFunction = run_wrk if use_wrk else run_httpx
    password = secrets.token_urlsafe(16)
    secret = secrets.token_urlsafe(32)
    envs: dict[str, dict[str, str]] = {}
    for mode in MODES:
        (workdir / mode).mkdir()
        envs[mode] = server_environment(urls[mode], workdir / mode, secret=secret)

    client_name = "wrk -t1" if use_wrk else "httpx (asyncio; wrk not used, expect lower figures)"
    pinning = "(not pinned)"
    if args.pin:
        pinning = (
            f"(both servers pinned to cpu {SERVER_CPU}, load generator to cpu {CLIENT_CPU}"
            + ("; PostgreSQL is not pinned)" if args.database == "postgresql" else ")")
        )
    console.print(
        f"[bold]Request recording benchmark[/]  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
        f"  endpoint      GET {ENDPOINT} (bearer token, admin)\n"
        f"  databases     off {describe_database(urls['off'])}\n"
        f"                on  {describe_database(urls['on'])}\n"
        f"  servers       two uvicorn, 1 worker each, loop {event_loop_name()}, --no-access-log;"
        " off = HOMEPOT_ANALYTICS__RECORD_REQUESTS=false, on = true\n"
        f"  load          {client_name}; connections {args.connections}; per connection count "
        f"{args.warmup}s warm-up per server, then {args.rounds} off/on pairs (ABBA) of "
        f"{args.duration}s + {args.settle:g}s settle\n"
        f"  cpus          {os.cpu_count()} {pinning}\n"
        f"  python        {platform.python_version()} on {platform.machine()}\n"
        f"  user created  via "
        + ", ".join({create_benchmark_user(urls[m], envs[m], password) for m in MODES})
        + "\n"
        f"  load average  {load_average()} (1/5/15 min) at start"
    )
    idle_check = machine_busy_seconds()
    time.sleep(1.0)
    busy_before = machine_busy_seconds() - idle_check
    console.print(
        f"  machine       {busy_before:.2f} cores busy in the second before the first run"
    )
    if busy_before > 0.25:
        console.print(
            "  [yellow]warning: other processes are using the CPU; wall-clock figures will be "
            "noisy (the CPU per request much less; watch the 'other cores' column)[/]"
        )

    servers = {mode: Server(envs[mode], mode == "on", workdir / mode, args.pin) for mode in MODES}
    results: list[RunResult] = []
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.token = obtain_token(server, password)
        servers["on"].wait_until_recorder_idle()
        rows_before = count_logged_requests(urls["on"])
        answered_on = 0
        in_flight_on = 0
        for connections in args.connection_counts:
            console.print(f"[bold]{connections} connection(s)[/]  load average {load_average()}")
            for mode in MODES:
                if args.warmup:
                    url = f"{servers[mode].base_url}{ENDPOINT}"
                    warm = load(url, servers[mode].token, connections, args.warmup, args.pin)
                    if mode == "on":
                        answered_on += warm.requests
                        in_flight_on += connections
            for number, mode in mode_order(args.rounds):
                measured, cpu_us, other = measure(servers[mode], load, connections, args)
                if mode == "on":
                    answered_on += measured.requests
                    in_flight_on += connections
                results.append(RunResult(connections, number, mode, measured, cpu_us, other))
                console.print(
                    f"  round {number} {mode:>3}  {measured.requests_per_second:8.1f} req/s  "
                    f"p50 {measured.p50_ms:6.2f}  p99 {measured.p99_ms:7.2f} ms | "
                    f"cpu {cpu_us:5.0f} us/req, other {other:.2f}, errors {measured.errors}"
                )
        servers["on"].wait_until_recorder_idle()
        counters = servers["on"].recorder_counters()
    finally:
        for server in servers.values():
            server.stop()
    rows = count_logged_requests(urls["on"]) - rows_before
    report(results, args)
    check_rows(rows, answered_on, in_flight_on, counters)
    console.print(f"load average {load_average()} (1/5/15 min) at the end")


def report(results: list[RunResult], args: argparse.Namespace) -> None:
    table = Table(title="Per connection count: medians over the rounds (latencies in ms)")
    for column in (
        "conns",
        "req/s off",
        "req/s on",
        "ratio on/off",
        "p99 off",
        "p99 on",
        "cpu us/req off",
        "cpu us/req on",
        "cpu added",
        "other cores",
        "errors off/on",
    ):
        table.add_column(column, justify="right")
    verdicts: list[str] = []
    for connections in args.connection_counts:
        runs = {
            m: [r for r in results if r.connections == connections and r.mode == m] for m in MODES
        }
        pairs = [(off, on) for off in runs["off"] for on in runs["on"] if off.round == on.round]
        ratios = [on.load.requests_per_second / off.load.requests_per_second for off, on in pairs]
        added = [on.server_cpu_us - off.server_cpu_us for off, on in pairs]
        ratio, cpu_added = median(ratios), median(added)
        table.add_row(
            str(connections),
            f"{median([r.load.requests_per_second for r in runs['off']]):.1f}",
            f"{median([r.load.requests_per_second for r in runs['on']]):.1f}",
            f"{ratio:.3f}",
            f"{median([r.load.p99_ms for r in runs['off']]):.2f}",
            f"{median([r.load.p99_ms for r in runs['on']]):.2f}",
            f"{median([r.server_cpu_us for r in runs['off']]):.0f}",
            f"{median([r.server_cpu_us for r in runs['on']]):.0f}",
            f"{cpu_added:+.0f}",
            f"{median([r.other_cores for r in results if r.connections == connections]):.2f}",
            f"{sum(r.load.errors for r in runs['off'])}/{sum(r.load.errors for r in runs['on'])}",
        )
        ratio_noise, cpu_noise = noise(ratios), noise(added)
        verdicts.append(
            f"{connections:>4} connection(s): ratio on/off [bold]{ratio:.3f}[/] ± {ratio_noise:.3f}"
            f" (pairs {min(ratios):.3f}..{max(ratios):.3f}), goal >= {RATIO_GOAL}: "
            f"{verdict(ratio - RATIO_GOAL, ratio_noise, ratio - 1 > ratio_noise)}\n"
            f"{'':>20}server CPU added [bold]{cpu_added:+.1f}[/] ± {cpu_noise:.1f} us/request "
            f"(pairs {min(added):+.0f}..{max(added):+.0f}), goal <= {CPU_ADDED_GOAL_US:g}: "
            f"{verdict(CPU_ADDED_GOAL_US - cpu_added, cpu_noise, -cpu_added > cpu_noise)}"
        )
    console.print(table)
    for line in verdicts:
        console.print(line)


def noise(values: list[float]) -> float:
    """Twice the standard error of the pairs' mean: how far the middle figure may be off
    (unbounded with a single pair, which tells nothing about it)."""
    return 2 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.inf


def verdict(margin: float, noise: float, on_beat_off: bool) -> str:
    """``margin``: how far the figure is on the good side of its goal (negative: the bad
    side). A margin inside the noise is neither met nor missed: the run could not tell.
    Neither is it when recording "on" beat "off" beyond the noise (``on_beat_off``): doing
    more work cannot be faster, so the run measured the machine's drift, not recording."""
    if on_beat_off:
        return "[yellow]not resolved[/] (on beat off beyond the noise: the machine drifted)"
    if abs(margin) <= noise:
        return "[yellow]not resolved[/] (the goal is within the noise of this run)"
    return "[green]met[/]" if margin > 0 else "[red]NOT met[/]"


def check_rows(rows: int, answered: int, in_flight: int, counters: dict[str, Any]) -> None:
    """The "on" server stored a row per request it answered (wrk counts answered requests
    only; the server also logs those in flight when a wrk run stopped), and dropped none."""
    surplus = rows - answered
    ok = 0 <= surplus <= in_flight and not counters["dropped"] and not counters["rejected"]
    outcome = "[green]OK[/]" if ok else "[red]MISMATCH[/]"
    console.print(
        f"api_request_logs check: {rows} rows for {answered} requests the 'on' server "
        f"answered (allowed: up to {in_flight} more, in flight when a run stopped); "
        f"dropped {counters['dropped']}, rejected {counters['rejected']}: {outcome}"
    )


def main() -> None:
    args = parse_args()
    raise_keyboard_interrupt_on_sigterm()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="homepot-bench-") as workdir,
            benchmark_database(args.database, args.postgres_server, "requests_off") as off,
            benchmark_database(args.database, args.postgres_server, "requests_on") as on,
        ):
            run_benchmark(args, {"off": off, "on": on}, Path(workdir))
    except KeyboardInterrupt:
        console.print("interrupted; servers stopped and the benchmark database removed")
        sys.exit(130)


if __name__ == "__main__":
    main()
