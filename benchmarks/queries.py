"""Analytics reads at size: 10 M device_metrics and 10 M api_request_logs rows on PostgreSQL.

What it does:

1. Creates a throw-away PostgreSQL database (migrated: time partitions and rollup tables),
   creates the partitions of the period, then loads with COPY ``--rows`` device_metrics rows
   and as many api_request_logs rows over ``--days`` days for ``--terminals`` terminals (500
   sites): the server generates them (``generate_series``; Python formatting them was the
   bottleneck, ~70 µs a row on a busy machine) and they stream through this client, COPY TO
   STDOUT on one connection into COPY FROM STDIN on another, so the load pays for COPY's
   parsing and every index like a real bulk load. The other streams get ``--rows`` / 100 rows
   each (generated in Python), site schedules 7 per site, so every endpoint reads real pages.
2. Builds the rollups with the backfill path (``homepot.analytics.rollups``), timed, and
   runs ANALYZE.
3. Serves the real application in-process (httpx over ASGI, lifespan on: auth, audit rows of
   each read, the recorder) and measures, one request at a time, ``--reps`` requests per case
   after one warm-up request:
   - the eight analytics endpoints, a page of 100 rows, over the last 1 hour, 1 day and 7
     days, without and with each endpoint's common filter;
   - the overview (24 h and 7 days), and one device's 7-day chart;
   - as the baseline for the charts, the same 7-day chart computed from raw rows.
4. Retention of one day: the oldest day dropped as a partition, timed, against the next day
   deleted row by row in 5,000-row batches (what retention did before partitions).
5. Prints EXPLAIN of a 1-day page of requests: the partitions it reads out of all of them.

Targets (issue 13): p95 < 100 ms for a page of any endpoint over 1 day, p95 < 300 ms for the
7-day charts. Printed next to the measured values with met / MISSED.

    .venv/bin/python benchmarks/queries.py                 # 10 M + 10 M rows, ~15 minutes
    .venv/bin/python benchmarks/queries.py --rows 500000   # a quick run while developing
    .venv/bin/python benchmarks/queries.py --keep homepot_queries_10m   # load once, measure again

``--keep NAME`` keeps the loaded database under that name instead of dropping it, and a later
run with the same name skips steps 1 and 2 and measures the rows already there (the load's
moment, sizes and seed are read back from the database, so the time ranges are the same).
Each run's step 4 drops the oldest remaining day and empties the next one; drop the database
by hand when done (``DROP DATABASE homepot_queries_10m``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from _common import (
    DEFAULT_POSTGRES_SERVER,
    benchmark_database,
    console,
    describe_database,
    percentile,
    raise_keyboard_interrupt_on_sigterm,
)
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.engine import make_url

from homepot.analytics.rollups import backfill_rollups
from homepot.auth.models import Role
from homepot.auth.service import EmailTaken, create_user
from homepot.config import (
    AnalyticsSettings,
    AuthSettings,
    DatabaseSettings,
    FleetSettings,
    InsightsSettings,
    RetentionSettings,
    Settings,
)
from homepot.db import DatabaseUnreachable, create_engine, run_migrations
from homepot.device.history import _raw_metrics, bucketed_metrics, chart_buckets
from homepot.kit.offload import inline_computation
from homepot.main import create_app
from homepot.retention.partitions import (
    PARTITIONED_BY_NAME,
    create_partitions_between,
    drop_partition,
    partitions_of,
)
from homepot.retention.policy import resolve_policy
from homepot.retention.service import _delete_older

# Bulk work (loading, the rollup backfill, ANALYZE, the baseline delete) may take minutes.
BULK = DatabaseSettings(command_timeout_seconds=3600)
PAGE_TARGET_MS = 100.0
CHART_TARGET_MS = 300.0
SITES = 500
ROUTES = (
    ("/api/v1/devices/{device_id}", "GET"),
    ("/api/v1/devices", "GET"),
    ("/api/v1/agent/telemetry", "POST"),
    ("/api/v1/agent/heartbeat", "POST"),
    ("/api/v1/jobs", "GET"),
    ("/api/v1/jobs", "POST"),
    ("/api/v1/sites/{site_id}", "GET"),
    ("/api/v1/overview", "GET"),
    ("/api/v1/analytics/requests", "GET"),
    ("/api/v1/auth/token", "POST"),
)
USERS = [f"user-{i:03d}" for i in range(40)]


def _csv(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return '"' + value.replace('"', '""') + '"'
    return str(value)


def _chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[bytes]:
    buffer: list[str] = []
    for row in rows:
        buffer.append(",".join(_csv(v) for v in row))
        if len(buffer) >= size:
            yield ("\n".join(buffer) + "\n").encode()
            buffer = []
    if buffer:
        yield ("\n".join(buffer) + "\n").encode()


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _array(values: list[str]) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def device_metrics_query(count: int, terminals: int, start: datetime, days: int) -> str:
    """The device_metrics rows, generated by the server: ``terminals`` terminals sampling
    evenly over ``days`` days (in time order, like live ingest)."""
    per_terminal = max(1, count // terminals)
    step = days * 86400 / per_terminal
    return (
        f"SELECT lpad(to_hex(k), 32, '0'), TIMESTAMPTZ '{start.isoformat()}' + "
        f"make_interval(secs => (k / {terminals}) * {step} + ((k % {terminals}) * 7.3) % {step}), "
        f"'pos-' || lpad((k % {terminals})::text, 5, '0'), "
        f"round((20 + 30 * sin(k % {terminals} + (k / {terminals}) / 40.0) ^ 2 "
        "+ random() * 10)::numeric, 2), round((40 + random() * 30)::numeric, 2), "
        f"50 + k % {terminals} % 40, round((5 + random() * 40)::numeric, 2), "
        "floor(random() * 12)::int, round((random() * 0.02)::numeric, 4), 'device' "
        f"FROM generate_series(0::bigint, {count - 1}) k"
    )


def requests_query(count: int, terminals: int, start: datetime, days: int) -> str:
    """The api_request_logs rows, generated by the server: ten routes (70 % round robin),
    0.4 % 5xx, 2.6 % 4xx, log-normal latency (median ~5 ms), evenly over ``days`` days."""
    step = days * 86400 / count
    routes = _array([route for route, _ in ROUTES])
    methods = _array([method for _, method in ROUTES])
    route = f"({routes})[ri + 1]"
    return (
        f"SELECT lpad(to_hex(k), 32, '0'), TIMESTAMPTZ '{start.isoformat()}' + "
        f"make_interval(secs => k * {step}), "
        f"replace(replace({route}, '{{device_id}}', 'pos-' || lpad(t::text, 5, '0')), "
        f"'{{site_id}}', 'site-' || lpad((t % {SITES})::text, 3, '0')), {route}, "
        f"({methods})[ri + 1], CASE WHEN roll < 0.004 THEN 500 WHEN roll < 0.02 THEN 404 "
        "WHEN roll < 0.03 THEN 401 ELSE 200 END, "
        "round(exp(1.6 + 0.8 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))"
        f"::numeric, 3), CASE WHEN {route} LIKE '%agent%' THEN NULL "
        "ELSE 'user-' || lpad((k % 40)::text, 3, '0') END, '10.0.0.1', 0, 512, 'device' "
        "FROM (SELECT k, random() AS roll, "
        f"floor(random() * {terminals})::int AS t, "
        f"CASE WHEN random() < 0.7 THEN (k % {len(ROUTES)})::int "
        f"ELSE floor(random() * {len(ROUTES)})::int END AS ri "
        f"FROM generate_series(0::bigint, {count - 1}) k) AS r"
    )


async def stream_copy(dsn: str, table: str, columns: list[str], query: str) -> float:
    """COPY the rows of ``query`` (run by the server) into ``table`` through this client:
    one connection streams them out (COPY TO STDOUT), another in (COPY FROM STDIN)."""
    started = time.perf_counter()
    source = await asyncpg.connect(dsn)
    target = await asyncpg.connect(dsn)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)

    async def produce() -> None:
        try:
            await source.copy_from_query(query, output=queue.put, format="csv")
        finally:
            await queue.put(None)

    async def chunks() -> AsyncIterator[bytes]:
        while (chunk := await queue.get()) is not None:
            yield chunk

    producer = asyncio.create_task(produce())
    try:
        await target.copy_to_table(table, source=chunks(), columns=columns, format="csv")
        await producer
    finally:
        producer.cancel()
        await source.close()
        await target.close()
    return time.perf_counter() - started


def small_stream_rows(
    table: str, count: int, terminals: int, start: datetime, days: int, rng: random.Random
) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
    step = days * 86400 / max(count, 1)

    def at(k: int) -> str:
        return _iso(start + timedelta(seconds=k * step))

    def device(k: int) -> str:
        return f"pos-{(k * 7919) % terminals:05d}"

    if table == "device_state_history":
        states = ("online", "offline", "error", "maintenance")
        return (
            [
                "event_id",
                "timestamp",
                "device_id",
                "previous_state",
                "new_state",
                "changed_by",
                "source",
            ],
            (
                (
                    uuid.uuid4().hex,
                    at(k),
                    device(k),
                    states[k % 4],
                    states[(k + 1) % 4],
                    "system",
                    "device",
                )
                for k in range(count)
            ),
        )
    if table == "job_outcomes":
        statuses = ("success", "success", "success", "failed", "timeout")
        return (
            [
                "event_id",
                "timestamp",
                "job_id",
                "job_type",
                "device_id",
                "status",
                "duration_ms",
                "retry_count",
                "source",
            ],
            (
                (
                    uuid.uuid4().hex,
                    at(k),
                    f"job-{k // 20:06d}",
                    "config_update",
                    device(k),
                    statuses[k % 5],
                    rng.randrange(100, 9000),
                    0,
                    "device",
                )
                for k in range(count)
            ),
        )
    if table == "error_logs":
        severities = ("info", "warning", "error", "critical")
        return (
            [
                "event_id",
                "timestamp",
                "category",
                "severity",
                "error_code",
                "error_message",
                "device_id",
                "resolved",
                "source",
            ],
            (
                (
                    uuid.uuid4().hex,
                    at(k),
                    "device",
                    severities[k % 4],
                    f"E{k % 30:03d}",
                    "printer jam",
                    device(k),
                    "false",
                    "device",
                )
                for k in range(count)
            ),
        )
    if table == "user_activities":
        kinds = ("page_view", "click", "search", "form_submit")
        return (
            [
                "event_id",
                "timestamp",
                "user_id",
                "session_id",
                "activity_type",
                "page_url",
                "source",
            ],
            (
                (
                    uuid.uuid4().hex,
                    at(k),
                    USERS[k % len(USERS)],
                    f"s{k // 30}",
                    kinds[k % 4],
                    "/devices",
                    "device",
                )
                for k in range(count)
            ),
        )
    if table == "configuration_history":
        return (
            [
                "event_id",
                "timestamp",
                "entity_type",
                "entity_id",
                "parameter_name",
                "changed_by",
                "change_type",
                "was_rolled_back",
                "source",
            ],
            (
                (
                    uuid.uuid4().hex,
                    at(k),
                    "device" if k % 3 else "site",
                    device(k),
                    "receipt_footer",
                    "system",
                    "manual",
                    "false",
                    "device",
                )
                for k in range(count)
            ),
        )
    raise ValueError(table)


async def copy(
    connection: asyncpg.Connection, table: str, columns: list[str], rows: Iterator[tuple[Any, ...]]
) -> float:
    started = time.perf_counter()
    for chunk in _chunks(rows, 100_000):
        await connection.copy_to_table(
            table, source=io.BytesIO(chunk), columns=columns, format="csv"
        )
    return time.perf_counter() - started


async def load(url: str, args: argparse.Namespace, now: datetime) -> dict[str, float]:
    rng = random.Random(args.seed)
    start = now - timedelta(days=args.days)
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    engine = create_engine(url, settings=BULK)
    try:
        for table in PARTITIONED_BY_NAME.values():
            await create_partitions_between(engine, table, start, now)
    finally:
        await engine.dispose()
    connection = await asyncpg.connect(dsn)
    timings: dict[str, float] = {}
    try:
        await connection.execute(
            "INSERT INTO sites (site_id, name, timezone, config, created_at, updated_at) "
            "SELECT 'site-' || lpad(i::text, 3, '0'), 'Store ' || i, 'UTC', '{}', now(), now() "
            f"FROM generate_series(0, {SITES - 1}) i"
        )
        await connection.execute(
            "INSERT INTO devices (device_id, site_id, name, device_type, status, config, "
            "created_at, updated_at, simulated) SELECT 'pos-' || lpad(i::text, 5, '0'), "
            f"'site-' || lpad((i % {SITES})::text, 3, '0'), 'Till ' || i, 'pos_terminal', "
            f"'online', '{{}}', now(), now(), false FROM generate_series(0, {args.terminals - 1}) i"
        )
        await connection.execute(
            "INSERT INTO site_operating_schedules (site_id, day_of_week, open_time, close_time, "
            "is_closed, is_maintenance_window, source, created_at, updated_at) "
            "SELECT s.site_id, d, '08:00', '20:00', false, false, 'device', now(), "
            "now() - (random() * interval '30 days') FROM sites s, generate_series(0, 6) d"
        )
        console.print(f"COPY {args.rows:,} device_metrics rows ...")
        timings["device_metrics"] = await stream_copy(
            dsn,
            "device_metrics",
            [
                "event_id",
                "timestamp",
                "device_id",
                "cpu_percent",
                "memory_percent",
                "disk_percent",
                "network_latency_ms",
                "transaction_count",
                "error_rate",
                "source",
            ],
            device_metrics_query(args.rows, args.terminals, start, args.days),
        )
        seconds = timings["device_metrics"]
        console.print(f"  {seconds:.0f} s ({args.rows / seconds:,.0f} rows/s)")
        console.print(f"COPY {args.rows:,} api_request_logs rows ...")
        timings["api_request_logs"] = await stream_copy(
            dsn,
            "api_request_logs",
            [
                "event_id",
                "timestamp",
                "endpoint",
                "route",
                "method",
                "status_code",
                "response_time_ms",
                "user_id",
                "ip_address",
                "request_size_bytes",
                "response_size_bytes",
                "source",
            ],
            requests_query(args.rows, args.terminals, start, args.days),
        )
        seconds = timings["api_request_logs"]
        console.print(f"  {seconds:.0f} s ({args.rows / seconds:,.0f} rows/s)")
        small = max(1000, args.rows // 100)
        for table in (
            "device_state_history",
            "job_outcomes",
            "error_logs",
            "user_activities",
            "configuration_history",
        ):
            columns, rows = small_stream_rows(table, small, args.terminals, start, args.days, rng)
            timings[table] = await copy(connection, table, columns, rows)
        console.print(f"COPY {small:,} rows into each of the five other event tables")
    finally:
        await connection.close()
    return timings


def stats(samples: list[float]) -> tuple[float, float]:
    p50, p95 = percentile(samples, 0.5), percentile(samples, 0.95)
    console.print(f"  measured: p50 {p50:.1f} ms, p95 {p95:.1f} ms ({len(samples)} requests)")
    return p50, p95


async def timed(reps: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    await call()  # warm-up
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


ENDPOINTS: dict[str, tuple[str, dict[str, str]]] = {
    "requests": ("/api/v1/analytics/requests", {"route": "/api/v1/devices/{device_id}"}),
    "device-states": ("/api/v1/analytics/device-states", {"device_id": "pos-00042"}),
    "jobs": ("/api/v1/analytics/jobs", {"status": "failed"}),
    "errors": ("/api/v1/analytics/errors", {"severity": "critical"}),
    "user-activities": ("/api/v1/analytics/user-activities", {"user_id": "user-007"}),
    "device-metrics": ("/api/v1/analytics/device-metrics", {"device_id": "pos-00042"}),
    "config-history": ("/api/v1/analytics/config-history", {"entity_type": "device"}),
    "site-schedules": ("/api/v1/analytics/site-schedules", {"site_id": "site-042"}),
}
RANGES = {"1 hour": timedelta(hours=1), "1 day": timedelta(days=1), "7 days": timedelta(days=7)}


BACKGROUND_MODES = ("off", "on", "inline")


async def measure(
    url: str, args: argparse.Namespace, now: datetime, background: str = "off"
) -> list[tuple[str, str, str, float, float, float | None]]:
    """The reads. ``background``: "off" (the insights scanner and the configuration impact
    evaluator do not run: their first passes on a freshly generated history used to be
    measured instead of the reads), "on" (both run, the scanner every ``--pass-interval``
    seconds, as a server does) or "inline" (as "on", their computation on the event loop:
    the code before homepot.kit.offload, the baseline of "on")."""
    passes = background != "off"
    settings = Settings(
        database_url=url,
        auth=AuthSettings(secret_key="benchmark-secret-key-long-enough-for-hs256"),
        analytics=AnalyticsSettings(spool_dir=args.spool_dir),
        retention=RetentionSettings(enabled=False),
        # The rollup maintenance stays on in every mode.
        insights=InsightsSettings(enabled=passes, interval_seconds=args.pass_interval),
        fleet=FleetSettings(impact_evaluator_interval_seconds=30 if passes else 10**9),
    )
    app = create_app(settings)
    results: list[tuple[str, str, str, float, float, float | None]] = []
    # The background tasks start inside the lifespan and inherit this context.
    with inline_computation() if background == "inline" else nullcontext():
        async with LifespanManager(app, startup_timeout=120, shutdown_timeout=300):
            lags: list[float] = []
            probe = asyncio.create_task(loop_lag_probe(lags))
            async with app.state.session_factory() as session, session.begin():
                with suppress(EmailTaken):  # a kept database was measured before
                    await create_user(
                        session,
                        email="bench@homepot.example",
                        password="bench-password-1",
                        role=Role.admin,
                    )
            transport = ASGITransport(app=app)
            async with AsyncClient(transport=transport, base_url="http://bench") as client:
                token = (
                    await client.post(
                        "/api/v1/auth/token",
                        data={"username": "bench@homepot.example", "password": "bench-password-1"},
                    )
                ).json()["access_token"]
                headers = {"Authorization": f"Bearer {token}"}

                async def get(path: str, params: dict[str, str]) -> None:
                    response = await client.get(path, params=params, headers=headers)
                    if response.status_code != 200:
                        raise RuntimeError(
                            f"{path} {params}: {response.status_code} {response.text[:300]}"
                        )

                for name, (path, filters) in ENDPOINTS.items():
                    for label, span in RANGES.items():
                        window = {
                            "start_date": (now - span).isoformat(),
                            "end_date": now.isoformat(),
                            "limit": "100",
                        }
                        for filtered in (False, True):
                            params = {**window, **(filters if filtered else {})}
                            samples = await timed(args.reps, lambda p=path, q=params: get(p, q))
                            target = PAGE_TARGET_MS if label == "1 day" else None
                            results.append(
                                (
                                    name,
                                    label,
                                    "filtered" if filtered else "-",
                                    *stats(samples),
                                    target,
                                )
                            )
                for hours in (24, 168):
                    samples = await timed(
                        args.reps, lambda h=hours: get("/api/v1/overview", {"hours": str(h)})
                    )
                    results.append(
                        (
                            "overview (cache warm)",
                            f"{hours} h",
                            "-",
                            *stats(samples),
                            CHART_TARGET_MS if hours == 168 else None,
                        )
                    )
                cold: list[float] = []
                for _ in range(max(3, args.reps // 4)):
                    if hasattr(app.state, "fleet_metrics_cache"):
                        del app.state.fleet_metrics_cache
                    started = time.perf_counter()
                    await get("/api/v1/overview", {"hours": "168"})
                    cold.append((time.perf_counter() - started) * 1000)
                results.append(
                    ("overview (cold cache)", "168 h", "-", *stats(cold), CHART_TARGET_MS)
                )
                chart = {"since": (now - timedelta(days=7)).isoformat(), "until": now.isoformat()}
                devices = [
                    f"pos-{i:05d}"
                    for i in range(0, args.terminals, max(1, args.terminals // args.reps))
                ]
                samples = []
                for device in devices[: args.reps]:
                    started = time.perf_counter()
                    await get(f"/api/v1/devices/{device}/metrics", chart)
                    samples.append((time.perf_counter() - started) * 1000)
                results.append(
                    ("device chart (rollups)", "7 days", "-", *stats(samples), CHART_TARGET_MS)
                )
                # The chart's query alone, from the rollups and (baseline) from raw rows.
                buckets = chart_buckets(now - timedelta(days=7), now, 120)
                for label, read in (
                    ("rollups", bucketed_metrics),
                    ("baseline: raw rows", _raw_metrics),
                ):
                    for scope, targets in (("device", devices[: args.reps]), ("fleet", [None] * 3)):
                        samples = []
                        for device_id in targets:
                            async with app.state.session_factory() as session:
                                started = time.perf_counter()
                                try:
                                    await read(session, buckets, device_id)
                                except DatabaseUnreachable:
                                    # Over the server's statement timeout (10 s): counted as
                                    # such, not as an answer (the full run's raw fleet scan).
                                    console.print(f"{scope} chart ({label}): statement timeout")
                                samples.append((time.perf_counter() - started) * 1000)
                        results.append(
                            (f"{scope} chart query ({label})", "7 days", "-", *stats(samples), None)
                        )
            probe.cancel()
            console.print(
                f"event loop during the reads: longest block {max(lags):.0f} ms, p99 "
                f"{percentile(lags, 0.99):.0f} ms, {sum(lag > 100 for lag in lags)} of "
                f"{len(lags)} wake-ups more than 100 ms late (a 10 ms sleep, over and over); "
                f"passes run: {app.state.leadership.passes}"
            )
    return results


async def loop_lag_probe(lags: list[float]) -> None:
    """Sleeps 10 ms over and over and records how late it woke (ms): how long the event loop
    was held by something else (a background pass's computation, a request)."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(0.010)
        lags.append((time.perf_counter() - started - 0.010) * 1000)


async def retention_and_explain(url: str, now: datetime) -> None:
    engine = create_engine(url, settings=BULK)
    settings = Settings(database_url=url)
    policy = {p.name: p for p in resolve_policy(settings)}["device_metrics"]
    try:
        async with engine.connect() as connection:
            since, until = (now - timedelta(days=1)).isoformat(), now.isoformat()
            plan = (
                await connection.scalars(
                    text(
                        "EXPLAIN SELECT * FROM api_request_logs WHERE timestamp >= "
                        f"'{since}' AND timestamp <= '{until}' "
                        "ORDER BY timestamp DESC, id DESC LIMIT 101"
                    )
                )
            ).all()
            total = len(await partitions_of(connection, "api_request_logs")) + 1
            partitions = await partitions_of(connection, "device_metrics")
        read = sorted(
            {m.group(1) for line in plan if (m := re.search(r" on (api_request_logs_\w+)", line))}
        )
        console.print(
            "\nEXPLAIN of a 1-day page of requests (partition pruning): "
            f"reads {len(read)} of {total} partitions: {', '.join(read)}"
        )
        for line in plan:
            console.print("  " + line, soft_wrap=True)
        first, second = partitions[0], partitions[1]
        started = time.perf_counter()
        dropped_rows = await drop_partition(engine, first)
        dropped = time.perf_counter() - started
        started = time.perf_counter()
        deleted_rows, batches = await _delete_older(engine, policy, second.end, 5000)
        deleted = time.perf_counter() - started
        console.print(
            f"\nRetention of one day of device_metrics: dropping partition {first.name} "
            f"({dropped_rows:,} rows) took {dropped * 1000:.0f} ms; baseline, deleting the next "
            f"day ({deleted_rows:,} rows) in {batches} batches of 5,000 took "
            f"{deleted * 1000:,.0f} ms "
            f"({deleted / max(dropped, 1e-9):,.0f}x)"
        )
    finally:
        await engine.dispose()


async def rollup_and_analyze(url: str, now: datetime, days: int) -> float:
    engine = create_engine(url, settings=BULK)
    try:
        started = time.perf_counter()
        await backfill_rollups(engine, now - timedelta(days=days + 1), now)
        elapsed = time.perf_counter() - started
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text("ANALYZE"))
        return elapsed
    finally:
        await engine.dispose()


def report(results: list[tuple[str, str, str, float, float, float | None]]) -> None:
    table = Table(title="Analytics reads (ms, one request at a time)")
    for heading in ("case", "range", "filter", "p50", "p95", "target p95", "result"):
        table.add_column(
            heading, justify="right" if heading in ("p50", "p95", "target p95") else "left"
        )
    missed = 0
    for name, label, filtered, p50, p95, target in results:
        verdict = "" if target is None else ("met" if p95 < target else "MISSED")
        missed += verdict == "MISSED"
        table.add_row(
            name,
            label,
            filtered,
            f"{p50:.1f}",
            f"{p95:.1f}",
            "-" if target is None else f"< {target:.0f}",
            verdict,
        )
    console.print(table)
    console.print(f"targets missed: {missed}")


META_TABLE = "bench_queries_meta"


@contextmanager
def kept_database(server_url: str, name: str) -> Iterator[tuple[str, datetime | None]]:
    """The database ``name`` on ``server_url``, created and migrated if missing; never dropped.

    Yields its URL and the moment of its load when a previous run finished loading it (read
    from ``bench_queries_meta``), or None when it still has to be loaded.
    """
    database = make_url(server_url).set(drivername="postgresql+asyncpg", database=name)
    url = database.render_as_string(hide_password=False)
    admin = make_url(server_url).set(drivername="postgresql", database="postgres")
    dsn = admin.render_as_string(hide_password=False)

    async def loaded_at() -> datetime | None:
        kept = await asyncpg.connect(
            database.set(drivername="postgresql").render_as_string(hide_password=False)
        )
        try:
            if not await kept.fetchval("SELECT to_regclass($1) IS NOT NULL", META_TABLE):
                return None
            moment: datetime | None = await kept.fetchval(f"SELECT loaded_at FROM {META_TABLE}")
            return moment
        finally:
            await kept.close()

    async def prepare() -> datetime | None:
        connection = await asyncpg.connect(dsn)
        try:
            if await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                moment = await loaded_at()
                if moment is not None:
                    return moment
                # A load that did not finish: start again from an empty database.
                await connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await connection.execute(f'CREATE DATABASE "{name}"')
            return None
        finally:
            await connection.close()

    loaded = asyncio.run(prepare())
    if loaded is None:
        run_migrations(url)
    yield url, loaded


async def remember_load(url: str, now: datetime, args: argparse.Namespace) -> None:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            f"CREATE TABLE {META_TABLE} (loaded_at timestamptz NOT NULL, rows bigint NOT NULL, "
            "terminals integer NOT NULL, days integer NOT NULL, seed integer NOT NULL)"
        )
        await connection.execute(
            f"INSERT INTO {META_TABLE} VALUES ($1, $2, $3, $4, $5)",
            now,
            args.rows,
            args.terminals,
            args.days,
            args.seed,
        )
    finally:
        await connection.close()


async def kept_sizes(url: str, args: argparse.Namespace) -> None:
    """Read the sizes of a kept load back into ``args`` (the cases depend on them)."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(f"SELECT rows, terminals, days, seed FROM {META_TABLE}")
    finally:
        await connection.close()
    args.rows, args.terminals, args.days, args.seed = (
        row["rows"],
        row["terminals"],
        row["days"],
        row["seed"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=10_000_000,
        help="rows of device_metrics and of api_request_logs (default 10 M each)",
    )
    parser.add_argument("--terminals", type=int, default=5000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--reps", type=int, default=20, help="measured requests per case")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER)
    parser.add_argument(
        "--keep",
        metavar="NAME",
        help="keep the loaded database under this name; reuse it if a previous run loaded it",
    )
    parser.add_argument(
        "--background",
        default="off",
        help="the server's background passes during the reads, one run of the reads each: "
        "off, on, inline (on, their computation on the event loop as before), e.g. off,on,inline",
    )
    parser.add_argument(
        "--pass-interval",
        type=float,
        default=60,
        help="seconds between two insights scans with --background on/inline (the server's "
        "default: 60)",
    )
    args = parser.parse_args()
    raise_keyboard_interrupt_on_sigterm()
    import tempfile

    now = datetime.now(UTC).replace(microsecond=0)
    database = (
        kept_database(args.postgres_server, args.keep)
        if args.keep
        else _fresh(benchmark_database("postgresql", args.postgres_server, "queries"))
    )
    with tempfile.TemporaryDirectory(prefix="homepot-queries-") as spool, database as (url, loaded):
        args.spool_dir = spool
        if loaded is not None:
            now = loaded
            asyncio.run(kept_sizes(url, args))
            console.print(
                f"database {describe_database(url)} (kept, loaded at {now.isoformat()}); "
                f"{args.rows:,} rows per big table, {args.terminals:,} terminals, "
                f"{args.days} days"
            )
        else:
            console.print(
                f"database {describe_database(url)}; {args.rows:,} rows per big table, "
                f"{args.terminals:,} terminals, {args.days} days"
            )
            started = time.perf_counter()
            asyncio.run(load(url, args, now))
            console.print(f"load: {time.perf_counter() - started:.0f} s")
            elapsed = asyncio.run(rollup_and_analyze(url, now, args.days))
            console.print(f"rollup backfill of {args.days} days: {elapsed:.0f} s")
            if args.keep:
                asyncio.run(remember_load(url, now, args))
        for background in args.background.split(","):
            if background not in BACKGROUND_MODES:
                raise SystemExit(f"--background: {background!r} is not one of {BACKGROUND_MODES}")
            console.print(f"[bold]reads with the background passes {background}[/]")
            results = asyncio.run(measure(url, args, now, background))
            console.print(f"background passes: {background}")
            report(results)
        asyncio.run(retention_and_explain(url, now))


@contextmanager
def _fresh(database: AbstractContextManager[str]) -> Iterator[tuple[str, datetime | None]]:
    """A throw-away database in the shape of :func:`kept_database` (never loaded before)."""
    with database as url:
        yield url, None


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
