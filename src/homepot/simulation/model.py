"""The fleet model, pure functions shared by the live simulator and the backfill.

- :func:`site_load` — how busy a site is at a moment (0 closed ... 1 at its peak), from its
  ``site_operating_schedules`` read in the site's own time zone;
- :func:`expected_transactions` — the site's expected daily volume, spread over the day by
  that load and shared among its terminals;
- :class:`TerminalModel` — one terminal's readings: CPU, memory and latency follow load, and
  a :class:`~homepot.simulation.faults.Fault` bends them;
- :class:`SimulatedTransactions` — the same sales model as a terminal agent's transaction
  source, for an agent that runs without a POS application behind it.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from homepot.agent.agent import TransactionCounters
from homepot.simulation.faults import NO_EFFECT, Fault, FaultEffects

SITE_TIMEZONES = (
    "Europe/London",
    "America/New_York",
    "Australia/Sydney",
    "Europe/Berlin",
    "America/Los_Angeles",
    "Asia/Tokyo",
)


class SimulationError(Exception):
    """The simulation cannot start; the message says why and what to change."""


# --- the load model (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class DaySchedule:
    """One weekday of a site, local times (as in ``site_operating_schedules``)."""

    open_time: time | None
    close_time: time | None
    is_closed: bool = False
    peak_start: time | None = None
    peak_end: time | None = None
    expected_volume: int = 500
    is_maintenance_window: bool = False

    def is_open_at(self, moment: time) -> bool:
        if self.is_closed or self.open_time is None or self.close_time is None:
            return False
        if self.open_time < self.close_time:
            return self.open_time <= moment < self.close_time
        return moment >= self.open_time or moment < self.close_time  # open past midnight


@dataclass(frozen=True)
class SiteProfile:
    site_id: str
    timezone: str
    days: tuple[DaySchedule, ...]  # index 0 = Monday ... 6 = Sunday

    def day(self, weekday: int) -> DaySchedule:
        return self.days[weekday]


def default_week(site_number: int) -> tuple[DaySchedule, ...]:
    """A store's week: long weekdays, a busy Saturday, a short Sunday (every third site closed).

    Sunday is the maintenance window.
    """
    weekday = DaySchedule(time(8), time(21), peak_start=time(12), peak_end=time(14),
                          expected_volume=600)  # fmt: skip
    saturday = DaySchedule(time(9), time(22), peak_start=time(13), peak_end=time(16),
                           expected_volume=800)  # fmt: skip
    if site_number % 3 == 2:
        sunday = DaySchedule(None, None, is_closed=True, expected_volume=0,
                             is_maintenance_window=True)  # fmt: skip
    else:
        sunday = DaySchedule(time(10), time(17), peak_start=time(13), peak_end=time(15),
                             expected_volume=300, is_maintenance_window=True)  # fmt: skip
    return (weekday,) * 5 + (saturday, sunday)


def site_ids(site_prefix: str, sites: int) -> list[str]:
    """The simulated sites' ids: ``<prefix>-001``, ``<prefix>-002``, ..."""
    return [f"{site_prefix}-{number + 1:03d}" for number in range(sites)]


def deal_terminals(sites: list[str], devices: int, device_prefix: str) -> list[tuple[str, str]]:
    """(device_id, site_id) of ``devices`` terminals dealt round-robin over ``sites``.

    The live simulator and the backfill name and place terminals alike, so that a history
    backfilled for a fleet belongs to the very terminals that then run live.
    """
    return [
        (f"{device_prefix}-{index + 1:04d}", sites[index % len(sites)]) for index in range(devices)
    ]


def _minutes(moment: time) -> float:
    return moment.hour * 60 + moment.minute + moment.second / 60


def _in_window(now: float, start: float, end: float) -> bool:
    return start <= now < end if start < end else (now >= start or now < end)


def day_load(day: DaySchedule, local: time) -> float:
    """Busy-ness 0..1 of a site at a local time of day under one day's schedule.

    Closed: 0. Open: a quiet first and last half hour (0.25), a base of 0.5, a smooth rise
    to 1.0 inside the peak hours.
    """
    if not day.is_open_at(local):
        return 0.0
    assert day.open_time is not None
    assert day.close_time is not None
    now = _minutes(local)
    opened = (now - _minutes(day.open_time)) % 1440
    closing = (_minutes(day.close_time) - now) % 1440
    if opened < 30 or closing < 30:
        return 0.25
    if day.peak_start is not None and day.peak_end is not None:
        start, end = _minutes(day.peak_start), _minutes(day.peak_end)
        if _in_window(now, start, end):
            span = (end - start) % 1440 or 1440
            position = ((now - start) % 1440) / span
            return 0.8 + 0.2 * math.sin(math.pi * position)
    return 0.5


def site_load(site: SiteProfile, moment: datetime) -> float:
    """How busy ``site`` is at ``moment`` (any zone), judged on the site's local clock."""
    local = moment.astimezone(ZoneInfo(site.timezone))
    return day_load(site.day(local.weekday()), local.time())


@lru_cache(maxsize=1024)
def _day_load_minutes(day: DaySchedule) -> float:
    """The integral of :func:`day_load` over a day, in load-minutes."""
    return sum(day_load(day, time(m // 60, m % 60)) for m in range(1440))


def expected_transactions(
    site: SiteProfile, moment: datetime, interval: timedelta, terminals: int
) -> float:
    """Transactions one of ``terminals`` terminals expects in ``interval`` ending at ``moment``.

    The day's ``expected_volume`` is spread over the day in proportion to the load, so a
    peak minute sells about twice an ordinary open minute and a closed one sells nothing.
    """
    local = moment.astimezone(ZoneInfo(site.timezone))
    day = site.day(local.weekday())
    total = _day_load_minutes(day)
    if total == 0 or terminals < 1:
        return 0.0
    load = day_load(day, local.time())
    return day.expected_volume * (load / total) * (interval.total_seconds() / 60) / terminals


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth for small means, a rounded normal above 30)."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, product, count = math.exp(-mean), rng.random(), 0
    while product > limit:
        product *= rng.random()
        count += 1
    return count


@dataclass
class TerminalModel:
    """One terminal's character (its baselines) and how it reads at a moment."""

    device_id: str
    site: SiteProfile
    terminals_at_site: int
    rng: random.Random
    idle_cpu: float = 0.0
    base_memory: float = 0.0
    base_disk: float = 0.0
    base_latency_ms: float = 0.0
    base_error_rate: float = 0.0
    average_ticket: float = 0.0
    config_version: str = "2.6.0"
    firmware_version: str = "2.6.0"

    def __post_init__(self) -> None:
        rng = self.rng
        self.idle_cpu = self.idle_cpu or rng.uniform(4, 12)
        self.base_memory = self.base_memory or rng.uniform(35, 55)
        self.base_disk = self.base_disk or rng.uniform(25, 65)
        self.base_latency_ms = self.base_latency_ms or rng.uniform(15, 45)
        self.base_error_rate = self.base_error_rate or rng.uniform(0.1, 0.8)
        self.average_ticket = self.average_ticket or rng.uniform(9, 42)

    def effects_of(self, fault: Fault | None, moment: datetime) -> FaultEffects:
        """How ``fault`` bends this terminal's readings at ``moment`` (not at all without one)."""
        if fault is None:
            return NO_EFFECT
        return fault.effects_at(moment, base_memory=self.base_memory, base_disk=self.base_disk)

    def sample(
        self, moment: datetime, interval: timedelta, effects: FaultEffects = NO_EFFECT
    ) -> tuple[dict[str, Any], int]:
        """The metric fields of a sample covering ``interval`` up to ``moment``, and the
        number of card payments that timed out at the gateway in it."""
        rng = self.rng
        load = site_load(self.site, moment)
        count = poisson(
            rng, expected_transactions(self.site, moment, interval, self.terminals_at_site)
        )
        timeouts = 0
        if effects.payment_timeout_share and count:
            card_payments = sum(rng.random() < 0.7 for _ in range(count))
            timeouts = sum(
                rng.random() < effects.payment_timeout_share for _ in range(card_payments)
            )
        cpu = self.idle_cpu + 55 * load + rng.gauss(0, 3)
        memory = effects.memory_percent or self.base_memory + 12 * load + rng.gauss(0, 1.5)
        disk = effects.disk_percent or self.base_disk
        latency = (
            self.base_latency_ms
            * (1 + 0.6 * load)
            * effects.latency_factor
            * rng.lognormvariate(0, 0.15)
        )
        error_rate = self.base_error_rate + effects.error_rate_points + abs(rng.gauss(0, 0.2))
        fields: dict[str, Any] = {
            "cpu_percent": round(_clamp(cpu, 0.5, 100), 1),
            "memory_percent": round(_clamp(memory, 1, 100), 1),
            "disk_percent": round(_clamp(disk, 1, 100), 1),
            "network_latency_ms": round(latency, 1),
            "transaction_count": count,
            "transaction_volume": round(count * self.average_ticket * rng.uniform(0.8, 1.2), 2),
            "error_rate": round(_clamp(error_rate, 0, 100), 2),
            "active_connections": 1 + round(3 * load + rng.random()),
            "queue_depth": poisson(rng, 2 * load),
            "extra_metrics": {
                "site_load": round(load, 3),
                "payment_gateway_timeouts": timeouts,
                "config_version": effects.config_version or self.config_version,
            },
        }
        return fields, timeouts


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


# --- schedules from the API or a file ------------------------------------------------------


def profile_from_week(week: dict[str, Any], site_number: int = 0) -> SiteProfile:
    """A profile from ``GET /api/v1/sites/{id}/schedules`` (days missing: the default week)."""
    days = list(default_week(site_number))
    for entry in week.get("days", []):
        days[int(entry["day_of_week"])] = DaySchedule(
            open_time=_time(entry.get("open_time")),
            close_time=_time(entry.get("close_time")),
            is_closed=bool(entry.get("is_closed")),
            peak_start=_time(entry.get("peak_hours_start")),
            peak_end=_time(entry.get("peak_hours_end")),
            expected_volume=int(entry.get("expected_transaction_volume") or 0),
            is_maintenance_window=bool(entry.get("is_maintenance_window")),
        )
    return SiteProfile(week["site_id"], week.get("timezone") or "UTC", tuple(days))


def _time(value: str | None) -> time | None:
    return time.fromisoformat(value) if value else None


def week_body(days: tuple[DaySchedule, ...]) -> list[dict[str, Any]]:
    """The ``PUT /api/v1/sites/{id}/schedules`` body for a week."""

    def clock(value: time | None) -> str | None:
        return value.isoformat("minutes") if value else None

    return [
        {
            "day_of_week": number,
            "open_time": clock(day.open_time),
            "close_time": clock(day.close_time),
            "is_closed": day.is_closed,
            "is_maintenance_window": day.is_maintenance_window,
            "expected_transaction_volume": day.expected_volume,
            "peak_hours_start": clock(day.peak_start),
            "peak_hours_end": clock(day.peak_end),
            "notes": "simulated site",
        }
        for number, day in enumerate(days)
    ]


def load_schedule_file(path: Path) -> dict[str, SiteProfile]:
    """Site profiles from a JSON file: a list of weeks as ``GET .../schedules`` returns them."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SimulationError(f"cannot read the schedule file {path}: {exc}") from exc
    if isinstance(data, dict):
        data = [data]
    try:
        profiles = [profile_from_week(week, n) for n, week in enumerate(data)]
    except (KeyError, TypeError, ValueError) as exc:
        raise SimulationError(
            f"{path}: not a list of weekly schedules (site_id, timezone, days[]): {exc}"
        ) from exc
    return {profile.site_id: profile for profile in profiles}


class SimulatedTransactions:
    """Sales that follow a typical store day in the terminal's local time zone."""

    def __init__(self, timezone: str = "UTC", seed: int | None = None) -> None:
        self.site = SiteProfile("local", timezone, default_week(0))
        self.rng = random.Random(seed)

    def collect(self, moment: datetime, interval: timedelta) -> TransactionCounters:
        count = poisson(self.rng, expected_transactions(self.site, moment, interval, 2))
        return TransactionCounters(
            transaction_count=count,
            transaction_volume=round(count * self.rng.uniform(9, 42), 2),
            error_rate=round(abs(self.rng.gauss(0.4, 0.2)), 2),
            active_connections=1 + min(count, 3),
            queue_depth=poisson(self.rng, min(count, 10) / 5),
        )
