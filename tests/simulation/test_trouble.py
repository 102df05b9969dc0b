"""Trouble before a fault, and the same trouble on healthy terminals: a degrading link
jitters and retransmits before most network flaps, a store's gateway slows down before most
outages, and both happen without a fault following about as often."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median

from sqlalchemy import select

from homepot.analytics.models import ErrorLog
from homepot.db import create_engine
from homepot.simulation.backfill import BackfillConfig, run_backfill
from homepot.simulation.faults import (
    FLAP_PRECURSOR_CHANCE,
    GATEWAY_WARNING_CODE,
    LINK_WARNING_CODE,
    NO_EFFECT,
    FaultKind,
    FaultPlanner,
    Trouble,
    read_labels,
)
from homepot.simulation.gateways import plan_gateway_outage, plan_store_gateway
from homepot.simulation.model import (
    LINK_WOBBLES_PER_DAY,
    SiteProfile,
    TerminalModel,
    default_week,
)

LONDON = SiteProfile("store-lon", "Europe/London", default_week(0))
TUESDAY = datetime(2026, 11, 17, tzinfo=UTC)
STEP = timedelta(minutes=5)


def test_most_link_flaps_are_announced_by_a_degrading_link_some_are_not() -> None:
    planner = FaultPlanner(random.Random(3), rate_per_day=1)
    planned_at = TUESDAY.replace(hour=10)
    flaps = [
        planner.plan("pos-1", "store-lon", FaultKind.network_flapping, planned_at)
        for _ in range(200)
    ]
    announced = [flap for flap in flaps if flap.precursor_start < flap.start]
    assert 0.55 < len(announced) / len(flaps) < 0.85  # FLAP_PRECURSOR_CHANCE, 0.7
    assert abs(len(announced) / len(flaps) - FLAP_PRECURSOR_CHANCE) < 0.1
    for flap in flaps:
        assert flap.precursor_start == planned_at  # the first drop comes after the trouble
        assert flap.label()["start"] == flap.start.isoformat()
    flap = announced[0]
    assert timedelta(minutes=15) <= flap.start - flap.precursor_start <= timedelta(minutes=60)

    def effects(moment: datetime):  # type: ignore[no-untyped-def]
        return flap.effects_at(moment, base_memory=50, base_disk=30)

    assert effects(flap.precursor_start - STEP) is NO_EFFECT
    early = effects(flap.precursor_start + (flap.start - flap.precursor_start) * 0.2)
    late = effects(flap.start - timedelta(seconds=1))
    assert 0 < early.latency_jitter < late.latency_jitter  # the link degrades: rising
    assert 0 < early.link_warnings_per_hour < late.link_warnings_per_hour
    assert early.reachable
    assert late.reachable
    assert not flap.active_at(flap.start - STEP)
    assert effects(flap.start).latency_factor > 1  # the fault itself from its start
    silent = next(flap for flap in flaps if flap.precursor_start == flap.start)
    assert silent.effects_at(planned_at - STEP, base_memory=50, base_disk=30) is NO_EFFECT


def test_healthy_terminals_jitter_too_about_as_often_as_flaps_are_announced() -> None:
    days = 30
    wobbles = []
    for number in range(40):
        model = TerminalModel(f"pos-{number}", LONDON, 2, random.Random(f"7/pos-{number}"))
        for day in range(days):
            wobbles += model.day_plan((TUESDAY + timedelta(days=day)).date()).wobbles
    per_day = len(wobbles) / (40 * days)
    assert abs(per_day - LINK_WOBBLES_PER_DAY) < 0.04
    assert all(w.trouble is Trouble.link for w in wobbles)

    model = TerminalModel("pos-x", LONDON, 2, random.Random("7/pos-x"))
    wobble = next(
        w
        for day in range(days)
        for w in model.day_plan((TUESDAY + timedelta(days=day)).date()).wobbles
        if w.strength > 0.7 and w.end - w.start >= timedelta(minutes=40)
    )
    # No fault at all, yet the same kind of trouble as a flap's precursor.
    assert model.effects_of(None, wobble.end - timedelta(minutes=1)).latency_jitter > 0.2
    assert model.effects_of(None, wobble.end + timedelta(minutes=1)) is NO_EFFECT

    def log_steps(start: datetime, end: datetime) -> list[float]:
        readings = []
        moment = start
        while moment < end:
            effects = model.effects_of(None, moment)
            readings.append(model.sample(moment, STEP, effects)[0]["network_latency_ms"])
            moment += STEP
        return [abs(math.log(b / a)) for a, b in zip(readings, readings[1:], strict=False)]

    model.boot(wobble.start - timedelta(hours=4))
    calm = log_steps(wobble.start - timedelta(hours=3), wobble.start)
    shaky = log_steps(wobble.start + (wobble.end - wobble.start) / 2, wobble.end)
    assert median(shaky) > 1.5 * median(calm)


def test_a_gateway_outage_reaches_most_of_the_store_minutes_apart_after_slow_answers() -> None:
    devices = [f"store-1-pos-{n}" for n in range(1, 9)]
    start = TUESDAY.replace(hour=12)
    outages = [
        plan_gateway_outage(random.Random(seed), "store-1", devices, start, "acquirer-eu")
        for seed in range(60)
    ]
    reached = [len(faults) / len(devices) for faults in outages]
    assert 0.65 < sum(reached) / len(reached) < 0.95
    announced = [faults for faults in outages if faults[0].precursor_start < faults[0].start]
    assert 0.5 < len(announced) / len(outages) < 0.9
    faults = next(f for f in announced if len(f) >= 4)
    assert len({fault.start for fault in faults}) == len(faults)  # not all at one minute
    assert all(start <= fault.start <= start + timedelta(minutes=20) for fault in faults)
    assert len({fault.precursor_start for fault in faults}) == 1  # the gateway slows for all
    assert {fault.kind for fault in faults} == {FaultKind.payment_gateway_timeout}
    slow = faults[0].effects_at(faults[0].start - timedelta(minutes=1), base_memory=50,
                                base_disk=30)  # fmt: skip
    assert slow.gateway_warnings_per_hour > 0
    assert not slow.payment_timeout_share

    store = plan_store_gateway(
        random.Random(5),
        "store-1",
        devices,
        start=TUESDAY,
        end=TUESDAY + timedelta(days=1000),
        step=STEP,
        open_at=lambda moment: 8 <= moment.hour < 20,
        outages_per_day=0.2,
    )
    outage_starts = {f.details["outage_start"] for fs in store.faults.values() for f in fs}
    # Slow spells without an outage come about as often as announced outages (0.7 of them).
    assert 0.5 < len(store.spells) / len(outage_starts) < 0.95
    assert 70 < len(outage_starts) < 130  # 0.2 a day open, half of each day


async def test_the_backfill_writes_the_warnings_of_trouble_before_faults_and_without(
    database_url: str, tmp_path: Path
) -> None:
    labels_file = tmp_path / "labels.csv"
    engine = create_engine(database_url)
    config = BackfillConfig(
        days=2, sites=6, devices=24, seed=5, fault_rate=1.0, labels=labels_file,
        end=datetime(2026, 11, 20, 18, 0, tzinfo=UTC), site_prefix="trouble",
        device_prefix="trouble-pos",
    )  # fmt: skip
    try:
        await run_backfill(engine, config)
        async with engine.connect() as connection:
            warnings = (
                await connection.execute(
                    select(ErrorLog.device_id, ErrorLog.timestamp, ErrorLog.error_code).where(
                        ErrorLog.severity == "warning",
                        ErrorLog.error_code.in_((LINK_WARNING_CODE, GATEWAY_WARNING_CODE)),
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    labels = [row for row in read_labels(labels_file) if not row["fault"].startswith("benign_")]
    by_device: defaultdict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for device_id, moment, code in warnings:
        by_device[device_id].append((moment.replace(tzinfo=moment.tzinfo or UTC), code))

    outages: defaultdict[str, list[dict[str, object]]] = defaultdict(list)
    for label in labels:
        if label["fault"] == FaultKind.payment_gateway_timeout.value:
            outages[label["details"]["outage_start"]].append(label)
    assert outages, "no gateway outage in two days at this rate"
    assert any(len(group) >= 2 for group in outages.values())  # a store, not one terminal
    assert all(len({g["site_id"] for g in group}) == 1 for group in outages.values())

    def warned_before(label: dict[str, object], code: str) -> bool:
        start = datetime.fromisoformat(str(label["start"]))
        lead = timedelta(seconds=float(label["details"]["precursor_seconds"]))  # type: ignore[index]
        return any(
            start - lead <= moment < start and found == code
            for moment, found in by_device[str(label["device_id"])]
        )

    announced = [
        label
        for label in labels
        if label["fault"] == FaultKind.payment_gateway_timeout.value
        and float(label["details"].get("precursor_seconds", 0)) > 1200  # type: ignore[union-attr]
    ]
    assert announced
    assert any(warned_before(label, GATEWAY_WARNING_CODE) for label in announced)
    troubled = {str(label["device_id"]) for label in labels}
    healthy_warned = [d for d in by_device if d not in troubled]
    assert healthy_warned, "healthy terminals warn now and then too"
