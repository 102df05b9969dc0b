"""Where the server's CPU goes when it takes device reports and telemetry batches over HTTP.

Drives the real app in-process (httpx ``ASGITransport``, no sockets, no uvicorn) on a
throw-away migrated database, PostgreSQL and/or SQLite:

- ``reports``: ``POST /api/v1/agent/report`` as the simulator sends it (heartbeat, one
  sample, ``jobs_limit`` 10), each device in turn;
- ``batches``: ``POST /api/v1/agent/telemetry`` with 500-sample batches.

Requests go one at a time, and the CPU is read with ``time.process_time`` inside the ASGI
call (the app's own work, plus whatever the recorder's writer did while the request waited
on the database), then the recorder's final flush is added. The client's own work (building
and reading requests) is outside the measured span. This is the most load-robust figure on a
shared machine: CPU time, not wall time. ``--profile`` prints the cProfile of each phase.

    PYTHONPATH=src .venv/bin/python benchmarks/profile_ingest.py --reports 2000 --batches 40
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import uvloop
from _common import DEFAULT_POSTGRES_SERVER, benchmark_database, console
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp, Receive, Scope, Send

from homepot.config import AnalyticsSettings, AuthSettings, Settings
from homepot.db import utcnow
from homepot.kit.keys import hash_key, new_bootstrap_key
from homepot.main import create_app
from homepot.site.models import Site

SECRET = "profile-ingest-secret-key-long-enough-for-hs256"


class CpuMeter:
    """ASGI wrapper: CPU seconds spent inside the app's calls (requests sent one at a time)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.cpu = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.process_time()
        try:
            await self.app(scope, receive, send)
        finally:
            self.cpu += time.process_time() - start


class Sampler:
    """A statistical profiler: every ``interval`` of this process's CPU time (ITIMER_PROF,
    in practice at the kernel's tick), the main thread's stack is noted. Cheap enough not to
    change what it measures, unlike cProfile, which multiplies the cost of code made of many
    small calls (routing, dependency injection). SQLAlchemy runs its ORM work in a greenlet
    whose stack does not lead back to the request, so every sample of the phase counts; the
    client's own share shows under ``httpx``."""

    def __init__(self, interval: float = 0.0005) -> None:
        self.interval = interval
        self.inclusive: Counter[str] = Counter()
        self.own: Counter[str] = Counter()
        self.samples = 0

    def _take(self, _signum: int, frame: FrameType | None) -> None:
        names: list[str] = []
        while frame is not None:
            code = frame.f_code
            names.append(f"{_short(code.co_filename)}:{code.co_name}")
            frame = frame.f_back
        self.samples += 1
        if names:
            self.own[names[0]] += 1
        for name in set(names):
            self.inclusive[name] += 1

    def start(self) -> None:
        signal.signal(signal.SIGPROF, self._take)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)

    def report(self, lines: int) -> str:
        total = max(self.samples, 1)
        out = [f"{self.samples} samples; inclusive share:"]
        out += [
            f"  {100 * n / total:5.1f}%  {name}" for name, n in self.inclusive.most_common(lines)
        ]
        out.append("own share:")
        out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in self.own.most_common(lines)]
        return "\n".join(out)


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def sample(moment: datetime, **extra: Any) -> dict[str, Any]:
    """One sample in wire form, with the fields the simulator's terminals send."""
    return {
        "event_id": str(uuid.uuid4()),
        "timestamp": moment.isoformat(),
        "collection_interval_seconds": 30.0,
        "cpu_percent": 31.4,
        "memory_percent": 52.1,
        "disk_percent": 40.3,
        "network_latency_ms": 21.7,
        "transaction_count": 3,
        "transaction_volume": 42.55,
        "error_rate": 0.41,
        "active_connections": 2,
        "queue_depth": 0,
        "extra_metrics": {
            "site_load": 0.512,
            "payment_gateway_timeouts": 0,
            "config_version": "cfg-7",
        },
        **extra,
    }


def report_body(moment: datetime) -> dict[str, Any]:
    return {
        "report_id": str(uuid.uuid4()),
        "jobs_limit": 10,
        "heartbeat": {
            "message_id": str(uuid.uuid4()),
            "status": "ok",
            "firmware_version": "4.3.0",
            "config_version": "cfg-7",
            "uptime_seconds": 1234.5,
        },
        "samples": [sample(moment)],
    }


def batch_body(size: int, moment: datetime) -> dict[str, Any]:
    return {"samples": [sample(moment - timedelta(milliseconds=n)) for n in range(size)]}


async def register(app: Any, http: httpx.AsyncClient, devices: int, label: str) -> list[str]:
    """``devices`` devices registered through the API; returns their Authorization headers."""
    site_id = f"profile-{label}"
    key = new_bootstrap_key()
    async with app.state.session_factory() as session:
        session.add(
            Site(
                site_id=site_id,
                name="Profile store",
                timezone="UTC",
                config={},
                bootstrap_key_hash=hash_key(key),
                bootstrap_key_expires_at=utcnow() + timedelta(hours=1),
            )
        )
        await session.commit()
    headers = []
    for n in range(devices):
        response = await http.post(
            "/api/v1/agent/register",
            json={"site_id": site_id, "device_id": f"{label}-{n:05d}", "bootstrap_key": key},
        )
        response.raise_for_status()
        headers.append(f"Bearer {response.json()['api_key']}")
    return headers


async def phase(
    meter: CpuMeter,
    app: Any,
    http: httpx.AsyncClient,
    requests: list[tuple[str, dict[str, Any], str]],
    expected: int,
    profile: bool,
) -> tuple[float, float, str]:
    """Send ``requests`` one at a time; returns (in-request CPU s, flush CPU s, profile)."""
    sampler = Sampler() if profile else None
    meter.cpu = 0.0
    begin = time.process_time()
    if sampler is not None:
        sampler.start()
    for path, body, authorization in requests:
        response = await http.post(path, json=body, headers={"Authorization": authorization})
        if response.status_code != expected:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
    in_requests = meter.cpu
    if sampler is not None:
        sampler.stop()
        console.print(
            f"phase CPU {time.process_time() - begin:.3f} s, in requests {in_requests:.3f} s"
        )
    start = time.process_time()
    await app.state.recorder.flush()
    flushed = time.process_time() - start
    return in_requests, flushed, sampler.report(60) if sampler is not None else ""


async def run(database_url: str, args: argparse.Namespace, label: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="homepot-profile-") as spool:
        settings = Settings(
            database_url=database_url,
            auth=AuthSettings(secret_key=SECRET),
            analytics=AnalyticsSettings(spool_dir=Path(spool)),
        )
        app = create_app(settings)
        meter = CpuMeter(app)
        async with LifespanManager(app):
            transport = httpx.ASGITransport(app=meter, client=("203.0.113.7", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                headers = await register(app, http, args.devices, label)
                results: dict[str, float] = {}
                now = datetime.now(UTC)
                warm = [
                    ("/api/v1/agent/report", report_body(now), h) for h in headers
                ]  # first heartbeat of each device: offline -> online
                await phase(meter, app, http, warm, 200, False)
                if args.reports:
                    now = datetime.now(UTC)
                    requests = [
                        ("/api/v1/agent/report", report_body(now), headers[n % len(headers)])
                        for n in range(args.reports)
                    ]
                    cpu, flushed, profile = await phase(
                        meter, app, http, requests, 200, args.profile
                    )
                    results["report_ms"] = cpu * 1e3 / args.reports
                    results["report_flush_ms"] = flushed * 1e3 / args.reports
                    if profile:
                        console.print(f"[bold]{label}: reports[/]\n{profile}")
                if args.batches:
                    now = datetime.now(UTC)
                    requests = [
                        (
                            "/api/v1/agent/telemetry",
                            batch_body(args.batch_size, now),
                            headers[n % len(headers)],
                        )
                        for n in range(args.batches)
                    ]
                    cpu, flushed, profile = await phase(
                        meter, app, http, requests, 202, args.profile
                    )
                    rows = args.batches * args.batch_size
                    results["batch_us_per_row"] = cpu * 1e6 / rows
                    results["batch_flush_us_per_row"] = flushed * 1e6 / rows
                    if profile:
                        console.print(f"[bold]{label}: batches[/]\n{profile}")
                return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--reports", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--profile", action="store_true", help="print cProfile of each phase")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop; the served app runs on uvloop (uvicorn's default when installed),"
        " where a database round trip costs about half the CPU of asyncio's",
    )
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER)
    args = parser.parse_args()
    load = os.getloadavg()
    console.print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for kind in args.backends.split(","):
        with benchmark_database(kind, args.postgres_server, "profile") as url:
            if args.loop == "uvloop":
                results = uvloop.run(run(url, args, kind))
            else:
                results = asyncio.run(run(url, args, kind))
        total_report = results.get("report_ms", 0) + results.get("report_flush_ms", 0)
        total_row = results.get("batch_us_per_row", 0) + results.get("batch_flush_us_per_row", 0)
        console.print(
            f"{kind}: report {results.get('report_ms', 0):.3f} ms in request + "
            f"{results.get('report_flush_ms', 0):.3f} ms flush = {total_report:.3f} ms CPU"
            f" (target <= 3 ms); batch row {results.get('batch_us_per_row', 0):.1f} µs in"
            f" request + {results.get('batch_flush_us_per_row', 0):.1f} µs flush ="
            f" {total_row:.1f} µs CPU (target <= 33 µs, i.e. {1e6 / max(total_row, 1e-9):,.0f}"
            " rows/s per core)"
        )
    load = os.getloadavg()
    console.print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
