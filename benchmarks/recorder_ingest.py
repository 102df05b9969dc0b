"""How fast the analytics recorder gets events into the database, and what producers pay.

Records N ``device_metrics`` events with realistic values into a started ``Recorder`` and
measures from the first ``record()`` to the end of ``flush()``: rows per second actually in
the table. The producer yields to the event loop every few events, as a stream of requests
would, so that the background writer runs alongside it. Each ``record()`` call is timed on
its own, because that is the time the request path pays.

Two references, measured in the same run on the same emptied table:

- **raw COPY** (PostgreSQL only): the very rows the recorder would store (completed, with
  their event ids), sent with one asyncpg ``copy_records_to_table`` straight into
  ``device_metrics``: what the database takes at best, with no idempotency and no producer.
  The ratio recorder / raw COPY is printed against the target (>= 0.5).
- **baseline**: what the spec's old system did: one INSERT and one COMMIT per event through
  an AsyncSession, awaited by the producer. It runs on fewer events (it is slow) and the
  ratio recorder / baseline is printed.

Run: ``.venv/bin/python benchmarks/recorder_ingest.py`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_POSTGRES_SERVER,
    benchmark_database,
    console,
    describe_database,
    percentile,
    raise_keyboard_interrupt_on_sigterm,
)
from rich.table import Table
from sqlalchemy import delete, func, select, text

from homepot.analytics.models import DeviceMetrics
from homepot.analytics.recorder import _SHAPES, Recorder
from homepot.config import AnalyticsSettings
from homepot.db import create_engine, create_session_factory

Fields = dict[str, Any]


@dataclass(frozen=True)
class IngestResult:
    approach: str
    batch_size: int | None
    events: int
    seconds: float
    rows_in_table: int
    caller_us: list[float]  # time each producer call took (record(), or the awaited insert)
    cpu_seconds: float  # CPU time of this process over the run: producer plus writer
    peak_queue: int | None = None
    lost: int | None = None  # dropped + spilled: events that did not go straight in

    @property
    def rows_per_second(self) -> float:
        return self.rows_in_table / self.seconds


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Recorder ingest rows/second (device_metrics) against a naive INSERT+COMMIT per "
            "event baseline, and the time a producer spends per event."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=200_000, help="events per recorder run")
    parser.add_argument(
        "--batch-sizes",
        default="100,500,2000",
        help="comma-separated recorder batch sizes, one run each (500 is the default setting)",
    )
    parser.add_argument(
        "--baseline-events", type=int, default=5_000, help="events for the naive baseline"
    )
    parser.add_argument(
        "--yield-every",
        type=int,
        default=100,
        help="the producer yields to the event loop after this many record() calls",
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
    args = parser.parse_args()
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batch-sizes must be integers separated by commas: {args.batch_sizes!r}")
    if not args.batch_sizes or any(not 1 <= b <= 10_000 for b in args.batch_sizes):
        parser.error("--batch-sizes: each must be between 1 and 10000 (the setting's range)")
    for name in ("events", "baseline_events", "yield_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def device_metrics_events(count: int, seed: int = 2026) -> list[Fields]:
    """Telemetry as 250 terminals send it: one sample a minute each, values in plausible ranges."""
    rng = random.Random(seed)
    devices = [f"pos-terminal-{n:03d}" for n in range(1, 251)]
    firmware = ("4.2.0", "4.2.1", "4.3.0-rc1")
    start = datetime.now(UTC) - timedelta(minutes=count // len(devices) + 1)
    events = []
    for n in range(count):
        transactions = rng.randint(0, 120)
        events.append(
            {
                "timestamp": start + timedelta(minutes=n // len(devices)),
                "device_id": devices[n % len(devices)],
                "cpu_percent": round(rng.uniform(3, 95), 1),
                "memory_percent": round(rng.uniform(20, 90), 1),
                "disk_percent": round(rng.uniform(10, 85), 1),
                "network_latency_ms": round(rng.lognormvariate(3.2, 0.5), 2),
                "transaction_count": transactions,
                "transaction_volume": round(transactions * rng.uniform(4, 60), 2),
                "error_rate": round(rng.uniform(0, 0.05), 4),
                "active_connections": rng.randint(1, 12),
                "queue_depth": rng.randint(0, 5),
                "extra_metrics": {
                    "temperature_c": round(rng.uniform(30, 65), 1),
                    "firmware": rng.choice(firmware),
                    "printer": rng.choice(("ok", "ok", "ok", "paper_low")),
                },
                "collection_interval_seconds": 60.0,
            }
        )
    return events


async def empty_table(engine: Any) -> None:
    async with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            await connection.execute(text("TRUNCATE device_metrics"))
        else:
            await connection.execute(delete(DeviceMetrics))


async def count_rows(engine: Any) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(DeviceMetrics)) or 0)


async def ingest_with_recorder(
    engine: Any, events: list[Fields], batch_size: int, yield_every: int, spool_dir: Path
) -> IngestResult:
    await empty_table(engine)
    settings = AnalyticsSettings(
        batch_size=batch_size,
        # Room for every event: this measures the writer, not the drop policy.
        queue_max_events=max(len(events), 10),
        spool_dir=spool_dir,
    )
    recorder = Recorder(engine, settings)
    await recorder.start()
    caller_ns = [0] * len(events)
    peak_queue = 0
    record = recorder.record
    clock = time.perf_counter_ns
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        for n, fields in enumerate(events):
            before = clock()
            record(DeviceMetrics, **fields)
            caller_ns[n] = clock() - before
            if n % yield_every == yield_every - 1:
                peak_queue = max(peak_queue, recorder.queued)
                await asyncio.sleep(0)
        await recorder.flush()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        await recorder.stop()
    return IngestResult(
        approach="recorder",
        batch_size=batch_size,
        events=len(events),
        seconds=seconds,
        rows_in_table=await count_rows(engine),
        caller_us=[ns / 1000 for ns in caller_ns],
        cpu_seconds=cpu_seconds,
        peak_queue=peak_queue,
        lost=recorder.stats.dropped + recorder.stats.spilled,
    )


COPY_TARGET = 0.5  # issue 13: recorder throughput >= 0.5 x a raw COPY of the same rows


async def ingest_with_raw_copy(engine: Any, events: list[Fields]) -> IngestResult:
    """The same rows, completed as the recorder completes them, in one COPY: the ceiling."""
    await empty_table(engine)
    shape = _SHAPES[DeviceMetrics.__tablename__]
    rows = [shape.complete(fields) for fields in events]
    json_columns = shape.json_columns
    records = [
        tuple(
            json.dumps(row[c]) if c in json_columns and row[c] is not None else row[c]
            for c in shape.columns
        )
        for row in rows
    ]
    async with engine.connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        started, cpu_started = time.perf_counter(), time.process_time()
        await raw.copy_records_to_table(
            DeviceMetrics.__tablename__, records=records, columns=shape.columns
        )
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return IngestResult(
        approach="raw COPY",
        batch_size=len(records),
        events=len(events),
        seconds=seconds,
        rows_in_table=await count_rows(engine),
        caller_us=[],
        cpu_seconds=cpu_seconds,
    )


async def ingest_naively(engine: Any, events: list[Fields]) -> IngestResult:
    """The old way: the producer awaits one INSERT and one COMMIT per event."""
    await empty_table(engine)
    session_factory = create_session_factory(engine)
    caller_ns = [0] * len(events)
    clock = time.perf_counter_ns
    started, cpu_started = time.perf_counter(), time.process_time()
    for n, fields in enumerate(events):
        before = clock()
        async with session_factory() as session:
            session.add(DeviceMetrics(**fields))
            await session.commit()
        caller_ns[n] = clock() - before
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return IngestResult(
        approach="baseline",
        batch_size=None,
        events=len(events),
        seconds=seconds,
        rows_in_table=await count_rows(engine),
        caller_us=[ns / 1000 for ns in caller_ns],
        cpu_seconds=cpu_seconds,
    )


async def run_benchmark(args: argparse.Namespace, database_url: str, spool_dir: Path) -> None:
    events = device_metrics_events(max(args.events, args.baseline_events))
    engine = create_engine(database_url)
    results: list[IngestResult] = []
    try:
        # One unmeasured round trip each way, so that connecting is not part of the figures.
        await ingest_with_recorder(engine, events[:1000], 500, args.yield_every, spool_dir)
        await ingest_naively(engine, events[:100])
        baseline = await ingest_naively(engine, events[: args.baseline_events])
        console.print(
            f"  baseline      {baseline.rows_in_table} rows in {baseline.seconds:.2f}s "
            f"({baseline.rows_per_second:,.0f} rows/s)"
        )
        raw_copy: IngestResult | None = None
        for batch_size in args.batch_sizes:
            if engine.dialect.name == "postgresql":
                # Alternating with the recorder runs, so that drift hits both alike.
                copy_run = await ingest_with_raw_copy(engine, events[: args.events])
                console.print(
                    f"  raw COPY      {copy_run.rows_in_table} rows in {copy_run.seconds:.2f}s "
                    f"({copy_run.rows_per_second:,.0f} rows/s)"
                )
                if raw_copy is None or copy_run.rows_per_second > raw_copy.rows_per_second:
                    raw_copy = copy_run
            result = await ingest_with_recorder(
                engine, events[: args.events], batch_size, args.yield_every, spool_dir
            )
            console.print(
                f"  batch {batch_size:>5}   {result.rows_in_table} rows in {result.seconds:.2f}s "
                f"({result.rows_per_second:,.0f} rows/s)"
            )
            results.append(result)
        if raw_copy is not None:
            results.append(raw_copy)
        results.append(baseline)
    finally:
        await engine.dispose()
    report(results, baseline, raw_copy)


def report(
    results: list[IngestResult], baseline: IngestResult, raw_copy: IngestResult | None
) -> None:
    throughput = Table(title="device_metrics ingest: from the first event to the last row stored")
    for column in (
        "approach",
        "batch",
        "rows stored",
        "seconds",
        "rows/s",
        "x baseline",
        "x raw COPY",
        "cpu us/row",
        "peak queue",
        "lost",
    ):
        throughput.add_column(column, justify="left" if column == "approach" else "right")
    caller = Table(title="What the producer waits per event, in microseconds")
    for column in ("approach", "batch", "mean", "p50", "p99", "p99.9", "max"):
        caller.add_column(column, justify="left" if column == "approach" else "right")
    for r in results:
        batch = "-" if r.batch_size is None else str(r.batch_size)
        throughput.add_row(
            r.approach,
            batch,
            f"{r.rows_in_table:,}",
            f"{r.seconds:.2f}",
            f"{r.rows_per_second:,.0f}",
            f"{r.rows_per_second / baseline.rows_per_second:.1f}",
            "-" if raw_copy is None else f"{r.rows_per_second / raw_copy.rows_per_second:.2f}",
            f"{r.cpu_seconds / r.events * 1e6:.0f}",
            "-" if r.peak_queue is None else f"{r.peak_queue:,}",
            "-" if r.lost is None else str(r.lost),
        )
        if not r.caller_us:
            continue
        caller.add_row(
            r.approach,
            batch,
            f"{sum(r.caller_us) / len(r.caller_us):.1f}",
            f"{percentile(r.caller_us, 0.50):.1f}",
            f"{percentile(r.caller_us, 0.99):.1f}",
            f"{percentile(r.caller_us, 0.999):.1f}",
            f"{max(r.caller_us):,.0f}",
        )
    console.print(throughput)
    console.print(
        "  baseline: one INSERT + COMMIT per event through an AsyncSession, awaited by the "
        "producer\n  cpu us/row: CPU time of this process (producer + writer) per row; an app "
        "gives it up on its own core\n  lost: events dropped at the queue bound or spilled to "
        "the disk spool"
    )
    console.print(caller)
    if raw_copy is not None:
        console.print(
            f"  raw COPY: the same completed rows in one asyncpg copy_records_to_table "
            f"(the best of {sum(1 for r in results if r.approach == 'recorder')} runs, "
            "alternating with the recorder's)"
        )
        for r in results:
            if r.approach == "recorder":
                ratio = r.rows_per_second / raw_copy.rows_per_second
                verdict = "met" if ratio >= COPY_TARGET else "missed"
                console.print(
                    f"  batch {r.batch_size}: recorder / raw COPY = {ratio:.2f} "
                    f"(target >= {COPY_TARGET}: {verdict})"
                )
    incomplete = [r for r in results if r.rows_in_table != r.events]
    if incomplete:
        console.print(
            "[red]rows missing:[/] "
            + "; ".join(
                f"{r.approach} {r.batch_size}: {r.rows_in_table}/{r.events}" for r in incomplete
            )
        )
    else:
        console.print("every run stored exactly the events it recorded")


def event_loop_runner() -> tuple[str, Any]:
    try:
        import uvloop
    except ImportError:
        return "asyncio", asyncio.run
    return "uvloop", uvloop.run


def main() -> None:
    args = parse_args()
    raise_keyboard_interrupt_on_sigterm()
    loop_name, run = event_loop_runner()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="homepot-bench-") as workdir,
            benchmark_database(args.database, args.postgres_server, "ingest") as url,
        ):
            console.print(
                f"[bold]Recorder ingest benchmark[/]  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
                f"  database      {describe_database(url)}\n"
                f"  events        {args.events:,} device_metrics per recorder run "
                f"(batch sizes {', '.join(map(str, args.batch_sizes))}); "
                f"{args.baseline_events:,} for the baseline\n"
                f"  producer      yields to the loop every {args.yield_every} record() calls\n"
                f"  python        {platform.python_version()}, loop {loop_name}"
            )
            coroutine: Coroutine[Any, Any, None] = run_benchmark(args, url, Path(workdir))
            run(coroutine)
    except KeyboardInterrupt:
        console.print("interrupted; the benchmark database was removed")
        sys.exit(130)


if __name__ == "__main__":
    main()
