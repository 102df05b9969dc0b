"""How well the detectors find the simulator's faults, scored against its labels file.

Backfills two histories into fresh databases: one seed to train and tune on, and a different
seed with a different fault mix to test on (nobody tunes on it). Then runs each detector over
both and scores its episodes against the labels the backfill wrote:

- **recall**: the share of labelled faults with a signal in the metrics (at least two samples
  of the device between the fault's start and its end or crash) that got an episode on the
  right device, on a metric the fault moves (:data:`SIGNALS`: a memory leak shows in memory,
  latency and then silence; a filling disk in disk and error rate; ...), starting between
  the fault's start (less one 5-minute bin) and its end. Any episode on the device would
  credit a noisy detector with faults it found by chance: faults last hours, and a rule that
  fires three times a device-day fires inside most of them;
- **lead**: for memory-leak crashes, the time from the first such episode to the crash; for a
  filling disk, to 99 % (median and p10; a fault found only afterwards, or missed, counts 0);
- **false alarms per healthy device-day**: episodes that overlap no fault of their device
  (the fault's span plus 30 minutes of recovery), per device-day outside faults, benign
  events included (the share on benign_* labels is shown); **precision** is the share of
  episodes that overlap a fault of their device on a metric it moves; **F1** from precision
  and recall.

Scoring starts after ``--warmup-days`` of each history, so that a detector that learns each
device's normal has a few days to learn it; both detectors are scored on the same window.

Detectors plug in through :class:`Detector`: given an engine and a time range, the episodes
(device_id, metric, started_at, ended_at). ``rules`` is the spec's old thresholds
(:mod:`homepot.insights.baseline`); ``insights`` runs ``homepot.insights.service.scan`` over
the range and reads its ``anomalies`` rows (episodes marked ``expected_maintenance`` never
alert and are left out), when that package is present.

Run: ``.venv/bin/python benchmarks/insights.py`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from _common import (
    DEFAULT_POSTGRES_SERVER,
    benchmark_database,
    console,
    describe_database,
    median,
    percentile,
    raise_keyboard_interrupt_on_sigterm,
)
from rich.console import Console
from rich.table import Table
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from homepot.analytics.models import DeviceMetrics
from homepot.db import create_engine, run_migrations
from homepot.insights.baseline import scan_thresholds
from homepot.simulation.backfill import BackfillConfig, run_backfill
from homepot.simulation.faults import FaultKind, read_labels

BIN = timedelta(minutes=5)
# The tables are wide: print them whole even into a file or a pipe.
wide = Console(highlight=False, width=200)
# The metrics each fault moves (metric names as in the anomalies table; ``reporting`` is
# silence, ``transactions`` a drop in sales).
SIGNALS: dict[str, frozenset[str]] = {
    FaultKind.memory_leak_crash: frozenset({"memory", "network_latency", "reporting"}),
    FaultKind.disk_filling: frozenset({"disk", "error_rate"}),
    FaultKind.network_flapping: frozenset({"network_latency", "reporting", "transactions"}),
    FaultKind.payment_gateway_timeout: frozenset({"error_rate", "transactions"}),
    FaultKind.bad_config_version: frozenset({"error_rate", "network_latency"}),
}
RECOVERY = timedelta(minutes=30)
TRAIN_MIX = dict.fromkeys(FaultKind, 1.0)
# The test seed's faults lean to the slow ones, whose early signal is the hard part.
TEST_MIX = {
    FaultKind.memory_leak_crash: 3.0,
    FaultKind.disk_filling: 3.0,
    FaultKind.network_flapping: 1.0,
    FaultKind.payment_gateway_timeout: 1.0,
    FaultKind.bad_config_version: 2.0,
}


@dataclass(frozen=True)
class Episode:
    device_id: str
    metric: str
    started_at: datetime
    ended_at: datetime | None  # None: still under way at the end of the range


class Detector(Protocol):
    name: str

    async def episodes(
        self, engine: AsyncEngine, since: datetime, until: datetime
    ) -> list[Episode]:
        """The episodes this detector finds in the metrics stored for ``[since, until)``."""
        ...


class RuleThresholds:
    name = "rules"

    async def episodes(
        self, engine: AsyncEngine, since: datetime, until: datetime
    ) -> list[Episode]:
        found = await scan_thresholds(engine, since, until)
        return [Episode(e.device_id, e.metric, e.started_at, e.ended_at) for e in found]


class InsightsScan:
    """``homepot.insights`` as the server and ``homepot insights scan`` run it."""

    def __init__(self, min_severity: str = "info") -> None:
        self.min_severity = min_severity
        self.name = "insights" if min_severity == "info" else f"insights ({min_severity}+)"

    async def episodes(
        self, engine: AsyncEngine, since: datetime, until: datetime
    ) -> list[Episode]:
        from homepot.insights.models import Anomaly
        from homepot.insights.service import scan

        async with engine.begin() as connection:  # a kept database: forget an older scan's
            await connection.execute(delete(Anomaly))
        await scan(engine, since, until)
        severities = ("info", "warning", "critical")
        wanted = severities[severities.index(self.min_severity) :]
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(Anomaly.device_id, Anomaly.metric, Anomaly.started_at, Anomaly.ended_at)
                .where(
                    Anomaly.device_id.is_not(None),
                    Anomaly.expected_maintenance.is_(False),
                    Anomaly.severity.in_(wanted),
                    Anomaly.started_at >= since,
                    Anomaly.started_at < until,
                )
                .order_by(Anomaly.device_id, Anomaly.started_at)
            )
            return [Episode(str(r[0]), r[1], r[2], r[3]) for r in rows]


@dataclass
class History:
    name: str
    url: str
    labels: list[dict[str, Any]]
    start: datetime
    end: datetime
    devices: list[str]
    samples: dict[str, list[datetime]]  # per device, in time order
    backfill_seconds: float


@dataclass
class Score:
    detector: str
    history: str
    faults: int = 0
    found: int = 0
    by_kind: dict[str, tuple[int, int]] = field(default_factory=dict)  # found, with signal
    leak_leads: list[float] = field(default_factory=list)  # minutes
    disk_leads: list[float] = field(default_factory=list)
    episodes: int = 0
    true_episodes: int = 0
    false_alarms: int = 0
    false_on_benign: Counter[str] = field(default_factory=Counter)
    false_by_metric: Counter[str] = field(default_factory=Counter)
    healthy_days: float = 0.0
    seconds: float = 0.0

    @property
    def recall(self) -> float:
        return self.found / self.faults if self.faults else 0.0

    @property
    def precision(self) -> float:
        return self.true_episodes / self.episodes if self.episodes else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def false_per_day(self) -> float:
        return self.false_alarms / self.healthy_days if self.healthy_days else 0.0


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def _overlaps(a: datetime, b: datetime | None, c: datetime, d: datetime) -> bool:
    return a <= d and (b is None or b >= c)


def signal_start(fault: dict[str, Any]) -> datetime:
    """When a fault starts to move a reading: a filling disk at its first step (a fill whose
    terminal was switched off at closing before that step left nothing in the metrics);
    every other fault at once."""
    start = _time(fault["start"])
    steps = fault["details"].get("steps")
    if fault["fault"] == FaultKind.disk_filling and steps:
        return start + (_time(fault["details"]["full_at"]) - start) * float(steps[0])
    return start


def score(detector: str, history: History, episodes: list[Episode], warmup: timedelta) -> Score:
    result = Score(detector, history.name)
    window = (history.start + warmup, history.end)
    faults = [f for f in history.labels if not f["fault"].startswith("benign_")]
    benign = [b for b in history.labels if b["fault"].startswith("benign_")]
    by_device: dict[str, list[Episode]] = defaultdict(list)
    for episode in episodes:
        if window[0] <= episode.started_at < window[1]:
            by_device[episode.device_id].append(episode)
    spans: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    signals: dict[str, list[tuple[datetime, datetime, frozenset[str]]]] = defaultdict(list)
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for fault in faults:
        start, end = _time(fault["start"]), _time(fault["end"])
        kind = fault["fault"]
        spans[fault["device_id"]].append((start - BIN, end + RECOVERY))
        signals[fault["device_id"]].append((start - BIN, end + RECOVERY, SIGNALS[kind]))
        if not window[0] <= start < window[1]:
            continue
        moment = (
            _time(fault["details"]["crash_at"])
            if kind == FaultKind.memory_leak_crash
            else _time(fault["details"]["full_at"])
            if kind == FaultKind.disk_filling
            else None
        )
        signal_end = moment if kind == FaultKind.memory_leak_crash and moment else end
        samples = history.samples.get(fault["device_id"], [])
        if sum(1 for t in samples if signal_start(fault) <= t < signal_end) < 2:
            continue  # the terminal was off (or silent) while the fault showed: nothing to see
        result.faults += 1
        kinds[kind][1] += 1
        hits = sorted(
            e.started_at
            for e in by_device[fault["device_id"]]
            if start - BIN <= e.started_at <= end and e.metric in SIGNALS[kind]
        )
        if hits:
            result.found += 1
            kinds[kind][0] += 1
        if moment is not None:
            lead = (moment - hits[0]).total_seconds() / 60 if hits else 0.0
            leads = result.leak_leads if kind == FaultKind.memory_leak_crash else result.disk_leads
            leads.append(max(0.0, lead))
    result.by_kind = {kind: (found, total) for kind, (found, total) in kinds.items()}
    benign_spans: dict[str, list[tuple[datetime, datetime, str]]] = defaultdict(list)
    for event in benign:
        benign_spans[event["device_id"]].append(
            (_time(event["start"]) - BIN, _time(event["end"]) + BIN, event["fault"])
        )
    for device, found in by_device.items():
        for episode in found:
            result.episodes += 1
            if any(
                _overlaps(episode.started_at, episode.ended_at, a, b) and episode.metric in moved
                for a, b, moved in signals[device]
            ):
                result.true_episodes += 1
            if any(_overlaps(episode.started_at, episode.ended_at, a, b) for a, b in spans[device]):
                continue
            result.false_alarms += 1
            result.false_by_metric[episode.metric] += 1
            on = [k for a, b, k in benign_spans[device]
                  if _overlaps(episode.started_at, episode.ended_at, a, b)]  # fmt: skip
            result.false_on_benign[on[0] if on else "other"] += 1
    # Healthy time: the scored window less each device's faults (with their recovery).
    length = (window[1] - window[0]).total_seconds()
    for device in history.devices:
        sick = 0.0
        merged: list[tuple[datetime, datetime]] = []
        for a, b in sorted(spans[device]):
            a, b = max(a, window[0]), min(b, window[1])
            if a >= b:
                continue
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        sick = sum((b - a).total_seconds() for a, b in merged)
        result.healthy_days += (length - sick) / 86_400
    return result


def _parameters(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {
        "seed": seed,
        "days": args.days,
        "sites": args.sites,
        "devices": args.devices,
        "interval_minutes": args.interval_minutes,
        "fault_rate": args.fault_rate,
        "end": args.end.isoformat(),
    }


async def backfill(
    name: str, url: str, args: argparse.Namespace, seed: int, mix: dict[FaultKind, float]
) -> History:
    """The history of ``seed``, backfilled (or, with ``--keep``, the one kept from a previous
    run with the same parameters: the database is only migrated to the current head)."""
    labels = Path(args.keep or args.labels_dir) / f"{name}-seed{seed}.csv"
    marker = labels.with_suffix(".json")
    kept = (
        args.keep and marker.exists() and json.loads(marker.read_text()) == _parameters(args, seed)
    )
    if kept:
        run_migrations(url)
        engine = create_engine(url)
        try:
            return await _read_history(name, engine, url, labels, args, 0.0)
        finally:
            await engine.dispose()
    labels.unlink(missing_ok=True)
    config = BackfillConfig(
        days=args.days,
        sites=args.sites,
        devices=args.devices,
        interval_minutes=args.interval_minutes,
        fault_rate=args.fault_rate,
        seed=seed,
        labels=labels,
        end=args.end,
        fault_mix=mix,
    )
    engine = create_engine(url)
    started = time.perf_counter()
    try:
        result = await run_backfill(engine, config)
        seconds = time.perf_counter() - started
        console.print(
            f"  {name}: seed {seed}, {result.faults} faults, "
            f"{sum(result.events.values()):,} analytics rows in {seconds:.0f} s"
        )
        history = await _read_history(name, engine, url, labels, args, seconds)
    finally:
        await engine.dispose()
    if args.keep:
        marker.write_text(json.dumps(_parameters(args, seed)))
    return history


async def _read_history(
    name: str, engine: AsyncEngine, url: str, labels: Path, args: argparse.Namespace, seconds: float
) -> History:
    samples: dict[str, list[datetime]] = defaultdict(list)
    async with engine.connect() as connection:
        rows = await connection.stream(
            select(DeviceMetrics.device_id, DeviceMetrics.timestamp).order_by(
                DeviceMetrics.device_id, DeviceMetrics.timestamp
            )
        )
        async for device_id, moment in rows:
            samples[device_id].append(moment)
    end = args.end.replace(microsecond=0)
    console.print(f"  {name}: labels in {labels}")
    return History(
        name,
        url,
        read_labels(labels),
        end - timedelta(days=args.days),
        end,
        sorted(samples),
        samples,
        seconds,
    )


@contextmanager
def database(args: argparse.Namespace, label: str) -> Iterator[str]:
    """A throw-away database, or with ``--keep`` a SQLite file kept in that directory."""
    if args.keep:
        directory = Path(args.keep)
        directory.mkdir(parents=True, exist_ok=True)
        url = f"sqlite+aiosqlite:///{directory / label}.db"
        if not (directory / f"{label}.db").exists():
            run_migrations(url)
        yield url
        return
    kind = "postgresql" if args.database_url else "sqlite"
    server = args.database_url or DEFAULT_POSTGRES_SERVER
    with benchmark_database(kind, server, label) as url:
        yield url


def detectors(args: argparse.Namespace) -> list[Detector]:
    chosen: list[Detector] = []
    for name in args.detectors.split(","):
        if name == "rules":
            chosen.append(RuleThresholds())
        elif name.startswith("insights"):
            if importlib.util.find_spec("homepot.insights.service") is None:
                console.print("[yellow]homepot.insights.service is missing: insights skipped")
                continue
            severity = name.partition(":")[2] or "info"
            chosen.append(InsightsScan(severity))
        else:
            raise SystemExit(f"unknown detector {name!r}: use rules, insights, insights:warning")
    return chosen


def _minutes(values: list[float], fraction: float | None = None) -> str:
    if not values:
        return "-"
    value = median(values) if fraction is None else percentile(values, fraction)
    return f"{value:.0f} min"


_SHORT = {
    FaultKind.memory_leak_crash: "leak",
    FaultKind.disk_filling: "disk",
    FaultKind.network_flapping: "flapping",
    FaultKind.payment_gateway_timeout: "gateway",
    FaultKind.bad_config_version: "bad config",
}


def print_scores(scores: list[Score]) -> None:
    table = Table(title="Detectors against the labels (scored after the warm-up)")
    for column in ("detector", "history", "recall", "leak lead p50 / p10", "disk lead p50 / p10",
                   "false alarms / healthy dev-day", "precision", "F1", "run"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("detector", "history") else "right")
    for s in scores:
        table.add_row(
            s.detector,
            s.history,
            f"{s.recall:.2f} ({s.found}/{s.faults})",
            f"{_minutes(s.leak_leads)} / {_minutes(s.leak_leads, 0.1)} ({len(s.leak_leads)})",
            f"{_minutes(s.disk_leads)} / {_minutes(s.disk_leads, 0.1)} ({len(s.disk_leads)})",
            f"{s.false_per_day:.3f} ({s.false_alarms} in {s.healthy_days:.0f})",
            f"{s.precision:.3f}",
            f"{s.f1:.3f}",
            f"{s.seconds:.1f} s",
        )
    wide.print(table)
    kinds = Table(title="Faults found by kind, and where the false alarms fell")
    kinds.add_column("detector")
    kinds.add_column("history")
    for kind in FaultKind:
        kinds.add_column(_SHORT[kind], justify="right")
    kinds.add_column("false alarms on", justify="left")
    kinds.add_column("false alarms by metric", justify="left")
    for s in scores:
        cells = []
        for kind in FaultKind:
            found, total = s.by_kind.get(kind.value, (0, 0))
            cells.append(f"{found}/{total}" if total else "-")
        spread = ", ".join(
            f"{k.removeprefix('benign_')} {n}" for k, n in s.false_on_benign.most_common()
        )
        metrics = ", ".join(f"{k} {n}" for k, n in s.false_by_metric.most_common())
        kinds.add_row(s.detector, s.history, *cells, spread or "-", metrics or "-")
    wide.print(kinds)


def print_targets(scores: list[Score]) -> None:
    tests = {s.detector: s for s in scores if s.history == "test"}
    rules = tests.get(RuleThresholds.name)
    for s in tests.values():
        if s.detector == RuleThresholds.name:
            continue
        leads = s.leak_leads + s.disk_leads
        checks = [
            ("recall >= 0.90", s.recall >= 0.90),
            ("median lead >= 30 min", bool(leads) and median(leads) >= 30),
            ("<= 0.05 false alarms per healthy device-day", s.false_per_day <= 0.05),
        ]
        if rules is not None:
            checks.append((f"F1 >= rules + 0.2 ({rules.f1 + 0.2:.3f})", s.f1 >= rules.f1 + 0.2))
        verdict = ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in checks)
        console.print(f"{s.detector} on the test seed: {verdict}")


async def run(args: argparse.Namespace, train_url: str, test_url: str) -> None:
    chosen = detectors(args)
    warmup = timedelta(days=args.warmup_days)
    console.print(f"databases: {describe_database(train_url)}, {describe_database(test_url)}")
    histories = [
        await backfill("train", train_url, args, args.train_seed, TRAIN_MIX),
        await backfill("test", test_url, args, args.test_seed, TEST_MIX),
    ]
    scores = []
    for detector in chosen:
        for history in histories:
            engine = create_engine(history.url)
            started = time.perf_counter()
            try:
                found = await detector.episodes(engine, history.start, history.end)
            finally:
                await engine.dispose()
            result = score(detector.name, history, found, warmup)
            result.seconds = time.perf_counter() - started
            scores.append(result)
    print_scores(scores)
    print_targets(scores)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--days", type=float, default=7.0, help="history per seed (at most 7)")
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--interval-minutes", type=float, default=5.0)
    parser.add_argument("--fault-rate", type=float, default=0.3, help="per terminal per day")
    parser.add_argument("--train-seed", type=int, default=1)
    parser.add_argument("--test-seed", type=int, default=2)
    parser.add_argument(
        "--end",
        type=lambda value: datetime.fromisoformat(value).astimezone(UTC),
        default=datetime(2026, 11, 23, tzinfo=UTC),
        help="end of both histories (ISO 8601); fixed, so that a run repeats",
    )
    parser.add_argument("--warmup-days", type=float, default=3.0, help="not scored")
    parser.add_argument(
        "--detectors",
        default="rules,insights",
        help="comma-separated: rules, insights, insights:warning, insights:critical",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432) to create "
        "the two throw-away databases on; default: temporary SQLite files",
    )
    parser.add_argument(
        "--labels-dir", default=tempfile.gettempdir(), help="where the labels files go"
    )
    parser.add_argument(
        "--keep",
        default=None,
        metavar="DIR",
        help="keep both histories as SQLite files (and their labels) in DIR, and reuse them "
        "on the next run with the same parameters instead of backfilling again",
    )
    args = parser.parse_args()
    if args.warmup_days >= args.days:
        parser.error("--warmup-days must be shorter than --days")
    if args.keep and args.database_url:
        parser.error("--keep keeps SQLite files: leave out --database-url")
    return args


def main() -> None:
    raise_keyboard_interrupt_on_sigterm()
    args = parse_args()
    try:
        # The databases are made and dropped outside the event loop (their set-up runs its own).
        with (
            database(args, "insights_train") as train_url,
            database(args, "insights_test") as test_url,
        ):
            asyncio.run(run(args, train_url, test_url))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
