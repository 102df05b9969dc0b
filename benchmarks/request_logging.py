"""What request recording costs: an authenticated endpoint with the request log on versus off.

Starts the real server (uvicorn, one worker, ``homepot.main:create_app``) once per run, with
``HOMEPOT_ANALYTICS__RECORD_REQUESTS`` true ("on") or false ("off"), and drives
``GET /api/v1/users/me`` with a bearer token using ``wrk`` (or, when wrk is missing, an
asyncio httpx client, which is slower and says so). The modes alternate over several rounds
in an ABBA order (off, on | on, off | off, on ...), so that drift hits both equally, and the
median per mode is reported with the throughput ratio (on / off) and the p99 added.

After every "on" run the script checks that the requests really reached
``api_request_logs``: the rows written during the measured run must match the requests wrk
completed, give or take the requests still in flight when wrk stopped.

Run: ``.venv/bin/python benchmarks/request_logging.py`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
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
    round: int
    mode: str
    load: LoadResult  # the throughput phase: --connections, the server saturated
    latency: LoadResult | None  # the light-load phase: --latency-connections (1 by default)
    # CPU time the server process spent per answered request, in microseconds: unlike the
    # throughput, hardly moved by whatever else runs on the machine.
    server_cpu_us: float
    # Cores kept busy by everything but the server and the load generator (the database and
    # any other process); a high figure means the run competed for CPU.
    other_cores: float
    rows_logged: int | None  # "on" runs only: api_request_logs rows added by both phases
    dropped: int | None  # "on" runs only: events the recorder dropped at its memory bound


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Throughput and p50/p99 latency of GET /api/v1/users/me (bearer token) with "
            "request recording on versus off, against the real uvicorn server."
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
    parser.add_argument("--rounds", type=int, default=3, help="runs per mode")
    parser.add_argument(
        "--duration", type=int, default=8, help="seconds of the throughput phase per run"
    )
    parser.add_argument("--warmup", type=int, default=3, help="seconds of unmeasured load first")
    parser.add_argument(
        "--connections", type=int, default=16, help="connections in the throughput phase"
    )
    parser.add_argument(
        "--latency-duration",
        type=int,
        default=5,
        help="seconds of the light-load latency phase per run (0 skips it)",
    )
    parser.add_argument(
        "--latency-connections",
        type=int,
        default=1,
        help="connections in the light-load latency phase",
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
        help="do not pin the server and the load generator to separate cores with taskset",
    )
    args = parser.parse_args()
    for name in ("rounds", "duration", "connections", "latency_connections"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("warmup", "latency_duration"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
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


def run_benchmark(args: argparse.Namespace, database_url: str, workdir: Path) -> None:
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))
    if args.client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install -y wrk, or use --client httpx")
    pin = (
        not args.no_pin and shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) > 1
    )
    load = run_wrk if use_wrk else run_httpx
    password = secrets.token_urlsafe(16)
    env = server_environment(database_url, workdir, secret=secrets.token_urlsafe(32))

    client_name = "wrk -t1" if use_wrk else "httpx (asyncio; wrk not used, expect lower figures)"
    latency_phase = (
        f" + {args.latency_duration}s at {args.latency_connections} connection(s)"
        if args.latency_duration
        else ""
    )
    pinning = "(not pinned)"
    if pin:
        pinning = f"(server pinned to cpu {SERVER_CPU}, load generator to cpu {CLIENT_CPU}" + (
            "; PostgreSQL is not pinned)" if args.database == "postgresql" else ")"
        )
    console.print(
        f"[bold]Request recording benchmark[/]  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
        f"  endpoint      GET {ENDPOINT} (bearer token, admin)\n"
        f"  database      {describe_database(database_url)}\n"
        f"  server        uvicorn, 1 worker, loop {event_loop_name()}, --no-access-log; "
        "off = HOMEPOT_ANALYTICS__RECORD_REQUESTS=false\n"
        f"  load          {client_name}; per run {args.warmup}s warm-up, "
        f"{args.duration}s at {args.connections} connections{latency_phase}; "
        f"{args.rounds} round(s) per mode, ABBA order\n"
        f"  cpus          {os.cpu_count()} {pinning}\n"
        f"  python        {platform.python_version()} on {platform.machine()}\n"
        f"  user created  via {create_benchmark_user(database_url, env, password)}"
    )
    idle_check = machine_busy_seconds()
    time.sleep(1.0)
    busy_before = machine_busy_seconds() - idle_check
    console.print(
        f"  machine       {busy_before:.2f} cores busy in the second before the first run"
    )
    if busy_before > 0.25:
        console.print(
            "  [yellow]warning: other processes are using the CPU; the figures will be noisy "
            "(watch the 'other cores' column)[/]"
        )

    token: str | None = None
    results: list[RunResult] = []
    for number, mode in mode_order(args.rounds):
        server = Server(env, record=mode == "on", workdir=workdir, pin=pin)
        try:
            server.start()
            assert server.process is not None
            token = token or obtain_token(server, password)
            server.token = token
            url = f"{server.base_url}{ENDPOINT}"
            if args.warmup:
                load(url, token, args.connections, args.warmup, pin)
            before = None
            if mode == "on":
                server.wait_until_recorder_idle()
                before = count_logged_requests(database_url)
            cpu_before = (
                machine_busy_seconds(),
                process_cpu_seconds(server.process.pid),
                own_and_children_cpu_seconds(),
            )
            measured = load(url, token, args.connections, args.duration, pin)
            busy, server_cpu, load_cpu = (
                machine_busy_seconds() - cpu_before[0],
                process_cpu_seconds(server.process.pid) - cpu_before[1],
                own_and_children_cpu_seconds() - cpu_before[2],
            )
            latency = None
            if args.latency_duration:
                latency = load(url, token, args.latency_connections, args.latency_duration, pin)
            dropped = server.recorder_counters()["dropped"] if mode == "on" else None
        finally:
            server.stop()
        rows = count_logged_requests(database_url) - before if before is not None else None
        result = RunResult(
            round=number,
            mode=mode,
            load=measured,
            latency=latency,
            server_cpu_us=server_cpu / max(measured.requests, 1) * 1e6,
            other_cores=max(busy - server_cpu - load_cpu, 0.0) / measured.seconds,
            rows_logged=rows,
            dropped=dropped,
        )
        results.append(result)
        console.print(
            f"  round {number} {mode:>3}  {measured.requests_per_second:7.1f} req/s  "
            f"p50 {measured.p50_ms:5.2f}  p99 {measured.p99_ms:6.2f}"
            + (
                f" | @{args.latency_connections} p50 {latency.p50_ms:.2f}  p99 {latency.p99_ms:.2f}"
                if latency
                else ""
            )
            + f" | cpu {result.server_cpu_us:4.0f} us/req, other {result.other_cores:.2f}"
            + (f" | {rows} rows" if rows is not None else "")
        )
    report(results, args)


# Issue 13: recording nearly free: on/off throughput >= 0.97 (at 1, 10 and 200 connections:
# run the script once per --connections) and <= 20 us of server CPU added per request.
RATIO_GOAL = 0.97
CPU_ADDED_GOAL_US = 20


def report(results: list[RunResult], args: argparse.Namespace) -> None:
    heavy, light = f"@{args.connections}", f"@{args.latency_connections}"
    table = Table(title="Median per mode (latencies in ms; @N = N connections)")
    columns = ["recording", "runs", f"req/s{heavy}", f"p50{heavy}", f"p99{heavy}"]
    if args.latency_duration:
        columns += [f"p50{light}", f"p99{light}"]
    columns += ["server cpu us/req", "other cores", "errors"]
    for column in columns:
        table.add_column(column, justify="left" if column == "recording" else "right")
    medians: dict[str, dict[str, float]] = {}
    for mode in MODES:
        runs = [r for r in results if r.mode == mode]
        lights = [r.latency for r in runs if r.latency is not None]
        m = medians[mode] = {
            "rps": median([r.load.requests_per_second for r in runs]),
            "p50": median([r.load.p50_ms for r in runs]),
            "p99": median([r.load.p99_ms for r in runs]),
            "cpu": median([r.server_cpu_us for r in runs]),
            "other": median([r.other_cores for r in runs]),
        }
        if lights:
            m["light_p50"] = median([r.p50_ms for r in lights])
            m["light_p99"] = median([r.p99_ms for r in lights])
        errors = sum(r.load.errors + (r.latency.errors if r.latency else 0) for r in runs)
        cells = [mode, str(len(runs)), f"{m['rps']:.1f}", f"{m['p50']:.2f}", f"{m['p99']:.2f}"]
        if lights:
            cells += [f"{m['light_p50']:.2f}", f"{m['light_p99']:.2f}"]
        cells += [f"{m['cpu']:.0f}", f"{m['other']:.2f}", str(errors)]
        table.add_row(*cells)
    console.print(table)

    on, off = medians["on"], medians["off"]
    ratio = on["rps"] / off["rps"]

    def verdict(met: bool) -> str:
        return "[green]met[/]" if met else "[red]NOT met[/]"

    console.print(
        f"throughput ratio on/off {heavy:<5}  [bold]{ratio:.3f}[/]  goal >= {RATIO_GOAL} "
        f"{verdict(ratio >= RATIO_GOAL)}"
    )
    added = on["p99"] - off["p99"]
    console.print(
        f"p99 added {heavy:<4} (saturated)   [bold]{added:+.2f} ms[/]  goal <= 1 ms "
        f"{verdict(added <= 1)}  (p50 {on['p50'] - off['p50']:+.2f} ms)"
    )
    if "light_p99" in on:
        added = on["light_p99"] - off["light_p99"]
        console.print(
            f"p99 added {light:<4} (light load)  [bold]{added:+.2f} ms[/]  goal <= 1 ms "
            f"{verdict(added <= 1)}  (p50 {on['light_p50'] - off['light_p50']:+.2f} ms)"
        )
    cpu_added = on["cpu"] - off["cpu"]
    console.print(
        f"server cpu added               [bold]{cpu_added:+.0f} us[/] per request  goal <= "
        f"{CPU_ADDED_GOAL_US} us {verdict(cpu_added <= CPU_ADDED_GOAL_US)} "
        f"(ratio if CPU-bound: {off['cpu'] / on['cpu']:.3f})"
    )

    # wrk counts answered requests only; the server also logs those in flight when it stops.
    in_flight = args.connections + (args.latency_connections if args.latency_duration else 0)
    on_runs = [r for r in results if r.mode == "on"]
    problems = []
    answered = 0
    for run in on_runs:
        assert run.rows_logged is not None
        requests = run.load.requests + (run.latency.requests if run.latency else 0)
        answered += requests
        if not 0 <= run.rows_logged - requests <= in_flight or run.dropped:
            problems.append(
                f"round {run.round}: {run.rows_logged} rows for {requests} requests, "
                f"{run.dropped} dropped"
            )
    logged = sum(r.rows_logged or 0 for r in on_runs)
    outcome = "[green]OK[/]" if not problems else "[red]MISMATCH[/]: " + "; ".join(problems)
    console.print(
        f"api_request_logs check         {logged} rows for {answered} requests answered in the "
        f"'on' runs (allowed: up to {in_flight} more per run, in flight at the end) {outcome}"
    )


def main() -> None:
    args = parse_args()
    raise_keyboard_interrupt_on_sigterm()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="homepot-bench-") as workdir,
            benchmark_database(args.database, args.postgres_server, "requests") as url,
        ):
            run_benchmark(args, url, Path(workdir))
    except KeyboardInterrupt:
        console.print("interrupted; servers stopped and the benchmark database removed")
        sys.exit(130)


if __name__ == "__main__":
    main()
