"""Rows a risk pass reads from device_metrics: every device's day (before) against the last
3 h plus the day of the devices whose hourly baseline anchor passed (homepot.insights.risk_reads).

A fleet of ``--devices`` terminals (20 per store) reports every ``--telemetry`` seconds for
28 h. One cold pass (a process that has just taken the pass over), then ``--passes`` passes
``--interval`` seconds apart, as the server runs them. For each: rows read (the last 3 h, the
days for the baselines), baselines recomputed, wall time of reading and computing the
features, and (``--check``, default on) whether they equal those computed from the full raw
history (timed too: the reads of before, with one more hour). "Before" is what
the code before read at every pass: every device's samples of ``[now - 25 h, now]``, counted
in the database. Rows scale with devices × samples per hour, so the table also gives the
figures for 5,000 terminals.

    python benchmarks/risk_reads.py [--devices 200] [--telemetry 30] [--passes 12]
                                    [--interval 300] [--database sqlite|postgresql] [--no-check]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from datetime import UTC, datetime, timedelta

import numpy as np
from _common import benchmark_database, console, raise_keyboard_interrupt_on_sigterm
from rich.table import Table
from sqlalchemy import func, insert, select

from homepot.analytics.models import DeviceMetrics
from homepot.db import create_engine, create_session_factory
from homepot.device.models import Device, DeviceStatus
from homepot.insights.features import RECENT, baseline_anchor, current_features, load_history
from homepot.insights.risk_reads import BaselineCache, PassReads, load_scoring_history
from homepot.site.models import Site

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
FLEET = 5000
BEFORE = timedelta(hours=25)  # what a pass read before: load_history(now - 1 h, now)


async def fill(url: str, devices: int, telemetry: float, passes: int, interval: float) -> int:
    """The fleet's samples from 27 h before NOW to the last pass; returns the row count."""
    rng = random.Random(1)
    engine = create_engine(url)
    end = NOW + timedelta(seconds=passes * interval)
    start = NOW - timedelta(hours=27)
    count = 0
    try:
        async with create_session_factory(engine)() as session:
            for number in range(0, devices, 20):
                site_id = f"store-{number // 20:04d}"
                session.add(Site(site_id=site_id, name=site_id, timezone="UTC"))
                await session.flush()
                for device_id in (f"pos-{n:05d}" for n in range(number, min(number + 20, devices))):
                    session.add(Device(device_id=device_id, site_id=site_id, name=device_id,
                                       status=DeviceStatus.online))  # fmt: skip
            await session.commit()
            for number in range(devices):
                device_id = f"pos-{number:05d}"
                rows = []
                moment = start + timedelta(seconds=rng.uniform(0, telemetry))
                base = rng.uniform(35, 60)
                while moment <= end:
                    hour = moment.hour + moment.minute / 60
                    rows.append(
                        {
                            "device_id": device_id,
                            "timestamp": moment,
                            "event_id": f"{device_id}-{moment.timestamp():.3f}",
                            "cpu_percent": max(0.0, rng.gauss(30, 10)),
                            "memory_percent": base + 6 * math.sin(hour / 24 * 2 * math.pi)
                            + rng.gauss(0, 2),
                            "disk_percent": 50 + rng.gauss(0, 1),
                            "network_latency_ms": 40 * math.exp(rng.gauss(0, 0.2)),
                            "error_rate": abs(rng.gauss(0.5, 0.3)),
                        }
                    )  # fmt: skip
                    moment += timedelta(seconds=telemetry)
                for first in range(0, len(rows), 2000):
                    await session.execute(insert(DeviceMetrics), rows[first : first + 2000])
                count += len(rows)
                await session.commit()
    finally:
        await engine.dispose()
    return count


def _same(served: np.ndarray, expected: np.ndarray) -> bool:
    return served.shape == expected.shape and bool(np.array_equal(served, expected, equal_nan=True))


async def run(args: argparse.Namespace, url: str) -> None:
    started = time.perf_counter()
    total = await fill(url, args.devices, args.telemetry, args.passes, args.interval)
    console.print(
        f"{args.devices} terminals every {args.telemetry:g} s: {total:,} rows in "
        f"{time.perf_counter() - started:.0f} s; load average {_load()}"
    )
    engine = create_engine(url)
    factory = create_session_factory(engine)
    cache = BaselineCache()
    table = Table(title="device_metrics rows per risk pass")
    for column in ("pass", "before: rows read", "now: last 3 h", "now: days for baselines",
                   "baselines", "now: rows", "ratio", "full history (26 h): s", "now: s",
                   "served = full history",
                   "load average"):  # fmt: skip
        table.add_column(column, justify="right")
    steady: list[tuple[int, int]] = []
    steady_reads: list[PassReads] = []
    try:
        for number in range(args.passes + 1):
            now = NOW + timedelta(seconds=number * args.interval)
            async with factory() as session:
                before = int(
                    await session.scalar(
                        select(func.count())
                        .select_from(DeviceMetrics)
                        .where(DeviceMetrics.timestamp >= now - BEFORE)
                        .where(DeviceMetrics.timestamp <= now)
                    )
                    or 0
                )
                moment = time.perf_counter()
                history = await load_scoring_history(session, now, cache)
                served = current_features(history, sorted(history.devices), now)
                seconds = time.perf_counter() - moment
                check, full_seconds = "not checked", math.nan
                if args.check:
                    moment = time.perf_counter()
                    full = await load_history(
                        session, now - timedelta(hours=1), now, include_simulated=True
                    )
                    expected = current_features(full, sorted(full.devices), now)
                    full_seconds = time.perf_counter() - moment
                    same = _same(served.matrix, expected.matrix) and (
                        served.device_ids == expected.device_ids
                    )
                    check = "identical" if same else "DIFFERENT"
            reads = cache.last_pass
            assert reads is not None
            if number:
                steady.append((before, reads.rows))
                steady_reads.append(reads)
            table.add_row(
                "cold" if number == 0 else f"+{number * args.interval / 60:g} min",
                f"{before:,}",
                f"{reads.recent_rows:,}",
                f"{reads.baseline_rows:,}",
                f"{reads.baselines_computed}",
                f"{reads.rows:,}",
                f"{before / max(reads.rows, 1):.2f}",
                f"{full_seconds:.2f}",
                f"{seconds:.2f}",
                check,
                _load(),
            )
    finally:
        await engine.dispose()
    console.print(table)
    _fleet_projection(args, steady_reads)
    before_rows = sum(b for b, _ in steady)
    now_rows = sum(n for _, n in steady)
    scale = FLEET / args.devices
    console.print(
        f"{len(steady)} passes after the cold one: {before_rows / len(steady):,.0f} rows a pass "
        f"before, {now_rows / len(steady):,.0f} now: {before_rows / now_rows:.2f}× fewer. "
        f"At {FLEET:,} terminals every {args.telemetry:g} s: "
        f"{before_rows / len(steady) * scale / 1e6:.2f} M before, "
        f"{now_rows / len(steady) * scale / 1e6:.2f} M now a pass; samples held as arrays "
        f"(6 floats a row) {before_rows / len(steady) * scale * 48 / 1e6:,.0f} MB before, "
        f"{(reads.recent_rows) * scale * 48 / 1e6:,.0f} MB now (the last 3 h, plus one batch "
        f"of {cache.batch_devices} devices' days while their baselines are computed)"
    )


def _fleet_projection(args: argparse.Namespace, steady: list[PassReads]) -> None:
    """Each pass's rows at FLEET terminals (ids as here), from how many of their baselines
    each pass recomputes and the rows of a device's day measured above: a pass's share of
    the fleet varies with how the ids' phases fall, less so in a large fleet."""
    computed = sum(reads.baselines_computed for reads in steady)
    if not computed:
        return
    day_rows = sum(reads.baseline_rows for reads in steady) / computed
    recent_rows = FLEET * RECENT.total_seconds() / args.telemetry
    before_rows = FLEET * BEFORE.total_seconds() / args.telemetry
    ids = [f"pos-{n:05d}" for n in range(FLEET)]
    ratios = []
    for number in range(1, args.passes + 1):
        at = (NOW + timedelta(seconds=number * args.interval)).timestamp()
        previous = at - args.interval
        due = sum(baseline_anchor(i, at) != baseline_anchor(i, previous) for i in ids)
        ratios.append(before_rows / (recent_rows + due * day_rows))
    console.print(
        f"Projected to {FLEET:,} terminals (ids pos-00000…): {before_rows / 1e6:.2f} M rows a "
        f"pass before; now {recent_rows / 1e6:.2f} M of the last 3 h plus {day_rows:,.0f} a "
        f"baseline recomputed; the {args.passes} passes {min(ratios):.2f}–{max(ratios):.2f}× "
        f"fewer (mean of the rows {len(ratios) / sum(1 / r for r in ratios):.2f}×)"
    )


def _load() -> str:
    with open("/proc/loadavg") as loadavg:
        return " ".join(loadavg.read().split()[:3])


def main() -> int:
    raise_keyboard_interrupt_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--telemetry", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--passes", type=int, default=12)
    parser.add_argument("--interval", type=float, default=300.0, help="seconds between passes")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--postgres-server", default="postgresql+asyncpg://postgres@127.0.0.1:5432")
    parser.add_argument("--no-check", dest="check", action="store_false")
    args = parser.parse_args()
    if args.devices < 1 or args.passes < 1 or args.telemetry <= 0 or args.interval <= 0:
        parser.error("--devices, --passes, --telemetry and --interval must be positive")
    try:
        with benchmark_database(args.database, args.postgres_server, "risk_reads") as url:
            asyncio.run(run(args, url))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
