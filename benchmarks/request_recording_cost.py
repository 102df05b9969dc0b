"""What recording one request costs the server's CPU, measured in-process, piece by piece.

``request_logging.py`` measures recording end to end (two real servers, wrk), where a
request costs ~1 ms of CPU and more on a busy machine: a few microseconds of recording sink
in that noise. This script measures the recording itself, in one process:

1. **The request path**: the request-log middleware (``RequestLogMiddleware``) around a
   trivial ASGI app that answers at once (as the real routes do, it sets the route and
   the user), with recording off and on; process CPU per request, the two modes
   alternating over ``--repeats`` runs of ``--requests`` requests.
2. **The writer**: the recorder's flush of those requests' rows into the database (rows
   built, redacted, written with COPY on PostgreSQL), process CPU per row, ``--repeats``
   times. The writer runs in the server process, so its CPU is part of what a recorded
   request costs.

The figure against the goal (issue 13: <= 20 us of server CPU per recorded request) is the
request path's difference on - off plus the writer's CPU per row. Each piece is reported as
the minimum over the repeats (what the code costs when nothing else interferes) and the
median.

Run: ``.venv/bin/python benchmarks/request_recording_cost.py`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import time
from pathlib import Path

from _common import (
    DEFAULT_POSTGRES_SERVER,
    benchmark_database,
    console,
    describe_database,
    median,
)
from prometheus_client import CollectorRegistry
from starlette.types import Message, Receive, Scope, Send

from homepot.analytics.middleware import RequestLogMiddleware
from homepot.analytics.recorder import Recorder
from homepot.config import AnalyticsSettings, AuthSettings, Settings
from homepot.db import create_engine

GOAL_US = 20.0
PATH = "/api/v1/users/me"
BODY = b'{"id": "0123456789abcdef0123456789abcdef", "email": "someone@example.com"}'


class _Route:
    path = PATH


_ROUTE = _Route()


async def trivial_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers at once, setting what the real app sets: the route and the user."""
    scope["route"] = _ROUTE
    scope["state"]["user_id"] = "0123456789abcdef0123456789abcdef"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"74")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def request_scope() -> Scope:
    return {
        "type": "http",
        "method": "GET",
        "path": PATH,
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"wrk/4.1.0"),
            (b"authorization", b"Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl"),
        ],
        "client": ("127.0.0.1", 50000),
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(_message: Message) -> None:
    return None


async def run_requests(middleware: RequestLogMiddleware, count: int) -> float:
    """Process CPU per request, in microseconds."""
    gc.collect()
    started = time.process_time()
    for _ in range(count):
        await middleware(request_scope(), _receive, _send)
    return (time.process_time() - started) / count * 1e6


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="CPU per recorded request, in-process: the middleware and the writer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per mode and flushes")
    args = parser.parse_args()
    if args.requests < 1 or args.repeats < 1:
        parser.error("--requests and --repeats must be at least 1")
    return args


async def measure(args: argparse.Namespace, url: str, workdir: Path) -> dict[str, list[float]]:
    engine = create_engine(url)
    try:
        middlewares: dict[str, tuple[RequestLogMiddleware, Recorder]] = {}
        for mode in ("off", "on"):
            settings = Settings(
                database_url=url,
                auth=AuthSettings(secret_key="x" * 40),
                analytics=AnalyticsSettings(
                    spool_dir=workdir / f"spool-{mode}",
                    record_requests=mode == "on",
                    # Room for every run's rows: nothing is dropped while they wait.
                    queue_max_events=max(100_000, args.requests * 2),
                ),
            )
            recorder = Recorder(engine, settings.analytics)
            middleware = RequestLogMiddleware(
                trivial_app,
                settings=settings,
                recorder=lambda r=recorder: r,
                registry=CollectorRegistry(),
            )
            middlewares[mode] = (middleware, recorder)
            await run_requests(middleware, min(2_000, args.requests))  # warm caches
            await recorder.flush()
        figures: dict[str, list[float]] = {"off": [], "on": [], "writer": []}
        recorder = middlewares["on"][1]
        for _ in range(args.repeats):
            for mode in ("off", "on"):
                figures[mode].append(await run_requests(middlewares[mode][0], args.requests))
            queued = recorder.queued
            gc.collect()
            started = time.process_time()
            await recorder.flush()
            figures["writer"].append((time.process_time() - started) / max(queued, 1) * 1e6)
        snapshot = recorder.snapshot()
        expected = min(2_000, args.requests) + args.requests * args.repeats
        if snapshot["written"] != expected or snapshot["dropped"] or snapshot["rejected"]:
            raise RuntimeError(f"rows written {snapshot['written']}, expected {expected}")
        return figures
    finally:
        await engine.dispose()


def main() -> None:
    args = parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="homepot-bench-") as workdir,
        benchmark_database(args.database, args.postgres_server, "reqcost") as url,
    ):
        console.print(
            f"[bold]CPU per recorded request, in-process[/]  database {describe_database(url)}\n"
            f"  {args.repeats} x {args.requests} requests per mode (alternating), a flush "
            f"after each pair; load average {'/'.join(f'{v:.1f}' for v in os.getloadavg())}"
        )
        figures = asyncio.run(measure(args, url, Path(workdir)))

    def show(values: list[float]) -> str:
        return f"min {min(values):6.2f}  median {median(values):6.2f}"

    console.print(f"middleware, recording off   {show(figures['off'])} us/request")
    console.print(f"middleware, recording on    {show(figures['on'])} us/request")
    added = [on - off for off, on in zip(figures["off"], figures["on"], strict=True)]
    console.print(f"request path added          {show(added)} us/request")
    console.print(f"writer (build, redact, COPY) {show(figures['writer'])} us/row")
    best = min(figures["on"]) - min(figures["off"]) + min(figures["writer"])
    typical = median(added) + median(figures["writer"])
    met = "[green]met[/]" if typical <= GOAL_US else "[red]NOT met[/]"
    console.print(
        f"CPU per recorded request    [bold]{typical:.1f} us[/] (medians; {best:.1f} from the "
        f"minima), goal <= {GOAL_US:g} us: {met}"
    )
    console.print(f"load average {'/'.join(f'{v:.1f}' for v in os.getloadavg())} at the end")


if __name__ == "__main__":
    main()
