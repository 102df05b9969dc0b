"""Recommended maintenance windows: how many sales does a job disturb, and how long does it
wait, when it runs in the recommended window instead of the declared one (or right away)?

For each seed (tune on ``--train-seed``, report on ``--test-seed``), two consecutive weeks of
the same simulated fleet are backfilled: the recommendations are learnt on the first week
(:func:`homepot.site.recommended.site_recommendations`, ``--duration-minutes`` long) and judged
on the second, which they never saw. On the second week, ``--jobs-per-site`` job creation
moments per site are drawn uniformly; each job of ``--duration-minutes`` starts

- **now**: at its creation (the baseline of a job scheduled ``now``);
- **declared**: at the site's next declared maintenance window (``schedule=maintenance_window``,
  :func:`homepot.site.windows.next_maintenance_window`);
- **recommended**: at the site's next recommended window (``schedule=recommended_window``).

Per strategy: the transactions of the site's terminals that fell inside the job's run (mean
per job, and the share of jobs that disturbed any), and the wait from creation to start.

Run: ``.venv/bin/python benchmarks/maintenance_windows.py`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import random
import statistics
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from _common import benchmark_database, console, raise_keyboard_interrupt_on_sigterm
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics.models import DeviceMetrics, SiteOperatingSchedule
from homepot.db import create_engine
from homepot.device.models import Device
from homepot.simulation.backfill import BackfillConfig, run_backfill
from homepot.site.models import Site
from homepot.site.recommended import next_recommended_start, site_recommendations
from homepot.site.windows import next_maintenance_window

STRATEGIES = ("now", "declared", "recommended")


async def _backfill(url: str, args: argparse.Namespace, seed: int, end: datetime) -> None:
    engine = create_engine(url)
    try:
        started = time.perf_counter()
        result = await run_backfill(
            engine,
            BackfillConfig(
                days=7, sites=args.sites, devices=args.devices, seed=seed, end=end, fault_rate=0
            ),
        )
        console.print(
            f"  seed {seed}, week ending {end:%Y-%m-%d}: "
            f"{sum(result.events.values()):,} rows in {time.perf_counter() - started:.0f} s"
        )
    finally:
        await engine.dispose()


async def _sites(session: AsyncSession) -> dict[str, tuple[str, list[SiteOperatingSchedule]]]:
    schedules: dict[str, list[SiteOperatingSchedule]] = defaultdict(list)
    for row in await session.scalars(select(SiteOperatingSchedule)):
        schedules[row.site_id].append(row)
    return {
        site_id: (timezone, schedules[site_id])
        for site_id, timezone in (await session.execute(select(Site.site_id, Site.timezone))).all()
    }


async def learn(url: str, args: argparse.Namespace, end: datetime) -> dict[str, Any]:
    """Each site's recommendations from the first week."""
    engine = create_engine(url)
    try:
        async with AsyncSession(engine) as session:
            sites = await _sites(session)
            return {
                site_id: await site_recommendations(
                    session,
                    site_id=site_id,
                    timezone=timezone,
                    schedules=schedules,
                    now=end,
                    duration_minutes=args.duration_minutes,
                    lookback_days=7,
                )
                for site_id, (timezone, schedules) in sites.items()
            }
    finally:
        await engine.dispose()


async def judge(
    url: str, args: argparse.Namespace, seed: int, start: datetime, end: datetime, advice: Any
) -> dict[str, dict[str, list[float]]]:
    """Per strategy: transactions disturbed and hours waited, one entry per job."""
    engine = create_engine(url)
    try:
        async with AsyncSession(engine) as session:
            sites = await _sites(session)
            site_of = dict((await session.execute(select(Device.device_id, Device.site_id))).all())
            sales: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
            statement = select(
                DeviceMetrics.device_id, DeviceMetrics.timestamp, DeviceMetrics.transaction_count
            ).where(DeviceMetrics.transaction_count > 0)
            for device_id, moment, count in (await session.execute(statement)).all():
                sales[site_of[device_id]].append((moment.astimezone(UTC), int(count)))
    finally:
        await engine.dispose()
    rng = random.Random(f"jobs/{seed}")
    duration = timedelta(minutes=args.duration_minutes)
    results: dict[str, dict[str, list[float]]] = {s: defaultdict(list) for s in STRATEGIES}
    for site_id in sorted(sites):
        if site_id not in advice:
            continue
        timezone, schedules = sites[site_id]
        events = sorted(sales.get(site_id, []))
        moments = [moment for moment, _ in events]
        cumulative = [0]
        for _, count in events:
            cumulative.append(cumulative[-1] + count)
        for _ in range(args.jobs_per_site):
            created = start + (end - start - timedelta(days=1)) * rng.random()
            starts = {
                "now": created,
                "declared": next_maintenance_window(schedules, timezone, created),
                "recommended": next_recommended_start(advice[site_id], timezone, created),
            }
            if any(s is None or s + duration > end for s in starts.values()):
                continue  # a window past the judged week: not measurable
            for strategy, begin in starts.items():
                assert begin is not None
                low = bisect.bisect_left(moments, begin)
                high = bisect.bisect_left(moments, begin + duration)
                results[strategy]["transactions"].append(cumulative[high] - cumulative[low])
                results[strategy]["wait_hours"].append((begin - created).total_seconds() / 3600)
    return results


async def run_seed(args: argparse.Namespace, seed: int, first: str, second: str) -> Any:
    middle = args.end - timedelta(days=7)
    await _backfill(first, args, seed, middle)
    await _backfill(second, args, seed, args.end)
    advice = await learn(first, args, middle)
    return await judge(second, args, seed, middle, args.end, advice)


def report(outcomes: list[tuple[str, int, Any]], duration: int) -> None:
    table = Table(title=f"Jobs of {duration} min on the held-out week")
    for column in (
        "seed",
        "strategy",
        "jobs",
        "transactions disturbed per job",
        "jobs disturbing any sale",
        "median wait",
        "p90 wait",
    ):
        table.add_column(column)
    for name, seed, results in outcomes:
        for strategy in STRATEGIES:
            sales = results[strategy]["transactions"]
            waits = sorted(results[strategy]["wait_hours"])
            if not sales:
                continue
            table.add_row(
                f"{name} ({seed})",
                strategy,
                str(len(sales)),
                f"{statistics.fmean(sales):.2f}",
                f"{sum(1 for s in sales if s) / len(sales):.1%}",
                f"{statistics.median(waits):.1f} h",
                f"{waits[int(0.9 * (len(waits) - 1))]:.1f} h",
            )
    console.print(table)
    _, _, test = outcomes[-1]
    recommended = statistics.fmean(test["recommended"]["transactions"])
    declared = statistics.fmean(test["declared"]["transactions"])
    wait_recommended = statistics.median(test["recommended"]["wait_hours"])
    wait_declared = statistics.median(test["declared"]["wait_hours"])
    console.print(
        f"Test seed: recommended windows disturb {recommended:.2f} transactions per job vs "
        f"{declared:.2f} in the declared ones "
        f"({'met' if recommended <= declared else 'MISSED'}: no more than declared), "
        f"median wait {wait_recommended:.1f} h vs {wait_declared:.1f} h"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sites", type=int, default=30)
    parser.add_argument("--devices", type=int, default=60)
    parser.add_argument("--duration-minutes", type=int, default=60)
    parser.add_argument("--jobs-per-site", type=int, default=40)
    parser.add_argument("--train-seed", type=int, default=1)
    parser.add_argument("--test-seed", type=int, default=2)
    parser.add_argument(
        "--end",
        type=lambda value: datetime.fromisoformat(value).astimezone(UTC),
        default=datetime(2026, 11, 23, tzinfo=UTC),
        help="end of the judged week (ISO 8601); fixed, so that a run repeats",
    )
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres-server", default="postgresql+asyncpg://postgres@127.0.0.1:5432")
    return parser.parse_args()


def main() -> None:
    raise_keyboard_interrupt_on_sigterm()
    args = parse_args()
    outcomes = []
    for name, seed in (("train", args.train_seed), ("test", args.test_seed)):
        with (
            benchmark_database(args.database, args.postgres_server, f"mw{seed}a") as first,
            benchmark_database(args.database, args.postgres_server, f"mw{seed}b") as second,
        ):
            outcomes.append((name, seed, asyncio.run(run_seed(args, seed, first, second))))
    report(outcomes, args.duration_minutes)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        console.print("interrupted")
