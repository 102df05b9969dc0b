"""Configuration impact across the fleet: is the simulator's bad configuration version flagged,
and are the good rollouts of the same period left alone?

Backfills one history per seed (tune on ``--train-seed``, report on ``--test-seed``) with the
simulator's faults, among them ``bad_config_version`` (configuration 2.6.1-rc3 raises the
error rate until it is rolled back), and ``good_config_rollouts``: configurations 2.6.2 and
2.7.0 rolled out while the sites trade, next to the nightly price-table and promotion
versions every site receives before opening. Then runs
:func:`homepot.insights.config_impact.config_impact` over the whole history and reports:

- whether the bad version is a ``regression`` (its error-rate effect and 95 % interval);
- **false regressions**: any other (parameter, value) flagged ``regression``, out of the rows
  judged (not ``not_enough_data``);
- two baselines, measured in the same run: the per-device verdicts the impact evaluator
  stores (``was_successful``, 10 minutes either side, error rate and latency), aggregated by
  majority: a value is a regression when more than half of its judged devices (at least 3)
  were judged worse; and the **naive pooled before/after**: the same windows, interval and
  verdict rule, on each device's raw ``after - before`` with no control devices and no
  own-history reference (what the difference in differences adds).

Run: ``.venv/bin/python benchmarks/config_impact.py`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from _common import benchmark_database, console, raise_keyboard_interrupt_on_sigterm
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics.models import ConfigurationHistory
from homepot.db import create_engine
from homepot.insights import config_impact as impact
from homepot.insights.config_impact import MIN_DEVICES, ImpactRow, config_impact, value_key
from homepot.simulation.backfill import GOOD_CONFIG_VERSIONS, BackfillConfig, run_backfill
from homepot.simulation.faults import BAD_CONFIG_VERSION, FaultKind

BAD = ("config_version", value_key({"value": BAD_CONFIG_VERSION}))


async def _baseline(
    session: AsyncSession, since: datetime, until: datetime
) -> set[tuple[str, str]]:
    """(parameter, value) judged a regression by the majority of its devices' own verdicts."""
    rows = (
        await session.execute(
            select(
                ConfigurationHistory.parameter_name,
                ConfigurationHistory.new_value,
                ConfigurationHistory.entity_id,
                ConfigurationHistory.was_successful,
            ).where(
                ConfigurationHistory.timestamp >= since,
                ConfigurationHistory.timestamp < until,
                ConfigurationHistory.was_successful.is_not(None),
            )
        )
    ).all()
    verdicts: dict[tuple[str, str], dict[str, list[bool]]] = defaultdict(dict)
    for parameter, new_value, device_id, successful in rows:
        verdicts[(parameter, value_key(new_value))].setdefault(device_id, []).append(successful)
    flagged = set()
    for key, devices in verdicts.items():
        worse = sum(1 for results in devices.values() if not all(results))
        if len(devices) >= MIN_DEVICES and worse > len(devices) / 2:
            flagged.add(key)
    return flagged


async def _naive(
    session: AsyncSession, since: datetime, until: datetime, window_minutes: int
) -> set[tuple[str, str]]:
    """(parameter, value) a raw pooled before/after calls a regression (same rule)."""
    window = window_minutes * 60 // impact.BIN_SECONDS
    changes = await impact._changes(session, since, until, None)
    devices = sorted({c.device_id for c in changes})
    deltas = await impact._deltas(session, {c.bin for c in changes}, window, devices)
    groups: dict[tuple[str, str], dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for change in changes:
        if change.bin in deltas.by_bin:
            row = deltas.by_bin[change.bin][deltas.row_of[change.device_id]]
            groups[(change.parameter, change.key)][change.device_id].append(row)
    flagged = set()
    for key, per_device in groups.items():
        means = {d: sum(rows) / len(rows) for d, rows in per_device.items()}
        verdict, _, _ = impact.judge(impact._summarise(means))
        if verdict == "regression":
            flagged.add(key)
    return flagged


def _family(row_key: tuple[str, str]) -> str:
    parameter, key = row_key
    if row_key == BAD:
        return "bad config version"
    if parameter == "config_version":
        return "good config version" if key.strip('"') in GOOD_CONFIG_VERSIONS else "rollback"
    return parameter


async def run_seed(args: argparse.Namespace, seed: int, url: str) -> dict[str, Any]:
    end = args.end
    config = BackfillConfig(
        days=args.days,
        sites=args.sites,
        devices=args.devices,
        fault_rate=args.fault_rate,
        seed=seed,
        end=end,
        good_config_rollouts=True,
        # Terminals report while their site is closed (as the live simulator's do): the
        # nightly price tables, sent 20 minutes before opening, can then be measured.
        always_on=True,
        # A bad version reaches several terminals (a release, not one unlucky device).
        fault_mix={
            kind: 3.0 if kind is FaultKind.bad_config_version else 1.0 for kind in FaultKind
        },
    )
    engine = create_engine(url)
    try:
        started = time.perf_counter()
        result = await run_backfill(engine, config)
        console.print(
            f"  seed {seed}: {result.faults} faults, {sum(result.events.values()):,} rows "
            f"in {time.perf_counter() - started:.0f} s"
        )
        since = end - timedelta(days=args.days)
        async with AsyncSession(engine) as session:
            started = time.perf_counter()
            report = await config_impact(
                session, since=since, until=end, window_minutes=args.window_minutes
            )
            seconds = time.perf_counter() - started
            baseline = await _baseline(session, since, end)
            naive = await _naive(session, since, end, args.window_minutes)
    finally:
        await engine.dispose()
    return {
        "seed": seed,
        "rows": report.rows,
        "seconds": seconds,
        "baseline": baseline,
        "naive": naive,
    }


def _summary(outcome: dict[str, Any]) -> dict[str, Any]:
    rows: list[ImpactRow] = outcome["rows"]
    bad = next((row for row in rows if (row.parameter, row.key) == BAD), None)
    judged = [r for r in rows if r.verdict != "not_enough_data" and (r.parameter, r.key) != BAD]
    false = [r for r in judged if r.verdict == "regression"]
    baseline_keys = outcome["baseline"]
    judged_keys = {(r.parameter, r.key) for r in judged}
    families: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        families[_family((row.parameter, row.key))][row.verdict] += 1
    return {
        "bad": bad,
        "judged": len(judged),
        "false": false,
        "baseline_bad": BAD in baseline_keys,
        "baseline_false": len(baseline_keys & judged_keys),
        "naive_bad": BAD in outcome["naive"],
        "naive_false": len(outcome["naive"] - {BAD}),
        "families": families,
    }


def report(outcomes: list[tuple[str, dict[str, Any]]]) -> None:
    table = Table(title="Configuration impact: the bad version vs the good rollouts")
    for column in (
        "seed",
        "bad version verdict",
        "error-rate effect (95 % CI), devices",
        "false regressions / rows judged",
        "per-device verdicts: bad flagged",
        "per-device verdicts: false regressions",
        "naive before/after: bad flagged",
        "naive before/after: false regressions",
        "time",
    ):
        table.add_column(column)
    for name, outcome in outcomes:
        summary = _summary(outcome)
        bad: ImpactRow | None = summary["bad"]
        effect = "-"
        if bad is not None:
            error = next(m for m in bad.metrics if m.metric == "error_rate")
            effect = (
                f"{error.effect:+.2f} ({error.ci_low:+.2f} to {error.ci_high:+.2f}), "
                f"{error.devices}"
                if error.effect is not None and error.ci_low is not None
                else f"{error.effect}, {error.devices}"
            )
        table.add_row(
            f"{name} ({outcome['seed']})",
            bad.verdict if bad is not None else "(not in history)",
            effect,
            f"{len(summary['false'])} / {summary['judged']}",
            "yes" if summary["baseline_bad"] else "no",
            f"{summary['baseline_false']} / {summary['judged']}",
            "yes" if summary["naive_bad"] else "no",
            str(summary["naive_false"]),
            f"{outcome['seconds']:.1f} s",
        )
    console.print(table)
    for name, outcome in outcomes:
        summary = _summary(outcome)
        families = Table(title=f"Verdicts per kind of change, {name} seed")
        families.add_column("kind")
        for verdict in ("regression", "improvement", "no_effect", "not_enough_data"):
            families.add_column(verdict)
        for family, counts in sorted(summary["families"].items()):
            families.add_row(family, *(str(counts.get(v, 0)) for v in (
                "regression", "improvement", "no_effect", "not_enough_data"
            )))  # fmt: skip
        console.print(families)
        for row in summary["false"]:
            console.print(f"  false regression: {row.parameter}={row.key}: {row.explanation}")
    _, test = outcomes[-1]
    summary = _summary(test)
    flagged = summary["bad"] is not None and summary["bad"].verdict == "regression"
    console.print(
        f"Target on the test seed: bad version flagged ({'met' if flagged else 'MISSED'}), "
        f"no false regression ({'met' if not summary['false'] else 'MISSED'}: "
        f"{len(summary['false'])})"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--days", type=float, default=7.0, help="history per seed (at most 7)")
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--devices", type=int, default=80)
    parser.add_argument("--fault-rate", type=float, default=0.15, help="per terminal per day")
    parser.add_argument("--window-minutes", type=int, default=30)
    parser.add_argument("--train-seed", type=int, default=1)
    parser.add_argument("--test-seed", type=int, default=2)
    parser.add_argument(
        "--end",
        type=lambda value: datetime.fromisoformat(value).astimezone(UTC),
        default=datetime(2026, 11, 23, tzinfo=UTC),
        help="end of both histories (ISO 8601); fixed, so that a run repeats",
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="where the throw-away histories go",
    )
    parser.add_argument("--postgres-server", default="postgresql+asyncpg://postgres@127.0.0.1:5432")
    return parser.parse_args()


def main() -> None:
    raise_keyboard_interrupt_on_sigterm()
    args = parse_args()
    outcomes = []
    for name, seed in (("train", args.train_seed), ("test", args.test_seed)):
        with benchmark_database(args.database, args.postgres_server, f"impact{seed}") as url:
            outcomes.append((name, asyncio.run(run_seed(args, seed, url))))
    report(outcomes)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        console.print("interrupted")
