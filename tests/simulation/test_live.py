"""The simulated fleet: load follows each site's schedule on its own clock; faults leave labels."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from homepot.analytics.models import DeviceMetrics, ErrorLog
from homepot.auth.models import Role
from homepot.device.models import Device
from homepot.protocol.messages import JobCommand
from homepot.simulation.faults import (
    BAD_CONFIG_VERSION,
    FaultKind,
    FaultPlanner,
    LabelWriter,
    read_labels,
)
from homepot.simulation.fleet_config import SimulationConfig
from homepot.simulation.live import FleetSimulator
from homepot.simulation.model import (
    HARDWARE,
    DaySchedule,
    SimulationError,
    SiteProfile,
    TerminalModel,
    expected_transactions,
    profile_from_week,
    site_load,
    trading_factor,
)
from tests.fleet.test_end_to_end import always_open_week
from tests.helpers import create_user, db_rows, flush

WEEKDAY = DaySchedule(time(8), time(21), peak_start=time(12), peak_end=time(14),
                      expected_volume=600)  # fmt: skip
CLOSED = DaySchedule(None, None, is_closed=True, expected_volume=0)
WEEK = (WEEKDAY,) * 6 + (CLOSED,)
SYDNEY = SiteProfile("site-syd", "Australia/Sydney", WEEK)
LONDON = SiteProfile("site-lon", "Europe/London", WEEK)


def test_load_is_read_on_the_sites_own_clock() -> None:
    # Wednesday 2026-01-14 01:30 UTC is 12:30 in Sydney (AEDT, +11) and 01:30 in London.
    moment = datetime(2026, 1, 14, 1, 30, tzinfo=UTC)
    assert site_load(SYDNEY, moment) >= 0.8  # lunchtime peak
    assert site_load(LONDON, moment) == 0.0  # closed at night
    # Twelve hours later it is the other way round.
    assert site_load(SYDNEY, moment + timedelta(hours=12)) == 0.0
    assert site_load(LONDON, moment + timedelta(hours=12)) >= 0.8


def test_daylight_saving_moves_opening_time_in_utc() -> None:
    # 21:15 UTC is 08:15 in Sydney in January (+11) but 07:15 in July (+10): open vs closed.
    january = datetime(2026, 1, 13, 21, 15, tzinfo=UTC)  # Wednesday in Sydney
    july = datetime(2026, 7, 14, 21, 15, tzinfo=UTC)  # Wednesday in Sydney
    assert site_load(SYDNEY, january) > 0
    assert site_load(SYDNEY, july) == 0.0


def test_closed_day_sells_nothing_and_a_day_sells_its_expected_volume() -> None:
    sunday_noon = datetime(2026, 1, 18, 1, 0, tzinfo=UTC)  # 12:00 Sunday in Sydney
    assert expected_transactions(SYDNEY, sunday_noon, timedelta(minutes=5), 2) == 0

    step = timedelta(minutes=5)
    start = datetime(2026, 1, 13, 13, 0, tzinfo=UTC)  # Wednesday 00:00 in Sydney
    total = sum(expected_transactions(SYDNEY, start + step * n, step, 2) for n in range(288))
    # The day's own trade (weather, promotions) moves its volume by -20 % to +25 %.
    factor = trading_factor("site-syd", date(2026, 1, 14))
    assert 0.8 <= factor <= 1.25
    assert total == pytest.approx(600 * factor / 2, rel=0.02)
    peak = expected_transactions(SYDNEY, datetime(2026, 1, 14, 2, 0, tzinfo=UTC), step, 1)
    ordinary = expected_transactions(SYDNEY, datetime(2026, 1, 13, 23, 0, tzinfo=UTC), step, 1)
    assert peak > 1.5 * ordinary > 0


def test_cpu_and_latency_follow_load() -> None:
    model = TerminalModel("pos-1", SYDNEY, 1, random.Random(1))
    peak = datetime(2026, 1, 14, 2, 0, tzinfo=UTC)
    night = datetime(2026, 1, 14, 14, 0, tzinfo=UTC)
    at_peak = [model.sample(peak, timedelta(minutes=5))[0] for _ in range(50)]
    at_night = [model.sample(night, timedelta(minutes=5))[0] for _ in range(50)]

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return sum(row[key] for row in rows) / len(rows)

    assert mean(at_peak, "cpu_percent") > mean(at_night, "cpu_percent") + 30
    assert mean(at_peak, "network_latency_ms") > mean(at_night, "network_latency_ms")
    assert mean(at_peak, "transaction_count") > 5
    assert mean(at_night, "transaction_count") == 0


def test_a_schedule_from_the_api_becomes_a_profile() -> None:
    week = {
        "site_id": "site-x",
        "timezone": "America/New_York",
        "days": [
            {"day_of_week": 0, "open_time": "06:00:00", "close_time": "23:00:00",
             "peak_hours_start": "17:00:00", "peak_hours_end": "19:00:00",
             "expected_transaction_volume": 900, "is_closed": False},
            {"day_of_week": 6, "is_closed": True, "open_time": None, "close_time": None},
        ],
    }  # fmt: skip
    profile = profile_from_week(week)
    assert profile.timezone == "America/New_York"
    assert profile.day(0).open_time == time(6)
    assert profile.day(0).expected_volume == 900
    assert profile.day(6).is_closed
    monday_6pm_new_york = datetime(2026, 3, 2, 23, 0, tzinfo=UTC)
    assert site_load(profile, monday_6pm_new_york) >= 0.8


def test_fault_effects_follow_their_story(tmp_path: Path) -> None:
    planner = FaultPlanner(random.Random(5), rate_per_day=1, min_silence=timedelta(seconds=100))
    start = datetime(2026, 1, 14, 1, 0, tzinfo=UTC)
    leak = planner.plan("pos-1", "site-syd", FaultKind.memory_leak_crash, start)
    early = leak.effects_at(start + timedelta(minutes=1), base_memory=40, base_disk=50)
    silence = timedelta(seconds=leak.details["silence_seconds"])
    later = leak.effects_at(
        leak.end - silence - timedelta(seconds=30), base_memory=40, base_disk=50
    )
    assert 0 < early.memory_leak < later.memory_leak < 1
    crashed = leak.effects_at(leak.end - timedelta(seconds=10), base_memory=40, base_disk=50)
    assert crashed.crashed
    assert not crashed.reachable
    assert not leak.active_at(leak.end)

    flapping = planner.plan("pos-1", "site-syd", FaultKind.network_flapping, start)
    reachable = {
        flapping.effects_at(start + timedelta(seconds=s), base_memory=40, base_disk=50).reachable
        for s in range(0, 600, 10)
    }
    assert reachable == {True, False}

    bad = planner.plan("pos-1", "site-syd", FaultKind.bad_config_version, start)
    effects = bad.effects_at(start, base_memory=40, base_disk=50)
    assert effects.config_version == BAD_CONFIG_VERSION
    assert effects.error_rate_points >= 4

    labels = LabelWriter(tmp_path / "labels.csv")
    for fault in (leak, flapping, bad):
        labels.write(fault)
    labels.close()
    rows = read_labels(tmp_path / "labels.csv")
    assert [(r["device_id"], r["fault"]) for r in rows] == [
        ("pos-1", "memory_leak_crash"),
        ("pos-1", "network_flapping"),
        ("pos-1", "bad_config_version"),
    ]
    assert rows[0]["end"] == leak.end.isoformat()


async def test_simulated_terminals_report_and_their_faults_are_labelled(
    app: FastAPI, tmp_path: Path
) -> None:
    operator = await create_user(app, role=Role.admin)
    labels = tmp_path / "labels.jsonl"
    config = SimulationConfig(
        server_url="http://testserver",
        sites=2,
        devices=4,
        fault_rate=50_000,  # a fault on every terminal at its first tick
        labels=labels,
        seed=11,
        admin_email=operator["email"],
        admin_password=operator["password"],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        simulator = FleetSimulator(config, http)
        await simulator.setup()
        assert simulator.stats.registered == 4
        for terminal in simulator.terminals:
            await simulator.report(terminal)

    # Benign events (a settlement at some site's closing time) may be labelled too, depending
    # on the hour the test runs: the injected faults are the ones to check.
    written = [label for label in read_labels(labels) if not label["fault"].startswith("benign_")]
    assert sorted(label["device_id"] for label in written) == [
        "sim-pos-0001",
        "sim-pos-0002",
        "sim-pos-0003",
        "sim-pos-0004",
    ]
    assert {label["fault"] for label in written} <= {kind.value for kind in FaultKind}
    await flush(app)
    # A terminal whose fault keeps it off the network keeps its sample for later; the others
    # have theirs stored.
    stored = {row.device_id for row in await db_rows(app, DeviceMetrics)}
    reachable = {t.device_id for t in simulator.terminals if not t.backlog}
    assert stored == reachable


async def one_open_site(
    app: FastAPI, tmp_path: Path, *, devices: int, seed: int, **options: Any
) -> SimulationConfig:
    """A fleet of one always-open site, set up by a fresh admin, with no random faults."""
    operator = await create_user(app, role=Role.admin)
    return SimulationConfig(
        server_url="http://testserver",
        sites=1,
        devices=devices,
        fault_rate=0,
        schedules=always_open_week(["sim-site-001"], tmp_path / "week.json"),
        seed=seed,
        admin_email=operator["email"],
        admin_password=operator["password"],
        **options,
    )


async def test_a_payment_gateway_timeout_is_reported_by_the_terminal(
    app: FastAPI, tmp_path: Path
) -> None:
    config = await one_open_site(
        app, tmp_path, devices=2, seed=3, opening_faults=(FaultKind.payment_gateway_timeout,)
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        # No in-process shortcut: the terminal reports over the protocol, as against a remote
        # server.
        simulator = FleetSimulator(config, http, use_mqtt=False)
        await simulator.setup()
        (faulted,) = [t for t in simulator.terminals if t.fault is not None]
        assert faulted.fault is not None
        faulted.fault.details["timeout_share"] = 1.0
        for _ in range(5):
            for terminal in simulator.terminals:
                await simulator.report(terminal)

    await flush(app)
    rows = await db_rows(app, ErrorLog, error_code="EXT_SERVICE_TIMEOUT")
    assert rows
    assert {row.device_id for row in rows} == {faulted.device_id}
    assert {(row.category, row.severity) for row in rows} == {("external_service", "critical")}
    gateway = faulted.fault.details["gateway"]
    assert all(gateway in row.error_message for row in rows)
    assert {row.context["source"] for row in rows} == {"device"}


def test_a_fleet_needs_a_terminal_per_site() -> None:
    with pytest.raises(SimulationError, match="at least one terminal per site"):
        SimulationConfig(sites=5, devices=2).validate()


async def test_a_refused_sample_is_dropped_alone_and_the_backlog_waits_out_an_outage(
    app: FastAPI, tmp_path: Path
) -> None:
    config = await one_open_site(app, tmp_path, devices=1, seed=5)
    answer: list[httpx.Response] = []

    async def front(request: httpx.Request) -> httpx.Response:
        if answer and request.url.path.endswith(("/telemetry", "/report")):
            return answer[0]
        return await inner.handle_async_request(request)

    inner = httpx.ASGITransport(app=app)
    transport = httpx.MockTransport(front)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        simulator = FleetSimulator(config, http, use_mqtt=False)
        await simulator.setup()
        (terminal,) = simulator.terminals
        # The server is away (503, Retry-After): the samples stay for later.
        answer.append(httpx.Response(503, json={"detail": "later"}, headers={"Retry-After": "0"}))
        await simulator.report(terminal)
        await simulator.report(terminal)
        assert len(terminal.backlog) == 2
        # Back, but one sample in the backlog is one the server will never take (too old).
        answer.clear()
        poison = {**terminal.backlog[0], "event_id": "0" * 32}
        poison["timestamp"] = "2020-01-01T00:00:00+00:00"
        terminal.backlog.appendleft(poison)
        await simulator.report(terminal)

    assert not terminal.backlog
    assert (simulator.stats.samples_refused, simulator.stats.samples_sent) == (1, 3)
    await flush(app)
    assert len(await db_rows(app, DeviceMetrics, device_id=terminal.device_id)) == 3


async def test_a_firmware_update_reboots_the_terminal_and_is_labelled_benign(
    app: FastAPI, tmp_path: Path
) -> None:
    operator = await create_user(app, role=Role.admin)
    labels = tmp_path / "labels.jsonl"
    now = [datetime.now(UTC)]
    config = SimulationConfig(
        server_url="http://testserver",
        sites=1,
        devices=1,
        fault_rate=0,
        speed=1_000,
        labels=labels,
        seed=2,
        admin_email=operator["email"],
        admin_password=operator["password"],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        simulator = FleetSimulator(config, http, use_mqtt=False, clock=lambda: now[0])
        await simulator.setup()
        (terminal,) = simulator.terminals
        command = JobCommand(
            execution_id=1, job_id="job-fw", job_type="firmware_update",
            payload={"version": "2.7.1"}, timeout_seconds=300, attempt=0, issued_at=now[0],
        )  # fmt: skip
        await simulator._execute(terminal, command)
        assert simulator.stats.jobs_succeeded == 1
        await simulator.report(terminal)  # still restarting: nothing to say
        assert not terminal.backlog
        now[0] += timedelta(seconds=1)  # 4 simulated minutes later (speed 1,000) it is back
        await simulator.report(terminal)

    (reboot,) = [
        label for label in read_labels(labels) if label["fault"] == "benign_firmware_reboot"
    ]
    assert reboot["device_id"] == terminal.device_id
    assert datetime.fromisoformat(reboot["start"]) == now[0] - timedelta(seconds=1)
    await flush(app)
    (device,) = await db_rows(app, Device)
    assert device.device_type in {hardware.device_type for hardware in HARDWARE}
    assert device.firmware_version == "2.7.1"
    assert len(await db_rows(app, DeviceMetrics)) == 1
