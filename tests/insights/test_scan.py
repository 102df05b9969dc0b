"""The anomaly scan over noisy histories: early leak warnings, no alerts for benign events,
silence only while a site is open, and episodes stored once however often a range is scanned."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from typer.testing import CliRunner

from homepot import cli
from homepot.db import create_engine
from homepot.insights.models import Anomaly
from homepot.insights.service import ScanState, scan, single_scanner
from tests.insights.fleetdata import SCAN_DAY, Sample, add_history, create_site_with_hours

HISTORY_START = SCAN_DAY - timedelta(days=14)
DAY_END = SCAN_DAY + timedelta(days=1)
LEAK_START = SCAN_DAY + timedelta(hours=10)
CRASH = SCAN_DAY + timedelta(hours=16)
runner = CliRunner()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def episodes(engine: AsyncEngine, **filters: object) -> list[Anomaly]:
    async with AsyncSession(engine) as session:
        statement = select(Anomaly).filter_by(**filters).order_by(Anomaly.started_at)
        return list(await session.scalars(statement))


def at(hours: float) -> datetime:
    return SCAN_DAY + timedelta(hours=hours)


def leaking(moment: datetime, sample: Sample) -> Sample | None:
    """Memory climbs from its usual level to 98.5 % over six hours, then the terminal dies."""
    if moment >= CRASH:
        return None
    if moment >= LEAK_START:
        climb = (moment - LEAK_START) / (CRASH - LEAK_START)
        sample["memory_percent"] = round(57 + (98.5 - 57) * climb, 1)
    return sample


async def test_slow_memory_leak_is_flagged_with_its_projected_crossing_before_the_crash(
    engine: AsyncEngine,
) -> None:
    await create_site_with_hours(engine, "site-leak", ["pos-leak", "pos-fine"])
    await add_history(engine, "pos-leak", HISTORY_START, DAY_END, tweak=leaking)
    await add_history(engine, "pos-fine", HISTORY_START, DAY_END)

    # The server has seen the day up to 12:30, three and a half hours before the crash.
    report = await scan(engine, SCAN_DAY, at(12.5))

    assert report.skipped is None
    memory = await episodes(engine, device_id="pos-leak", metric="memory")
    assert memory, "the leak went unnoticed"
    first = memory[0]
    assert first.started_at < at(12.5)
    assert first.ended_at is None
    assert first.status == "active"
    crossing = re.search(r"reaches 98 % in ~(\d+ h(?: \d+ min)?|\d+ min)", first.explanation)
    assert crossing, first.explanation
    assert "Monday 1" in first.explanation  # compared with its usual Monday at that hour
    assert first.severity in {"warning", "critical"}
    # Nothing on the healthy terminal of the same site, nothing else on the leaking one.
    assert await episodes(engine, device_id="pos-fine") == []
    assert {row.metric for row in await episodes(engine, device_id="pos-leak")} == {"memory"}


async def test_settlement_spike_and_maintenance_reboot_raise_no_alert(engine: AsyncEngine) -> None:
    def benign(moment: datetime, sample: Sample) -> Sample | None:
        if at(19 + 50 / 60) <= moment < at(20):  # end-of-day settlement: CPU burst, 10 min
            sample["cpu_percent"] = 97.0
        if at(3) <= moment < at(3.25):  # firmware update at 03:00: the terminal reboots
            return None
        if at(3.25) <= moment < at(3.35):
            sample["cpu_percent"] = 92.0
        if at(3.25) <= moment < at(6):
            sample["memory_percent"] = 22.0  # freshly booted
        return sample

    await create_site_with_hours(engine, "site-benign", ["pos-benign"])
    await add_history(engine, "pos-benign", HISTORY_START, DAY_END, tweak=benign)

    await scan(engine, SCAN_DAY, DAY_END)

    alerts = [row for row in await episodes(engine) if not row.expected_maintenance]
    assert alerts == []


async def test_anomaly_in_the_maintenance_window_is_stored_but_marked_expected(
    engine: AsyncEngine,
) -> None:
    def busy_night(moment: datetime, sample: Sample) -> Sample | None:
        if at(2) <= moment < at(3):  # a re-index at night keeps the CPU busy for an hour
            sample["cpu_percent"] = 90.0
        return sample

    await create_site_with_hours(engine, "site-night", ["pos-night"])
    await add_history(engine, "pos-night", HISTORY_START, DAY_END, tweak=busy_night)

    await scan(engine, SCAN_DAY, DAY_END)

    [cpu] = await episodes(engine, device_id="pos-night", metric="cpu")
    assert cpu.expected_maintenance is True
    assert cpu.started_at == at(2)
    assert cpu.ended_at == at(3)


async def test_scanning_a_range_twice_or_overlapping_ranges_stores_each_episode_once(
    engine: AsyncEngine,
) -> None:
    await create_site_with_hours(engine, "site-twice", ["pos-twice", "pos-calm"])
    await add_history(engine, "pos-twice", HISTORY_START, DAY_END, tweak=leaking)
    await add_history(engine, "pos-calm", HISTORY_START, DAY_END)

    first = await scan(engine, SCAN_DAY, DAY_END)
    stored = [(r.metric, r.detector, r.started_at, r.ended_at) for r in await episodes(engine)]
    again = await scan(engine, SCAN_DAY, DAY_END)
    half = await scan(engine, at(11), at(13))

    assert first.inserted == len(stored) > 0
    assert again.inserted == half.inserted == 0
    after = [(r.metric, r.detector, r.started_at, r.ended_at) for r in await episodes(engine)]
    assert after == stored


async def test_the_server_passes_and_a_later_full_scan_agree_on_the_episodes(
    engine: AsyncEngine,
) -> None:
    await create_site_with_hours(engine, "site-live", ["pos-leaky", "pos-steady"])
    await add_history(engine, "pos-leaky", HISTORY_START, DAY_END, tweak=leaking)
    await add_history(engine, "pos-steady", HISTORY_START, DAY_END)
    state = ScanState(baseline_refresh_devices=250)

    # The server: a pass every 20 minutes over the newest bins, re-reading the last 15.
    for minutes in range(20, 24 * 60 + 1, 20):
        end = at(minutes / 60)
        await scan(engine, end - timedelta(minutes=35), end, state=state)
    live = [(r.metric, r.detector, r.started_at, r.ended_at) for r in await episodes(engine)]
    later = await scan(engine, SCAN_DAY, DAY_END)

    assert live
    assert later.inserted == 0
    assert [
        (r.metric, r.detector, r.started_at, r.ended_at) for r in await episodes(engine)
    ] == live


async def test_site_silent_while_open_is_an_episode_and_at_night_is_not(
    engine: AsyncEngine,
) -> None:
    devices = ["pos-s1", "pos-s2", "pos-s3"]

    def outages(moment: datetime, sample: Sample) -> Sample | None:
        if at(10) <= moment < at(11):  # the store's uplink is cut at 10:00 for an hour
            return None
        if at(22) <= moment < at(23.5):  # the router is switched off at night
            return None
        return sample

    def one_dead(moment: datetime, sample: Sample) -> Sample | None:
        if at(14) <= moment < at(15):
            return None
        return outages(moment, sample)

    await create_site_with_hours(engine, "site-quiet", devices)
    await add_history(engine, "pos-s1", SCAN_DAY - timedelta(hours=6), DAY_END, tweak=outages)
    await add_history(engine, "pos-s2", SCAN_DAY - timedelta(hours=6), DAY_END, tweak=outages)
    await add_history(engine, "pos-s3", SCAN_DAY - timedelta(hours=6), DAY_END, tweak=one_dead)

    await scan(engine, SCAN_DAY, DAY_END)

    reporting = await episodes(engine, metric="reporting")
    assert [(r.device_id, r.site_id, r.started_at, r.ended_at) for r in reporting] == [
        (None, "site-quiet", at(10), at(11)),
        ("pos-s3", "site-quiet", at(14), at(15)),
    ]
    assert reporting[0].severity == "critical"
    assert "while the site is open" in reporting[0].explanation


async def test_one_scan_at_a_time(engine: AsyncEngine) -> None:
    async with single_scanner(engine) as first:
        assert first is True
        report = await scan(engine, SCAN_DAY, DAY_END)
    assert report.skipped is not None
    assert "another insights scan" in report.skipped


async def test_cli_scan_reports_what_it_stored_and_adds_nothing_the_second_time(
    engine: AsyncEngine, database_url: str
) -> None:
    await create_site_with_hours(engine, "site-cli", ["pos-cli"])
    await add_history(engine, "pos-cli", HISTORY_START, DAY_END, tweak=leaking)
    arguments = ["--database-url", database_url, "insights", "scan", "--json"]
    arguments += ["--since", SCAN_DAY.isoformat(), "--until", DAY_END.isoformat()]

    # In a thread: the command runs its own event loop, as it does from a shell.
    first = await asyncio.to_thread(runner.invoke, cli.app, arguments)
    second = await asyncio.to_thread(runner.invoke, cli.app, arguments)

    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["inserted"] == len(await episodes(engine)) > 0
    assert json.loads(second.output)["inserted"] == 0
    backwards = await asyncio.to_thread(
        runner.invoke, cli.app, [*arguments[:4], "--since", "2026-11-17", "--until", "2026-11-16"]
    )
    assert backwards.exit_code == 2


def test_a_server_keeps_the_baselines_of_every_day_a_pass_reaches_into() -> None:
    """A pass's bins reach CONTEXT_BINS back, over three UTC days early in a day: a day's
    baselines dropped from the cache would make every pass read two weeks of history again."""
    from homepot.insights import detectors as det
    from homepot.insights.service import BaselineCache

    cache = BaselineCache()
    ids = ["pos-1", "pos-2"]
    today = det.bin_of(datetime.fromisoformat("2026-11-16T00:00:00+00:00"))
    first_context_bin = today + det.BINS_PER_HOUR - det.CONTEXT_BINS  # a pass at 01:00
    days = range(
        first_context_bin - first_context_bin % det.BINS_PER_DAY, today + 1, det.BINS_PER_DAY
    )
    assert len(days) == 3
    for day in days:
        cache.put(ids, day, {})
    assert all(cache.get(ids, day) is not None for day in days)
    cache.put(ids, today + det.BINS_PER_DAY, {})
    assert cache.get(ids, days[0]) is None  # older than any pass needs


async def test_a_chunks_history_is_read_a_day_per_statement(engine: AsyncEngine) -> None:
    from sqlalchemy import event

    from homepot.insights import detectors as det
    from homepot.insights.service import _load

    start = SCAN_DAY - timedelta(days=3)
    await add_history(engine, "pos-days", start, SCAN_DAY)
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "device_metrics" in statement:
            statements.append(statement)

    first_bin, end_bin = det.bin_of(start), det.bin_of(SCAN_DAY)
    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        async with AsyncSession(engine) as session:
            values, counts = await _load(session, ["pos-days"], first_bin, end_bin)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)

    assert len(statements) == 3  # three days, three statements: none reads two weeks
    assert counts.shape == (1, 3 * det.BINS_PER_DAY)
    # Every bin of the three days is there, the day boundaries included.
    assert int((counts[0] > 0).sum()) == int(counts[0].sum()) >= 3 * det.BINS_PER_DAY - 10
