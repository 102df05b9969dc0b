"""Server CPU per device report and per authenticated GET, against the real server, with the
code under test and a baseline tree side by side.

For each tree (this checkout, and ``--baseline-src``, e.g. main's ``src`` in another
worktree) the real server is started (``uvicorn --factory homepot.main:create_app``, pinned
to cpu 0; the client is not pinned) on a throw-away PostgreSQL database, ``--devices`` devices
register and report once, and then, one request at a time from a real HTTP client:

- ``idle``: nothing is sent; the server's own background work, in ms of CPU per second;
- ``report paced``: ``POST /api/v1/agent/report`` (heartbeat + one sample, jobs in the
  answer) at ``--rate`` per second, as a fleet's terminals send them (1,000 terminals at a
  30 s interval: 33/s);
- ``report back to back``: the same, as fast as the server answers;
- ``GET /users/me``: an admin's bearer token, back to back.

Server CPU is the server process's utime + stime (``/proc/<pid>/stat``) over the phase,
divided by the requests answered (the recorder's flush of the phase's rows included). The
trees alternate for ``--rounds`` rounds (A B B A ...), so that both see the same machine;
the machine is shared, so read the ratios, and the load average printed with each round.

    .venv/bin/python benchmarks/report_cpu.py --baseline-src /work/main/src
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from _common import (
    DEFAULT_POSTGRES_SERVER,
    ServerProcess,
    benchmark_database,
    console,
    raise_keyboard_interrupt_on_sigterm,
    server_environment,
)
from fleet_capacity import process_cpu_seconds
from profile_ingest import SECRET, report_body
from rich.table import Table

from homepot.auth.models import Role
from homepot.auth.service import create_access_token, create_user
from homepot.config import AuthSettings
from homepot.db import create_engine, create_session_factory, utcnow
from homepot.kit.keys import hash_key, new_bootstrap_key
from homepot.site.models import Site

TARGET_REPORT_MS = 3.0
PHASES = ("idle", "report paced", "report back to back", "GET /users/me")


async def _prepare(url: str, base_url: str, devices: int) -> tuple[list[dict[str, str]], str]:
    """Devices registered over HTTP (each has reported once) and an admin's bearer token."""
    engine = create_engine(url)
    key = new_bootstrap_key()
    try:
        async with create_session_factory(engine)() as session:
            session.add(
                Site(
                    site_id="cpu",
                    name="CPU store",
                    timezone="UTC",
                    config={},
                    bootstrap_key_hash=hash_key(key),
                    bootstrap_key_expires_at=utcnow() + timedelta(hours=1),
                )
            )
            admin = await create_user(
                session,
                email="report-cpu@example.com",
                password="report-cpu-benchmark-password",
                role=Role.admin,
            )
            await session.commit()
            token = create_access_token(admin, AuthSettings(secret_key=SECRET))
    finally:
        await engine.dispose()
    headers = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        for n in range(devices):
            response = await http.post(
                "/api/v1/agent/register",
                json={"site_id": "cpu", "device_id": f"cpu-{n:05d}", "bootstrap_key": key},
            )
            response.raise_for_status()
            header = {"Authorization": f"Bearer {response.json()['api_key']}"}
            headers.append(header)
            # The first report turns the device online; the measured ones keep it there.
            reported = await http.post(
                "/api/v1/agent/report", json=report_body(datetime.now(UTC)), headers=header
            )
            reported.raise_for_status()
    return headers, token


async def _phase(
    http: httpx.AsyncClient,
    pid: int,
    phase: str,
    seconds: float,
    rate: float,
    devices: list[dict[str, str]],
    token: str,
) -> dict[str, float]:
    """One phase: requests answered, and the server's CPU seconds over it."""
    cpu_before, started = process_cpu_seconds(pid), time.monotonic()
    answered = 0
    pace = 1 / rate if phase == "report paced" else 0.0
    due = started
    while phase != "idle" and time.monotonic() - started < seconds:
        if phase == "GET /users/me":
            response = await http.get(
                "/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}
            )
        else:
            response = await http.post(
                "/api/v1/agent/report",
                json=report_body(datetime.now(UTC)),
                headers=devices[answered % len(devices)],
            )
        if response.status_code != 200:
            raise RuntimeError(f"{phase}: {response.status_code} {response.text[:300]}")
        answered += 1
        if pace:
            due += pace
            await asyncio.sleep(max(0.0, due - time.monotonic()))
    # The recorder flushes every 0.5 s: its writing of the phase's rows belongs to the phase.
    await asyncio.sleep(seconds if phase == "idle" else 0.7)
    elapsed = time.monotonic() - started
    return {
        "requests": answered,
        "seconds": elapsed,
        "cpu": process_cpu_seconds(pid) - cpu_before,
        "load": os.getloadavg()[0],
    }


async def _measure(
    url: str, server: ServerProcess, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    devices, token = await _prepare(url, server.base_url, args.devices)
    results = {}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        await asyncio.sleep(2)  # registration's aftermath settles
        for phase in PHASES:
            results[phase] = await _phase(
                http, server.pid, phase, args.seconds, args.rate, devices, token
            )
    return results


def _run_tree(src: str, args: argparse.Namespace, workdir: Path) -> dict[str, dict[str, float]]:
    """The server of the tree whose package is in ``src``, on a database of its own."""
    with benchmark_database("postgresql", args.postgres_server, "reportcpu") as url:
        env = server_environment(url, workdir, secret=SECRET)
        env["PYTHONPATH"] = src
        server = ServerProcess(env, workdir, pin_cpu=None if args.no_pin else "0")
        server.start()
        try:
            return asyncio.run(_measure(url, server, args))
        finally:
            server.stop()


def _per_request_ms(result: dict[str, float], phase: str) -> float:
    if phase == "idle":
        return 1e3 * result["cpu"] / result["seconds"]  # ms per second
    return 1e3 * result["cpu"] / max(result["requests"], 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--baseline-src",
        default=None,
        help="the src directory of the baseline tree (e.g. /work/main/src); none: this tree only",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds per tree, alternating")
    parser.add_argument("--seconds", type=float, default=15, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=33.3, help="paced reports per second")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER)
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server to cpu 0")
    args = parser.parse_args()
    raise_keyboard_interrupt_on_sigterm()
    here = str(Path(__file__).resolve().parent.parent / "src")
    trees = [("this tree", here)]
    if args.baseline_src:
        trees.insert(0, ("baseline", str(Path(args.baseline_src).resolve())))
    load = os.getloadavg()
    console.print(
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start; "
        + "; ".join(f"{name}: {src}" for name, src in trees)
    )
    order: list[tuple[str, str]] = []
    for n in range(args.rounds):
        order += trees if n % 2 == 0 else trees[::-1]
    figures: dict[tuple[str, str], list[float]] = defaultdict(list)
    rates: dict[tuple[str, str], list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="homepot-reportcpu-") as tmp:
        for n, (name, src) in enumerate(order):
            workdir = Path(tmp) / str(n)
            workdir.mkdir()
            results = _run_tree(src, args, workdir)
            line = []
            for phase, result in results.items():
                figures[name, phase].append(_per_request_ms(result, phase))
                rates[name, phase].append(result["requests"] / result["seconds"])
                unit = "ms/s" if phase == "idle" else "ms"
                line.append(f"{phase} {_per_request_ms(result, phase):.2f} {unit}")
            loads = [r["load"] for r in results.values()]
            console.print(
                f"  {name:9s} " + ", ".join(line) + f" (load {min(loads):.1f}-{max(loads):.1f})"
            )
    table = Table(title="Server CPU (median over rounds; idle in ms per second)")
    table.add_column("phase")
    for name, _ in trees:
        table.add_column(f"{name} ms", justify="right")
        table.add_column(f"{name} req/s", justify="right")
    if len(trees) == 2:
        table.add_column("this / baseline", justify="right")
    for phase in PHASES:
        row: list[Any] = [phase]
        medians = []
        for name, _ in trees:
            value = statistics.median(figures[name, phase])
            medians.append(value)
            row += [f"{value:.2f}", f"{statistics.median(rates[name, phase]):.0f}"]
        if len(trees) == 2:
            row.append(f"{medians[1] / medians[0]:.2f}")
        table.add_row(*row)
    console.print(table)
    for name, _ in trees:
        paced = statistics.median(figures[name, "report paced"])
        verdict = "met" if paced <= TARGET_REPORT_MS else "missed"
        console.print(
            f"{name}: {paced:.2f} ms server CPU per paced report "
            f"(target <= {TARGET_REPORT_MS:g} ms: {verdict})"
        )
    load = os.getloadavg()
    console.print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end")


if __name__ == "__main__":
    main()
