"""The terminal model is noisy the way real terminals are, and its benign events are labelled."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import fmean

from sqlalchemy import select

from homepot.analytics.models import DeviceMetrics
from homepot.db import create_engine
from homepot.insights.baseline import scan_thresholds, threshold_episodes
from homepot.simulation.backfill import BackfillConfig, run_backfill
from homepot.simulation.faults import BenignKind, FaultKind, FaultPlanner, read_labels
from homepot.simulation.model import HARDWARE, SiteProfile, TerminalModel, default_week

LONDON = SiteProfile("store-lon", "Europe/London", default_week(0))
TUESDAY = datetime(2026, 11, 17, tzinfo=UTC)  # London is on UTC in November
# Sunday 2026-11-22 is the maintenance day; the backfill's first store (London) takes its
# firmware update at 09:35, 25 minutes before it opens.
SUNDAY_EVENING = datetime(2026, 11, 22, 18, 0, tzinfo=UTC)


def day_of_samples(
    model: TerminalModel, start: datetime, step: timedelta, hours: float
) -> list[tuple[datetime, dict[str, float]]]:
    rows = []
    moment = start
    while moment < start + timedelta(hours=hours):
        rows.append((moment, model.sample(moment, step)[0]))
        moment += step
    return rows


def test_the_same_seed_gives_the_same_terminal_and_another_seed_another() -> None:
    step = timedelta(minutes=5)

    def run(seed: str) -> tuple[list[object], list[object]]:
        model = TerminalModel("pos-1", LONDON, 2, random.Random(seed))
        model.boot(TUESDAY + timedelta(hours=7, minutes=30))
        samples = day_of_samples(model, TUESDAY + timedelta(hours=7, minutes=30), step, 15)
        events = model.benign_events(TUESDAY, TUESDAY + timedelta(days=1))
        return [s for _, s in samples], [e.label() for e in events]

    assert run("a") == run("a")
    assert run("a")[0] != run("b")[0]


def test_older_hardware_runs_hotter_with_a_bigger_memory_footprint() -> None:
    noon = TUESDAY + timedelta(hours=10, minutes=30)  # open, before the lunchtime peak

    def typical(device_type: str) -> tuple[float, float]:
        hardware = next(h for h in HARDWARE if h.device_type == device_type)
        cpu, memory = [], []
        for n in range(20):
            model = TerminalModel(f"pos-{n}", LONDON, 2, random.Random(n), hardware=hardware)
            model.boot(TUESDAY + timedelta(hours=7, minutes=30))
            fields = model.sample(noon, timedelta(minutes=5))[0]
            cpu.append(fields["cpu_percent"])
            memory.append(fields["memory_percent"])
        return fmean(cpu), fmean(memory)

    old, middle, new = (typical(h.device_type) for h in HARDWARE)
    assert old[0] > middle[0] > new[0]
    assert old[1] > middle[1] + 5 > new[1] + 10


def test_noise_is_autocorrelated_not_white() -> None:
    model = TerminalModel("pos-1", LONDON, 2, random.Random(4))
    # Closed at night: load is 0, so what moves is the noise alone.
    night = TUESDAY.replace(hour=1)
    cpu = [s["cpu_percent"] for _, s in day_of_samples(model, night, timedelta(minutes=1), 5)]
    mean = fmean(cpu)
    deviations = [value - mean for value in cpu]
    lag_one = sum(a * b for a, b in zip(deviations, deviations[1:], strict=False))
    assert lag_one / sum(d * d for d in deviations) > 0.6  # white noise would give ~0


def test_settlement_raises_cpu_for_minutes_at_closing_and_is_labelled() -> None:
    model = TerminalModel("pos-1", LONDON, 2, random.Random(9))
    model.boot(TUESDAY + timedelta(hours=7, minutes=30))
    (settlement,) = [
        e
        for e in model.benign_events(TUESDAY, TUESDAY + timedelta(days=1))
        if e.kind is BenignKind.settlement
    ]
    assert settlement.label()["fault"] == "benign_settlement"
    closing = TUESDAY.replace(hour=21)  # the weekday's close, 21:00 local (UTC in November)
    assert closing <= settlement.start < closing + timedelta(minutes=5)
    assert timedelta(minutes=4) <= settlement.end - settlement.start <= timedelta(minutes=12)

    rows = day_of_samples(model, TUESDAY.replace(hour=19), timedelta(minutes=1), 2.5)
    during = [s["cpu_percent"] for t, s in rows if settlement.active_at(t)]
    before = [s["cpu_percent"] for t, s in rows if t < closing - timedelta(minutes=30)]
    assert len(during) >= 4
    assert min(during) > 88
    assert fmean(during) > fmean(before) + 25


def test_a_slow_leak_climbs_steadily_to_the_crash_without_a_step() -> None:
    model = TerminalModel("pos-1", LONDON, 2, random.Random(2))
    opening = TUESDAY.replace(hour=8)
    model.boot(opening - timedelta(minutes=30))
    planner = FaultPlanner(random.Random(1), rate_per_day=1)
    leak = planner.plan("pos-1", "store-lon", FaultKind.memory_leak_crash, opening)
    assert leak.end - leak.start >= timedelta(hours=3)  # a slow leak, over hours
    step = timedelta(minutes=5)
    memory = []
    moment = leak.start
    while moment < leak.crash_at:
        effects = leak.effects_at(moment, base_memory=model.base_memory, base_disk=0)
        memory.append(model.sample(moment, step, effects)[0]["memory_percent"])
        moment += step
    assert max(abs(b - a) for a, b in zip(memory, memory[1:], strict=False)) < 5
    first_half_hour = memory[:6]
    assert max(first_half_hour) < model.base_memory + 20  # no alarm to a threshold early on
    assert memory[-1] >= 95
    assert leak.label()["details"]["crash_at"] == leak.crash_at.isoformat()


def test_the_rule_thresholds_make_one_episode_per_run_over_a_threshold() -> None:
    at = TUESDAY
    samples = [
        ("pos-1", at + timedelta(minutes=n), {"cpu_percent": value})
        for n, value in enumerate((40, 95, 97, 40, 92))
    ]
    episodes = threshold_episodes(samples)
    assert [(e.metric, e.started_at, e.ended_at) for e in episodes] == [
        ("cpu", at + timedelta(minutes=1), at + timedelta(minutes=3)),
        ("cpu", at + timedelta(minutes=4), at + timedelta(minutes=4)),
    ]


async def test_a_healthy_day_shows_benign_events_and_fools_the_rule_thresholds(
    database_url: str, tmp_path: Path
) -> None:
    labels_file = tmp_path / "labels.csv"
    engine = create_engine(database_url)
    config = BackfillConfig(
        days=1, sites=2, devices=6, interval_minutes=1, fault_rate=0, seed=5,
        labels=labels_file, end=SUNDAY_EVENING,
    )  # fmt: skip
    await run_backfill(engine, config)
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(
                    DeviceMetrics.device_id,
                    DeviceMetrics.timestamp,
                    DeviceMetrics.cpu_percent,
                    DeviceMetrics.memory_percent,
                    DeviceMetrics.disk_percent,
                ).order_by(DeviceMetrics.device_id, DeviceMetrics.timestamp)
            )
        ).all()
    episodes = await scan_thresholds(engine, SUNDAY_EVENING - timedelta(days=1), SUNDAY_EVENING)
    await engine.dispose()
    labels = read_labels(labels_file)
    assert labels
    assert all(label["fault"].startswith("benign_") for label in labels)  # no fault at all
    samples: dict[str, list[tuple[datetime, float, float, float]]] = {}
    for device_id, moment, cpu, memory, disk in rows:
        samples.setdefault(device_id, []).append((moment, cpu, memory, disk))

    def window(label: dict[str, str], key: str = "start", end: str = "end") -> list[tuple]:
        start = datetime.fromisoformat(label[key])
        stop = datetime.fromisoformat(label[end])
        return [s for s in samples[label["device_id"]] if start <= s[0] < stop]

    # Settlement: CPU above 88 % for minutes at closing.
    settlements = [label for label in labels if label["fault"] == BenignKind.settlement]
    assert len(settlements) >= 6
    for label in settlements:
        assert sum(1 for s in window(label) if s[1] > 88) >= 3

    # The firmware update in the maintenance window (first store only: every other store
    # takes it): silent for a few minutes, then a fresh memory footprint and a CPU burst.
    reboots = [label for label in labels if label["fault"] == BenignKind.firmware_reboot]
    assert {label["device_id"] for label in reboots} == {f"store-001-pos-{n}" for n in (1, 2, 3)}
    for label in reboots:
        start = datetime.fromisoformat(label["start"])
        back = datetime.fromisoformat(label["details"]["offline_until"])
        assert not [s for s in samples[label["device_id"]] if start <= s[0] < back]
        after = [s for s in samples[label["device_id"]] if back <= s[0]]
        assert max(s[1] for s in after[:5]) > 85
        assert after[0][2] < fmean(s[2] for s in after[240:300]) - 3  # memory fills up again

    # Log rotation: disk use drops.
    rotations = [label for label in labels if label["fault"] == BenignKind.log_rotation]
    assert rotations
    for label in rotations:
        start = datetime.fromisoformat(label["start"])
        device = samples[label["device_id"]]
        before = [s[3] for s in device if start - timedelta(minutes=10) <= s[0] < start]
        after = [s[3] for s in device if start <= s[0] < start + timedelta(minutes=10)]
        assert fmean(after) < fmean(before)

    # The spec's thresholds cry wolf on a day without a single fault, settlements among them.
    assert len(episodes) >= len(samples)
    on_settlement = [
        e
        for e in episodes
        for label in settlements
        if e.metric == "cpu"
        and e.device_id == label["device_id"]
        and datetime.fromisoformat(label["start"]) - timedelta(minutes=1)
        <= e.started_at
        < datetime.fromisoformat(label["end"])
    ]
    assert len(on_settlement) >= len(settlements) // 2
