"""The fleet model, pure functions shared by the live simulator and the backfill.

- :func:`site_load` — how busy a site is at a moment (0 closed ... 1 at its peak), from its
  ``site_operating_schedules`` read in the site's own time zone;
- :func:`expected_transactions` — the site's expected daily volume, spread over the day by
  that load and shared among its terminals;
- :class:`TerminalModel` — one terminal's readings: its hardware generation sets its own
  normal (older terminals run hotter, with a bigger memory footprint and slower links); CPU,
  memory and latency follow the store's traffic; noise is autocorrelated with rare bursts;
  benign events (settlement at closing, a reboot after a firmware update, log rotation) look
  alarming to a fixed threshold; a link jitters now and then without breaking (the same
  trouble that announces most network flaps); and a
  :class:`~homepot.simulation.faults.Fault` bends it all;
- :class:`SimulatedTransactions` — the same sales model as a terminal agent's transaction
  source, for an agent that runs without a POS application behind it.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from homepot.agent.agent import TransactionCounters
from homepot.simulation.faults import (
    LEAK_CRASH_PERCENT,
    NO_EFFECT,
    BenignEvent,
    BenignKind,
    Disturbance,
    Fault,
    FaultEffects,
    Trouble,
    combine,
)

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


# Weekday traffic, Monday to Friday: a quiet Monday, a busy Friday (pay day, the weekend shop).
WEEKDAY_VOLUMES = (520, 560, 600, 640, 720)


def default_week(site_number: int) -> tuple[DaySchedule, ...]:
    """A store's week: long weekdays busier towards Friday, a busy Saturday, a short Sunday
    (every third site closed). Sunday is the maintenance window.
    """
    weekdays = tuple(
        DaySchedule(
            time(8), time(21), peak_start=time(12), peak_end=time(14), expected_volume=volume
        )  # fmt: skip
        for volume in WEEKDAY_VOLUMES
    )
    saturday = DaySchedule(time(9), time(22), peak_start=time(13), peak_end=time(16),
                           expected_volume=800)  # fmt: skip
    if site_number % 3 == 2:
        sunday = DaySchedule(None, None, is_closed=True, expected_volume=0,
                             is_maintenance_window=True)  # fmt: skip
    else:
        sunday = DaySchedule(time(10), time(17), peak_start=time(13), peak_end=time(15),
                             expected_volume=300, is_maintenance_window=True)  # fmt: skip
    return (*weekdays, saturday, sunday)


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
    to 1.0 inside the peak hours, and the after-work shop (17:00-19:00, 0.65).
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
    if _AFTER_WORK[0] <= now < _AFTER_WORK[1]:
        return 0.65
    return 0.5


_AFTER_WORK = (17 * 60, 19 * 60)


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
    return _expected(site, local, interval, terminals)


def _expected(site: SiteProfile, local: datetime, interval: timedelta, terminals: int) -> float:
    day = site.day(local.weekday())
    total = _day_load_minutes(day)
    if total == 0 or terminals < 1:
        return 0.0
    load = day_load(day, local.time())
    volume = day.expected_volume * trading_factor(site.site_id, local.date())
    return volume * (load / total) * (interval.total_seconds() / 60) / terminals


@lru_cache(maxsize=8192)
def trading_factor(site_id: str, day: date) -> float:
    """This day's trade at this store against its usual (weather, promotions): 0.8 to 1.25."""
    return random.Random(f"trade/{site_id}/{day.isoformat()}").uniform(0.8, 1.25)


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


@dataclass(frozen=True)
class Hardware:
    """A hardware generation: the ranges a terminal of it draws its own normal from."""

    device_type: str
    share: float  # of the fleet
    idle_cpu: tuple[float, float]
    cpu_per_load: tuple[float, float]  # CPU points at full load
    memory: tuple[float, float]  # footprint right after boot, idle
    memory_creep_per_hour: tuple[float, float]  # fragmentation and caches, reset by a reboot
    disk: tuple[float, float]
    log_growth_per_hour: tuple[float, float]  # disk points, until the daily log rotation
    latency_ms: tuple[float, float]
    noise: float  # scales the autocorrelated noise: old boards wander more


HARDWARE = (
    Hardware("pos_g1_2016", 0.25, idle_cpu=(12, 20), cpu_per_load=(52, 60), memory=(62, 70),
             memory_creep_per_hour=(0.5, 0.9), disk=(55, 72), log_growth_per_hour=(0.1, 0.25),
             latency_ms=(35, 70), noise=1.4),
    Hardware("pos_g2_2019", 0.45, idle_cpu=(6, 12), cpu_per_load=(46, 54), memory=(44, 56),
             memory_creep_per_hour=(0.25, 0.5), disk=(35, 60), log_growth_per_hour=(0.06, 0.15),
             latency_ms=(20, 45), noise=1.0),
    Hardware("pos_g3_2023", 0.30, idle_cpu=(3, 7), cpu_per_load=(40, 46), memory=(30, 44),
             memory_creep_per_hour=(0.1, 0.25), disk=(15, 40), log_growth_per_hour=(0.03, 0.1),
             latency_ms=(12, 30), noise=0.8),
)  # fmt: skip
HARDWARE_BY_TYPE = {hardware.device_type: hardware for hardware in HARDWARE}

# Autocorrelated noise: (time constant, standard deviation) per reading.
_NOISES = {
    "cpu": (timedelta(minutes=20), 5.0),
    "memory": (timedelta(minutes=45), 1.8),
    "latency": (timedelta(minutes=15), 0.18),  # of the logarithm
    "error": (timedelta(minutes=30), 0.25),
}
# Rare one-sample bursts, per hour of reporting: a background scan pins the CPU, the shop's
# uplink stalls, a card reader throws a run of errors. None is a fault; each alarms a threshold.
_CPU_BURSTS_PER_HOUR = 0.05
_LATENCY_SPIKES_PER_HOUR = 0.12
_ERROR_BURSTS_PER_HOUR = 0.08
# Log rotation runs once a day at a time of the terminal's own (local minutes after midnight).
_ROTATION_MINUTES = (11 * 60, 16 * 60)
# A boot starts with a lean memory footprint that fills its caches over about this long.
_WARM_UP = timedelta(minutes=20)
_WARM_UP_POINTS = 8.0
FIRMWARE_REBOOT = timedelta(minutes=4)
# A link that jitters for a while and recovers (Wi-Fi interference, a busy switch port), per
# terminal and day, starting between 06:00 and 22:00 local: about as often as a network flap
# is announced by the same trouble, so jitter alone is no proof of a coming flap.
LINK_WOBBLES_PER_DAY = 0.12
_WOBBLE_LENGTH = (timedelta(minutes=15), timedelta(minutes=60))


@dataclass(frozen=True)
class _DayPlan:
    """A terminal's benign events on one local day (from a seed of its own, so the live
    simulator and the backfill agree whatever order they sample in)."""

    settlement: tuple[datetime, datetime, float] | None  # UTC start, end, CPU reached
    rotation: datetime  # UTC
    wobbles: tuple[Disturbance, ...] = ()  # the link's passing trouble that day


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
    hardware: Hardware | None = None

    def __post_init__(self) -> None:
        rng = self.rng
        if self.hardware is None:
            self.hardware = rng.choices(HARDWARE, [h.share for h in HARDWARE])[0]
        hw = self.hardware
        self.idle_cpu = self.idle_cpu or rng.uniform(*hw.idle_cpu)
        self.cpu_per_load = rng.uniform(*hw.cpu_per_load)
        # CPU points per transaction a minute: the sales themselves cost something too.
        self.cpu_per_sale = rng.uniform(6, 10)
        self.base_memory = self.base_memory or rng.uniform(*hw.memory)
        self.memory_creep = rng.uniform(*hw.memory_creep_per_hour)
        self.base_disk = self.base_disk or rng.uniform(*hw.disk)
        self.log_growth = rng.uniform(*hw.log_growth_per_hour)
        self.base_latency_ms = self.base_latency_ms or rng.uniform(*hw.latency_ms)
        self.base_error_rate = self.base_error_rate or rng.uniform(0.1, 0.8)
        self.average_ticket = self.average_ticket or rng.uniform(9, 42)
        self.rotation_minute = rng.randint(*_ROTATION_MINUTES)
        self._noise = dict.fromkeys(_NOISES, 0.0)
        self._steps: dict[float, list[tuple[str, float, float]]] = {}
        self._last: datetime | None = None
        self.booted_at: datetime | None = None
        self._migration: tuple[datetime, float] | None = None  # until, CPU
        self._days: dict[date, _DayPlan] = {}
        # Draws for the trouble of links and gateways come from a stream of their own, so that
        # every other reading of a seed stays what it was. The token differs by seed.
        self._token = hash(self.rng.getstate()[1])
        self._side = random.Random(f"side/{self._token}")
        # Trouble the driver adds (a store's slow gateway, planned for all its terminals).
        self.disturbances: list[Disturbance] = []

    @property
    def device_type(self) -> str:
        assert self.hardware is not None
        return self.hardware.device_type

    # -- the terminal's life -------------------------------------------------------------

    def boot(self, moment: datetime, *, after_update: bool = False) -> None:
        """The terminal (re)started at ``moment``: a fresh memory footprint; after a firmware
        update the new version migrates its data for a few minutes at high CPU."""
        self.booted_at = moment
        if after_update:
            minutes = self.rng.uniform(5, 12)
            self._migration = (moment + timedelta(minutes=minutes), self.rng.uniform(88, 98))

    def firmware_reboot(self, start: datetime, site_id: str) -> BenignEvent:
        """A firmware update restarts the terminal: off for a few minutes, then a boot."""
        back = start + FIRMWARE_REBOOT
        self.boot(back, after_update=True)
        assert self._migration is not None
        return BenignEvent(
            self.device_id, site_id, BenignKind.firmware_reboot, start, self._migration[0],
            {"offline_until": back.isoformat(), "cpu_percent": round(self._migration[1], 1)},
        )  # fmt: skip

    def day_plan(self, local_day: date) -> _DayPlan:
        plan = self._days.get(local_day)
        if plan is None:
            plan = self._days[local_day] = self._plan_day(local_day)
        return plan

    def _plan_day(self, local_day: date) -> _DayPlan:
        rng = random.Random(f"day/{self.device_id}/{local_day.isoformat()}")
        zone = ZoneInfo(self.site.timezone)
        day = self.site.day(local_day.weekday())
        settlement = None
        if not day.is_closed and day.close_time is not None:
            # Open past midnight: the close falls on the next calendar day.
            past_midnight = day.open_time is not None and day.close_time <= day.open_time
            close_day = local_day + timedelta(days=int(past_midnight))
            start = datetime.combine(close_day, day.close_time, zone).astimezone(UTC)
            start += timedelta(minutes=rng.uniform(0, 4))
            end = start + timedelta(minutes=rng.uniform(4, 12))
            settlement = (start, end, rng.uniform(91, 99))
        minute = self.rotation_minute
        rotation = datetime.combine(local_day, time(minute // 60, minute % 60), zone)
        return _DayPlan(settlement, rotation.astimezone(UTC), self._wobbles(local_day, zone))

    def _wobbles(self, local_day: date, zone: ZoneInfo) -> tuple[Disturbance, ...]:
        rng = random.Random(f"wobble/{self._token}/{local_day.isoformat()}")
        morning = datetime.combine(local_day, time(6), zone).astimezone(UTC)
        low, high = _WOBBLE_LENGTH
        wobbles = []
        for _ in range(poisson(rng, LINK_WOBBLES_PER_DAY)):
            start = morning + timedelta(hours=16 * rng.random())
            end = start + low + (high - low) * rng.random()
            wobbles.append(Disturbance(Trouble.link, start, end, rng.uniform(0.4, 1.0)))
        return tuple(wobbles)

    def benign_events(self, start: datetime, end: datetime) -> list[BenignEvent]:
        """The settlements and log rotations that begin in ``[start, end)``."""
        zone = ZoneInfo(self.site.timezone)
        first = start.astimezone(zone).date() - timedelta(days=1)
        last = end.astimezone(zone).date()
        events = []
        day = first
        while day <= last:
            plan = self.day_plan(day)
            if plan.settlement is not None and start <= plan.settlement[0] < end:
                begin, finish, cpu = plan.settlement
                events.append(BenignEvent(
                    self.device_id, self.site.site_id, BenignKind.settlement, begin, finish,
                    {"cpu_percent": round(cpu, 1)},
                ))  # fmt: skip
            if start <= plan.rotation < end:
                freed = self.log_growth * 24
                events.append(BenignEvent(
                    self.device_id, self.site.site_id, BenignKind.log_rotation, plan.rotation,
                    plan.rotation + timedelta(minutes=10), {"disk_points_freed": round(freed, 1)},
                ))  # fmt: skip
            day += timedelta(days=1)
        return events

    # -- readings ------------------------------------------------------------------------

    def _wander(self, elapsed: float) -> None:
        """One step of each reading's AR(1) noise: it remembers about ``tau`` of its past."""
        elapsed = float(min(round(elapsed), 6 * 3600))  # past hours, nothing is remembered
        steps = self._steps.get(elapsed)
        if steps is None:
            if len(self._steps) > 64:  # the live simulator's ticks jitter: keep a few
                self._steps.clear()
            scale = self.hardware.noise if self.hardware is not None else 1.0
            steps = self._steps[elapsed] = [
                (name, keep, scale * sigma * math.sqrt(1 - keep * keep))
                for name, (tau, sigma) in _NOISES.items()
                for keep in [math.exp(-elapsed / tau.total_seconds())]
            ]
        gauss, noise = self.rng.gauss, self._noise
        for name, keep, spread in steps:
            noise[name] = noise[name] * keep + spread * gauss()

    def effects_of(
        self, fault: Fault | None, moment: datetime, *, simulated: datetime | None = None
    ) -> FaultEffects:
        """How ``fault`` (or its precursor) and any passing trouble of the link or the gateway
        bend this terminal's readings at ``moment`` (``NO_EFFECT`` when nothing does).

        ``simulated``: the moment on the simulated clock, when it runs faster than ``moment``'s
        (the live simulator's ``--speed``); the terminal's own trouble follows that clock."""
        effects = NO_EFFECT
        if fault is not None:
            effects = fault.effects_at(
                moment, base_memory=self.base_memory, base_disk=self.base_disk
            )
        clock = simulated or moment
        local_day = clock.astimezone(ZoneInfo(self.site.timezone)).date()
        for disturbance in (*self.day_plan(local_day).wobbles, *self.disturbances):
            if disturbance.start <= clock < disturbance.end:
                effects = combine(effects, disturbance.effects_at(clock))
        return effects

    def sample(
        self, moment: datetime, interval: timedelta, effects: FaultEffects = NO_EFFECT
    ) -> tuple[dict[str, Any], int]:
        """The metric fields of a sample covering ``interval`` up to ``moment``, and the
        number of card payments that timed out at the gateway in it."""
        rng = self.rng
        local = moment.astimezone(ZoneInfo(self.site.timezone))
        day = self.site.day(local.weekday())
        load = day_load(day, local.time())
        count = poisson(rng, _expected(self.site, local, interval, self.terminals_at_site))
        timeouts = 0
        if effects.payment_timeout_share and count:
            card_payments = sum(rng.random() < 0.7 for _ in range(count))
            timeouts = sum(
                rng.random() < effects.payment_timeout_share for _ in range(card_payments)
            )
        elapsed = (moment - self._last).total_seconds() if self._last is not None else 86_400.0
        if elapsed > 0:
            self._wander(elapsed)
            self._last = moment
        hours = interval.total_seconds() / 3600
        minutes = interval.total_seconds() / 60

        sales_per_minute = count / minutes if minutes else 0.0
        cpu = self.idle_cpu + self.cpu_per_load * load + self.cpu_per_sale * sales_per_minute
        cpu += self._noise["cpu"] + rng.gauss(0, 1.5)
        plan = self.day_plan(local.date())
        previous = self.day_plan(local.date() - timedelta(days=1))
        for settlement in (plan.settlement, previous.settlement):
            if settlement is not None and settlement[0] <= moment < settlement[1]:
                cpu = max(cpu, settlement[2] + rng.gauss(0, 1))
        if self._migration is not None and moment < self._migration[0]:
            cpu = max(cpu, self._migration[1] + rng.gauss(0, 1.5))
        if rng.random() < _CPU_BURSTS_PER_HOUR * hours:
            cpu = max(cpu, rng.uniform(88, 99.5))

        up = (moment - self.booted_at) if self.booted_at is not None else timedelta(hours=6)
        up = max(up, timedelta(0))
        memory = self.base_memory + 10 * load + self.memory_creep * up.total_seconds() / 3600
        memory -= _WARM_UP_POINTS * math.exp(-(up / _WARM_UP))
        memory += self._noise["memory"] + rng.gauss(0, 0.4)
        if effects.memory_leak:
            memory += (LEAK_CRASH_PERCENT - memory) * effects.memory_leak

        since_rotation = (moment - plan.rotation).total_seconds() / 3600 % 24
        disk = self.base_disk + self.log_growth * since_rotation + rng.gauss(0, 0.03)
        if effects.disk_percent is not None:
            disk = max(disk, effects.disk_percent)

        latency = (
            self.base_latency_ms
            * (1 + 0.6 * load)
            * effects.latency_factor
            * math.exp(self._noise["latency"])
            * rng.lognormvariate(0, 0.1)
        )
        if rng.random() < _LATENCY_SPIKES_PER_HOUR * hours:
            latency *= rng.uniform(4, 9)
        if effects.latency_jitter:
            latency *= self._side.lognormvariate(0, effects.latency_jitter)
        error_rate = (
            self.base_error_rate
            + effects.error_rate_points
            + abs(self._noise["error"] + rng.gauss(0, 0.1))
        )
        if rng.random() < _ERROR_BURSTS_PER_HOUR * hours:
            error_rate += rng.uniform(4, 9)
        fields: dict[str, Any] = {
            "cpu_percent": round(_clamp(cpu, 0.5, 100), 1),
            "memory_percent": round(_clamp(memory, 1, 99.8), 1),
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
