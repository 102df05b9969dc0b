"""How long the server's background passes hold the event loop, and what that does to a request:
the passes over a fleet of 5,000 devices, their computation on the loop (the old code, the
baseline) against on the compute thread (homepot.kit.offload), in the same run.

Set-up (a throw-away database, PostgreSQL by default): ``--devices`` terminals in sites of ten
with 12.5 h of 5-minute samples and 20 minutes at 30 s (as benchmarks/insights_scan.py
writes them), a few active anomaly episodes, ``--changes`` configuration changes awaiting a
verdict, and the rollups of it all. The real application runs in this process (httpx over
ASGI, lifespan on, its own background services idle: their intervals are set far away) so
that each pass can be run on demand, exactly the function the service calls:

- ``no pass (5 s idle)``: the reference, the same requests with no pass running;
- ``insights scan (first pass)``: a fresh server's first pass (the 6 h window; every chunk's
  bins loaded, one chunk's 14-day baselines computed);
- ``insights scan (next pass)``: a minute of new samples, then the next pass, as every minute;
- ``risk scoring (model)``: every device scored with a trained model (features per device);
- ``risk scoring (anomalies)``, ``impact evaluator``, ``rollups``, ``device watchdog``;
- ``config impact report (request)``: not a pass but a request whose computation is as long
  (``GET /api/v1/insights/config-impact`` over the changes above).

While a pass runs, two things are measured: a lag probe (a task that sleeps 10 ms, over and
over, and records how late it wakes: the longest lateness is the longest the loop was held)
and a client that requests a device's 7-day chart and a 1-day page of device metrics one
after the other (p50 / p95 / max). Each pass runs ``--rounds`` times in each mode, the modes
alternating (inline, off the loop, inline, ...), so that both see the same machine.

``--blame`` also samples, from a watchdog thread, the event loop's stack whenever the loop
has been held for more than 20 ms, and prints the functions it was found in per pass: what
to move off the loop next.

Run: ``.venv/bin/python benchmarks/loop_lag.py`` (about 8 minutes; ``--help`` for every knob).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
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
from insights_scan import ENGINE_SETTINGS, create_fleet, device_ids, samples, write
from rich.table import Table
from sqlalchemy import insert, update

from homepot.analytics.models import ConfigurationHistory
from homepot.analytics.rollups import roll_up_new_rows
from homepot.auth.models import Role
from homepot.auth.service import create_user
from homepot.config import (
    AnalyticsSettings,
    AuthSettings,
    FleetSettings,
    InsightsSettings,
    RetentionSettings,
    RollupSettings,
    Settings,
)
from homepot.db import create_engine
from homepot.device.impact import evaluate_due_changes
from homepot.device.states import mark_silent_devices_offline
from homepot.insights.features import FEATURES
from homepot.insights.risk import RiskModel, make_estimator
from homepot.insights.scoring import score_devices, score_from_anomalies
from homepot.insights.service import ScanState, scan
from homepot.kit.offload import inline_computation
from homepot.main import create_app

PROBE_SECONDS = 0.010
STALL_SECONDS = 0.020
MODES = ("inline (old)", "off the loop")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=200, help="configuration changes due")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each pass in each mode")
    parser.add_argument("--passes", default="all", help="comma-separated pass names, or all")
    parser.add_argument("--blame", action="store_true", help="sample the loop's stack")
    parser.add_argument("--spool-dir", type=Path, default=Path("/tmp/homepot-loop-lag-spool"))
    return parser.parse_args()


# -- what is measured ---------------------------------------------------------------------------


class StallSampler:
    """A watchdog thread: while the loop has not beaten for ``STALL_SECONDS``, samples the
    loop thread's stack every 2 ms and counts the homepot functions found in it."""

    def __init__(self) -> None:
        self.beat = time.perf_counter()
        self.loop_thread = threading.get_ident()
        self.counts: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    async def heartbeat(self) -> None:
        while True:
            self.beat = time.perf_counter()
            await asyncio.sleep(0.002)

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            if time.perf_counter() - self.beat < STALL_SECONDS:
                continue
            frames = sys._current_frames()
            compute = [t.ident for t in threading.enumerate() if t.name.startswith("homepot-c")]
            for label, ident in (("loop", self.loop_thread), *(("compute", i) for i in compute)):
                frame = frames.get(ident or 0)
                seen: list[str] = []
                innermost = frame
                while frame is not None:
                    name = frame.f_code.co_filename
                    if "/homepot/" in name and "/kit/offload" not in name:
                        short = name.rsplit("/homepot/", 1)[1]
                        seen.append(f"{short}:{frame.f_code.co_name}:{frame.f_lineno}")
                    frame = frame.f_back
                if not seen and innermost is not None and label == "loop":
                    code = innermost.f_code
                    seen.append(f"(outside homepot) {code.co_filename}:{code.co_name}")
                if seen:
                    self.counts[f"[{label}] " + " < ".join(seen[:3])] += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Measured:
    pass_seconds: float
    lags: list[float]
    chart: list[float]
    page: list[float]
    blame: collections.Counter[str] = field(default_factory=collections.Counter)


async def lag_probe(lags: list[float]) -> None:
    while True:
        started = time.perf_counter()
        await asyncio.sleep(PROBE_SECONDS)
        lags.append((time.perf_counter() - started - PROBE_SECONDS) * 1000)


async def measure_pass(
    run_pass: Callable[[], Awaitable[Any]],
    request: Callable[[str], Awaitable[float]],
    sampler: StallSampler | None,
) -> Measured:
    lags: list[float] = []
    chart: list[float] = []
    page: list[float] = []
    done = asyncio.Event()

    async def client() -> None:
        while not done.is_set():
            chart.append(await request("chart"))
            page.append(await request("page"))

    before = collections.Counter(sampler.counts) if sampler else collections.Counter()
    probe = asyncio.create_task(lag_probe(lags))
    requests = asyncio.create_task(client())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    try:
        await run_pass()
    finally:
        seconds = time.perf_counter() - started
        done.set()
        await requests
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
    blame = collections.Counter(sampler.counts) - before if sampler else collections.Counter()
    return Measured(seconds, lags, chart, page, blame)


# -- the fleet --------------------------------------------------------------------------------


async def write_fleet(url: str, args: argparse.Namespace, now: datetime) -> list[str]:
    engine = create_engine(url, settings=ENGINE_SETTINGS)
    try:
        ids = device_ids(args.devices, "live")
        await create_fleet(engine, ids)
        console.print(f"writing {args.devices} devices: 12.5 h at 5 min, 20 min at 30 s ...")
        recent = now - timedelta(minutes=20)
        rows = await write(engine, samples(ids, now - timedelta(hours=12.5), recent, 300, seed=2))
        rows += await write(engine, samples(ids, recent, now, 30, seed=3))
        console.print(f"  {rows:,} metric rows")
        async with engine.begin() as connection:
            await connection.execute(
                insert(ConfigurationHistory),
                [
                    {
                        "event_id": f"change-{number}",
                        "timestamp": now - timedelta(minutes=15, seconds=number),
                        "entity_type": "device",
                        "entity_id": ids[number % len(ids)],
                        "parameter_name": "sync_interval",
                        "old_value": {"value": 30},
                        "new_value": {"value": 60},
                        "changed_by": "bench",
                        "change_type": "manual",
                        "performance_before": {"error_rate": 0.5, "network_latency_ms": 30.0},
                    }
                    for number in range(args.changes)
                ],
            )
        await roll_up_new_rows(engine)
        return ids
    finally:
        await engine.dispose()


def risk_model(now: datetime) -> RiskModel:
    """A model of the right shape fitted on noise: scoring costs the same whatever it learnt."""
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(2000, len(FEATURES)))
    labels = (matrix[:, 0] + rng.normal(size=2000) > 1.5).astype(int)
    return RiskModel(
        estimator=make_estimator(0).fit(matrix, labels),
        features=FEATURES,
        horizon=timedelta(hours=2),
        trained_since=now - timedelta(days=7),
        trained_until=now,
        trained_at=now,
        validation={},
        medians=[0.0] * len(FEATURES),
        spreads=[1.0] * len(FEATURES),
        importance=[1.0 / len(FEATURES)] * len(FEATURES),
    )


# -- the run ----------------------------------------------------------------------------------


async def run(url: str, args: argparse.Namespace) -> list[tuple[str, str, Measured]]:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    ids = await write_fleet(url, args, now)
    settings = Settings(
        database_url=url,
        auth=AuthSettings(secret_key="benchmark-secret-key-long-enough-for-hs256"),
        analytics=AnalyticsSettings(spool_dir=args.spool_dir),
        retention=RetentionSettings(enabled=False),
        rollups=RollupSettings(interval_seconds=10**9),
        insights=InsightsSettings(interval_seconds=10**9, risk_interval_seconds=10**9),
        fleet=FleetSettings(
            impact_evaluator_interval_seconds=10**9,
            watchdog_interval_seconds=10**9,
            impact_max_changes_per_pass=args.changes,
            rollback_enabled=False,
        ),
    )
    app = create_app(settings)
    model = risk_model(now)
    results: list[tuple[str, str, Measured]] = []
    sampler = StallSampler() if args.blame else None
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=120):
        async with app.state.session_factory() as session, session.begin():
            await create_user(
                session, email="bench@homepot.example", password="bench-password-1", role=Role.admin
            )
        async with AsyncClient(transport=ASGITransport(app=app), base_url="http://b") as client:
            token = (
                await client.post(
                    "/api/v1/auth/token",
                    data={"username": "bench@homepot.example", "password": "bench-password-1"},
                )
            ).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            turn = [0]

            async def request(kind: str) -> float:
                turn[0] += 1
                device = ids[(turn[0] * 37) % len(ids)]
                if kind == "chart":
                    path = f"/api/v1/devices/{device}/metrics"
                    params = {
                        "since": (now - timedelta(days=7)).isoformat(),
                        "until": now.isoformat(),
                    }
                else:
                    path = "/api/v1/analytics/device-metrics"
                    params = {
                        "start_date": (now - timedelta(days=1)).isoformat(),
                        "end_date": now.isoformat(),
                        "limit": "100",
                    }
                started = time.perf_counter()
                response = await client.get(path, params=params, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
                return (time.perf_counter() - started) * 1000

            engine = app.state.engine
            minute = [0]

            async def first_scan() -> None:
                await scan(
                    engine,
                    now - timedelta(hours=6),
                    now,
                    state=ScanState(baseline_refresh_devices=settings.insights.chunk_devices),
                )

            server_state = ScanState(baseline_refresh_devices=settings.insights.chunk_devices)
            await scan(engine, now - timedelta(hours=6), now, state=server_state)

            # The minutes of samples the next passes will find, written now: generating them
            # in this process would hold the loop inside the measured pass.
            for ahead in range(1, 2 * args.rounds + 1):
                until = now + timedelta(minutes=ahead)
                await write(
                    engine, samples(ids, until - timedelta(minutes=1), until, 30, seed=10 + ahead)
                )

            async def next_scan() -> None:
                minute[0] += 1
                until = now + timedelta(minutes=minute[0])
                await scan(engine, until - timedelta(minutes=15), until, state=server_state)

            async def with_session(step: Callable[[Any], Awaitable[Any]]) -> None:
                async with app.state.session_factory() as session:
                    await step(session)
                    await session.rollback()  # every round scores the same devices again

            async def impact() -> None:
                # Every round judges the same changes again.
                async with engine.begin() as connection:
                    await connection.execute(
                        update(ConfigurationHistory).values(
                            performance_after=None, was_successful=None
                        )
                    )
                await evaluate_due_changes(
                    app.state.session_factory, app.state.recorder, settings, now
                )

            async def config_impact_report() -> None:
                # A request, not a pass: its computation holds the loop all the same.
                response = await client.get(
                    "/api/v1/insights/config-impact",
                    params={
                        "since": (now - timedelta(hours=2)).isoformat(),
                        "until": now.isoformat(),
                        "window_minutes": "10",
                    },
                    headers=headers,
                )
                if response.status_code != 200:
                    raise RuntimeError(f"config impact: {response.status_code} {response.text}")

            passes: dict[str, Callable[[], Awaitable[Any]]] = {
                # The reference: the same requests with no pass running (the passes off).
                "no pass (5 s idle)": lambda: asyncio.sleep(5),
                "insights scan (first pass)": first_scan,
                "insights scan (next pass)": next_scan,
                "risk scoring (model)": lambda: with_session(
                    lambda s: score_devices(s, model, now + timedelta(minutes=minute[0]))
                ),
                "risk scoring (anomalies)": lambda: with_session(
                    lambda s: score_from_anomalies(s, now)
                ),
                "impact evaluator": impact,
                "config impact report (request)": config_impact_report,
                "rollups": lambda: roll_up_new_rows(engine),
                "device watchdog": lambda: mark_silent_devices_offline(
                    app.state.session_factory, app.state.recorder, settings
                ),
            }
            wanted = list(passes) if args.passes == "all" else args.passes.split(",")
            for _ in range(3):  # warm-up: connections, caches, imports
                await request("chart")
                await request("page")
            heartbeat = asyncio.create_task(sampler.heartbeat()) if sampler else None
            if sampler:
                sampler.start()
            try:
                for name in wanted:
                    for round_number in range(args.rounds):
                        for mode in MODES if round_number % 2 == 0 else MODES[::-1]:
                            console.print(f"{name}: {mode} ...")
                            with (
                                inline_computation()
                                if mode == MODES[0]
                                else contextlib.nullcontext()
                            ):
                                measured = await measure_pass(passes[name], request, sampler)
                            results.append((name, mode, measured))
            finally:
                if sampler:
                    sampler.stop()
                if heartbeat:
                    heartbeat.cancel()
    return results


def report(results: list[tuple[str, str, Measured]], blame: bool) -> None:
    table = Table(title="event-loop lag while a pass runs (ms; lag: how late a 10 ms sleep woke)")
    for column in (
        "pass",
        "mode",
        "pass s (median)",
        "max lag",
        "p99 lag",
        "chart p50",
        "chart p95",
        "chart max",
        "1-day page p95",
        "requests",
    ):
        table.add_column(column, justify="left" if column in ("pass", "mode") else "right")
    grouped: dict[tuple[str, str], list[Measured]] = collections.defaultdict(list)
    for name, mode, measured in results:
        grouped[(name, mode)].append(measured)
    for (name, mode), runs in grouped.items():
        lags = [lag for m in runs for lag in m.lags]
        chart = [value for m in runs for value in m.chart]
        page = [value for m in runs for value in m.page]
        table.add_row(
            name,
            mode,
            f"{np.median([m.pass_seconds for m in runs]):.2f}",
            f"{max(lags):.0f}",
            f"{percentile(lags, 0.99):.0f}",
            f"{percentile(chart, 0.5):.0f}",
            f"{percentile(chart, 0.95):.0f}",
            f"{max(chart):.0f}",
            f"{percentile(page, 0.95):.0f}",
            f"{len(chart) + len(page)}",
        )
    console.print(table)
    ratio = Table(title="off the loop against inline, same run (max lag; chart p95)")
    for column in ("pass", "max lag ratio", "chart p95 ratio"):
        ratio.add_column(column)
    for name in dict.fromkeys(name for name, _, _ in results):
        old, new = grouped[(name, MODES[0])], grouped[(name, MODES[1])]
        old_lag = max(lag for m in old for lag in m.lags)
        new_lag = max(lag for m in new for lag in m.lags)
        old_p95 = percentile([v for m in old for v in m.chart], 0.95)
        new_p95 = percentile([v for m in new for v in m.chart], 0.95)
        ratio.add_row(name, f"{new_lag / old_lag:.2f}", f"{new_p95 / old_p95:.2f}")
    console.print(ratio)
    if blame:
        for (name, mode), runs in grouped.items():
            counts: collections.Counter[str] = collections.Counter()
            for m in runs:
                counts.update(m.blame)
            if not counts:
                continue
            console.print(f"[bold]{name}, {mode}[/]: loop held > 20 ms, 2 ms samples")
            for where, count in counts.most_common(8):
                console.print(f"  {count:5d}  {where}")


def main() -> None:
    raise_keyboard_interrupt_on_sigterm()
    args = parse_args()
    console.print(
        f"loop_lag: {args.devices} devices, {args.rounds} rounds per mode, "
        f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}"
    )
    args.spool_dir.mkdir(parents=True, exist_ok=True)
    with benchmark_database(args.database, args.postgres_server, "looplag") as url:
        console.print(f"database: {describe_database(url)}")
        results = asyncio.run(run(url, args))
    report(results, args.blame)
    console.print(f"load average at the end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


if __name__ == "__main__":
    main()
