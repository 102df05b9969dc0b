"""Fault scenarios for simulated terminals, and the ground-truth labels file they leave.

A :class:`Fault` is planned in full when it is injected (device, kind, start, end), so the
label is written at once and stays true even if the simulation stops early. What a fault
does to a terminal at a given moment is :meth:`Fault.effects_at`, a pure function of time,
shared by the live simulator and the backfill. Faults start subtle, as real ones do:

- ``memory_leak_crash``: a slow leak over hours adds a little memory every minute on top of
  the terminal's normal (noisy) reading, until it reaches ~98.5 % and the terminal crashes
  (``details.crash_at``); it stays silent for the last part of the fault (longer than the
  server's offline timeout), then reboots.
- ``disk_filling``: the disk fills in steps (a journal export, a cache download) of uneven
  size, reaching 99 % at ``details.full_at``; above 95 % receipts fail and the error rate
  rises, until someone frees space at the fault's end.
- ``network_flapping``: the link drops and returns every couple of minutes; latency soars
  while it is up. Messages made while it is down wait in the device's retry queue. Most
  flaps (``FLAP_PRECURSOR_CHANCE``) are announced by a degrading link for 15–60 minutes
  before the first drop: latency jitters more and more, and retransmissions raise warnings.
- ``payment_gateway_timeout``: a share of card payments time out at the acquirer; each is
  reported by the terminal (server side: error_logs external_service / critical /
  ``EXT_SERVICE_TIMEOUT``). The backfill plans them per store (:mod:`.gateways`):
  the gateway is upstream, so most terminals of the store lose it, minutes apart, and most
  outages start with slow answers (warnings) for 10–40 minutes.

A fault's label ``start`` is its first failure (the first drop, the first timeout); a
precursor runs before it (``details.precursor_seconds``). Healthy terminals have the same
trouble without a fault following (:class:`Disturbance`), about as often, so a threshold on
jitter or warnings is wrong more often than right.
- ``bad_config_version``: a faulty configuration version raises the error rate until it is
  replaced.
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

PAYMENT_TIMEOUT_CODE = "EXT_SERVICE_TIMEOUT"
BAD_CONFIG_VERSION = "2.6.1-rc3"
LABEL_FIELDS = ("device_id", "site_id", "fault", "start", "end", "details")


class FaultKind(StrEnum):
    memory_leak_crash = "memory_leak_crash"
    disk_filling = "disk_filling"
    network_flapping = "network_flapping"
    payment_gateway_timeout = "payment_gateway_timeout"
    bad_config_version = "bad_config_version"


class BenignKind(StrEnum):
    """Normal events that look alarming to a fixed threshold; labelled so that a detector
    firing on them is counted as wrong."""

    settlement = "benign_settlement"  # end-of-day settlement: CPU high for minutes at closing
    firmware_reboot = "benign_firmware_reboot"  # update in the maintenance window: off, then
    # a fresh memory footprint and a CPU burst while the new version migrates its data
    log_rotation = "benign_log_rotation"  # yesterday's logs compressed: disk use drops


# Typical lengths in simulated time: (shortest, longest).
FAULT_DURATIONS: dict[FaultKind, tuple[timedelta, timedelta]] = {
    FaultKind.memory_leak_crash: (timedelta(hours=3), timedelta(hours=9)),
    FaultKind.disk_filling: (timedelta(hours=3), timedelta(hours=10)),
    FaultKind.network_flapping: (timedelta(minutes=10), timedelta(minutes=45)),
    FaultKind.payment_gateway_timeout: (timedelta(minutes=5), timedelta(minutes=40)),
    FaultKind.bad_config_version: (timedelta(minutes=30), timedelta(hours=4)),
}
# The shortest leak worth planning: shorter ones are not the slow leak this fault stands for.
MIN_LEAK = timedelta(hours=1, minutes=30)
# Silent time after a crash before the terminal is back: well past the 90 s offline timeout.
CRASH_SILENCE = timedelta(minutes=5)
FLAP_PERIOD = timedelta(minutes=2)
LEAK_CRASH_PERCENT = 98.5
DISK_FULL_PERCENT = 99.2
# The disk is full this far into a disk_filling fault; the rest is failing receipts.
DISK_FULL_SHARE = 0.8


@dataclass(frozen=True)
class FaultEffects:
    """How a fault bends a terminal's readings at one moment."""

    # A leak: the share (0..1) of the way from the normal reading to the crash level.
    memory_leak: float = 0.0
    disk_percent: float | None = None  # a floor under the normal reading (a filling disk)
    latency_factor: float = 1.0
    error_rate_points: float = 0.0
    # Share of card payments that time out at the gateway (0..1).
    payment_timeout_share: float = 0.0
    reachable: bool = True  # False: the terminal cannot talk to the server
    crashed: bool = False  # silent: no heartbeat, no sample at all
    config_version: str | None = None
    # Trouble that may precede a fault, or pass: extra log-normal latency noise (sigma of the
    # logarithm), warnings per hour of retransmissions to the server and of slow answers from
    # the payment gateway (the terminal's echo tests and payments that take 10-30 s).
    latency_jitter: float = 0.0
    link_warnings_per_hour: float = 0.0
    gateway_warnings_per_hour: float = 0.0


NO_EFFECT = FaultEffects()
# A degrading link or a slowing gateway at full strength (strength 1, at the end of its ramp).
_JITTER_AT_FULL = 0.45
_LINK_WARNINGS_AT_FULL = 8.0
_GATEWAY_WARNINGS_AT_FULL = 10.0
FLAP_PRECURSOR_CHANCE = 0.7
GATEWAY_PRECURSOR_CHANCE = 0.7
GATEWAY_JOIN_CHANCE = 0.8
_FLAP_PRECURSOR = (timedelta(minutes=15), timedelta(minutes=60))
# Terminals of one store lose the gateway up to this long after the first one.
GATEWAY_STAGGER = timedelta(minutes=20)
GATEWAYS = ("acquirer-eu", "acquirer-us", "acquirer-apac")


# Warnings of a healthy terminal, per hour: a retransmission burst to the server, a slow
# answer from the payment gateway. Trouble raises both (FaultEffects).
HEALTHY_LINK_WARNINGS_PER_HOUR = 0.05
HEALTHY_GATEWAY_WARNINGS_PER_HOUR = 0.05
LINK_WARNING_CODE = "NET_RETRANSMIT"
GATEWAY_WARNING_CODE = "EXT_SERVICE_SLOW"


def warning_counts(rng: random.Random, effects: FaultEffects, hours: float) -> tuple[int, int]:
    """How many link and gateway warnings a terminal raises over ``hours`` (Poisson draws)."""
    link = HEALTHY_LINK_WARNINGS_PER_HOUR + effects.link_warnings_per_hour
    gateway = HEALTHY_GATEWAY_WARNINGS_PER_HOUR + effects.gateway_warnings_per_hour
    return _poisson(rng, link * hours), _poisson(rng, gateway * hours)


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: the means here are small."""
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


class Trouble(StrEnum):
    link = "link"  # a degrading link: jitter, retransmissions
    gateway = "gateway"  # a slow payment gateway: slow answers


def trouble_effects(trouble: Trouble, ramp: float, strength: float) -> FaultEffects:
    """How a link or gateway in trouble reads, ``ramp`` (0..1) of the way into it."""
    level = max(0.0, min(1.0, ramp)) * strength
    if trouble is Trouble.link:
        return FaultEffects(
            latency_jitter=_JITTER_AT_FULL * level,
            link_warnings_per_hour=_LINK_WARNINGS_AT_FULL * level,
        )
    return FaultEffects(gateway_warnings_per_hour=_GATEWAY_WARNINGS_AT_FULL * level)


def combine(effects: FaultEffects, trouble: FaultEffects) -> FaultEffects:
    """``effects`` with the stronger of its and ``trouble``'s jitter and warnings."""
    if trouble is NO_EFFECT:
        return effects
    return replace(
        effects,
        latency_jitter=max(effects.latency_jitter, trouble.latency_jitter),
        link_warnings_per_hour=max(effects.link_warnings_per_hour, trouble.link_warnings_per_hour),
        gateway_warnings_per_hour=max(
            effects.gateway_warnings_per_hour, trouble.gateway_warnings_per_hour
        ),
    )


@dataclass(frozen=True)
class Disturbance:
    """Trouble that is no fault and passes: Wi-Fi interference or a busy switch port makes a
    link jitter, an acquirer answers slowly for a while. It reads exactly like the precursor
    of a fault (the same ramp, the same strengths) and is not labelled: it is noise."""

    trouble: Trouble
    start: datetime
    end: datetime
    strength: float

    def effects_at(self, moment: datetime) -> FaultEffects:
        if not self.start <= moment < self.end:
            return NO_EFFECT
        return trouble_effects(self.trouble, (moment - self.start) / (self.end - self.start),
                               self.strength)  # fmt: skip


@dataclass(frozen=True)
class Fault:
    device_id: str
    site_id: str
    kind: FaultKind
    start: datetime
    end: datetime
    details: dict[str, Any] = field(default_factory=dict)

    def active_at(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    @property
    def precursor_start(self) -> datetime:
        """When the trouble announcing the fault begins (its ``start`` when there is none)."""
        return self.start - timedelta(seconds=float(self.details.get("precursor_seconds", 0)))

    def influences_at(self, moment: datetime) -> bool:
        """The fault or its precursor bends the terminal's readings at ``moment``."""
        return self.precursor_start <= moment < self.end

    @property
    def crash_at(self) -> datetime:
        """When a memory leak crashes the terminal (its silence fills the rest of the fault)."""
        return self.end - self._crash_silence()

    @property
    def full_at(self) -> datetime:
        """When a filling disk reaches 99 %."""
        return self.start + (self.end - self.start) * DISK_FULL_SHARE

    def effects_at(self, moment: datetime, *, base_memory: float, base_disk: float) -> FaultEffects:
        if moment < self.start:
            return self._precursor_at(moment)
        if moment >= self.end:
            return NO_EFFECT
        elapsed = moment - self.start
        match self.kind:
            case FaultKind.memory_leak_crash:
                if moment >= self.crash_at:
                    return FaultEffects(crashed=True, reachable=False)
                # A steady leak: the same megabytes a minute, so a straight climb from the
                # terminal's normal (noisy) reading to the crash level, without a step.
                climb = elapsed / (self.crash_at - self.start)
                return FaultEffects(memory_leak=climb, latency_factor=1 + 0.5 * climb)
            case FaultKind.disk_filling:
                disk = self._disk_level(moment, base_disk)
                return FaultEffects(disk_percent=disk, error_rate_points=max(0.0, disk - 95) * 2.5)
            case FaultKind.network_flapping:
                period = self._flap_period()
                down = int(elapsed / period) % 2 == 1
                return FaultEffects(reachable=not down, latency_factor=6.0)
            case FaultKind.payment_gateway_timeout:
                share = float(self.details.get("timeout_share", 0.3))
                return FaultEffects(payment_timeout_share=share, error_rate_points=share * 40)
            case FaultKind.bad_config_version:
                return FaultEffects(
                    error_rate_points=float(self.details.get("error_rate_points", 8.0)),
                    config_version=BAD_CONFIG_VERSION,
                    latency_factor=1.3,
                )

    def _precursor_at(self, moment: datetime) -> FaultEffects:
        begin = self.precursor_start
        if moment < begin or begin == self.start:
            return NO_EFFECT
        trouble = Trouble.link if self.kind is FaultKind.network_flapping else Trouble.gateway
        strength = float(self.details.get("precursor_strength", 1.0))
        return trouble_effects(trouble, (moment - begin) / (self.start - begin), strength)

    def _disk_level(self, moment: datetime, base_disk: float) -> float:
        """Steps of uneven size at the planned shares of the climb, the last one at ``full_at``."""
        steps: list[float] = self.details.get("steps") or [1.0]
        climb = (moment - self.start) / (self.full_at - self.start)
        done = sum(1 for at in steps if at <= climb)
        if done >= len(steps):
            return DISK_FULL_PERCENT
        sizes: list[float] = self.details.get("step_sizes") or [1.0] * len(steps)
        share = sum(sizes[:done]) / sum(sizes)
        return base_disk + (DISK_FULL_PERCENT - base_disk) * share

    def _crash_silence(self) -> timedelta:
        return timedelta(seconds=float(self.details.get("silence_seconds", CRASH_SILENCE.seconds)))

    def _flap_period(self) -> timedelta:
        return timedelta(seconds=float(self.details.get("flap_seconds", FLAP_PERIOD.seconds)))

    def label(self) -> dict[str, Any]:
        details = dict(self.details)
        if self.kind is FaultKind.memory_leak_crash:
            details["crash_at"] = self.crash_at.isoformat()
        elif self.kind is FaultKind.disk_filling:
            details["full_at"] = self.full_at.isoformat()
        return {
            "device_id": self.device_id,
            "site_id": self.site_id,
            "fault": self.kind.value,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "details": details,
        }


@dataclass(frozen=True)
class BenignEvent:
    """A normal event of a terminal's life (see :class:`BenignKind`), with its label."""

    device_id: str
    site_id: str
    kind: BenignKind
    start: datetime
    end: datetime
    details: dict[str, Any] = field(default_factory=dict)

    def active_at(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    def label(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "site_id": self.site_id,
            "fault": self.kind.value,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "details": self.details,
        }


class FaultPlanner:
    """Decides, tick by tick, whether a healthy terminal develops a fault.

    ``rate`` is the expected number of faults per terminal per simulated day. ``time_scale``
    divides every duration (a simulator running 60 times faster than real time plans
    faults one sixtieth as long in wall-clock time, so labels match stored timestamps).
    """

    def __init__(
        self,
        rng: random.Random,
        rate_per_day: float,
        *,
        time_scale: float = 1.0,
        kinds: tuple[FaultKind, ...] = tuple(FaultKind),
        weights: tuple[float, ...] | None = None,
        min_silence: timedelta = CRASH_SILENCE,
    ) -> None:
        if rate_per_day < 0:
            raise ValueError("the fault rate cannot be negative")
        if weights is not None and (len(weights) != len(kinds) or sum(weights) <= 0):
            raise ValueError("one non-negative weight per fault kind, not all zero")
        self.rng = rng
        self.rate_per_day = rate_per_day
        self.time_scale = time_scale
        self.kinds = kinds
        self.weights = weights
        # Wall-clock floors, so that a crash or a flap stays visible to a real watchdog.
        self.min_silence = min_silence

    def maybe_start(
        self,
        device_id: str,
        site_id: str,
        now: datetime,
        tick: timedelta,
        *,
        powered_until: datetime | None = None,
    ) -> Fault | None:
        """A new fault starting now, with probability rate × (tick in simulated days).

        ``powered_until``: when the terminal is switched off (a power cycle cures a leak), so
        a memory leak is planned to crash before it, or another kind is drawn.
        """
        simulated_days = tick.total_seconds() * self.time_scale / 86_400
        if self.rng.random() >= self.rate_per_day * simulated_days:
            return None
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if (
            kind is FaultKind.memory_leak_crash
            and powered_until is not None
            and powered_until - now < MIN_LEAK / self.time_scale
        ):
            others = [k for k in self.kinds if k is not FaultKind.memory_leak_crash]
            if not others:
                return None
            kind = self.rng.choice(others)
        return self.plan(device_id, site_id, kind, now, powered_until=powered_until)

    def plan(
        self,
        device_id: str,
        site_id: str,
        kind: FaultKind,
        start: datetime,
        *,
        powered_until: datetime | None = None,
        precursor: bool = True,
    ) -> Fault:
        """A fault of ``kind`` planned at ``start``. With ``precursor`` a network flap may
        first degrade the link for a while: then its first drop (the label's start) comes
        that much later."""
        shortest, longest = FAULT_DURATIONS[kind]
        simulated = shortest + (longest - shortest) * self.rng.random()
        duration = simulated / self.time_scale
        details: dict[str, Any] = {}
        if kind is FaultKind.memory_leak_crash:
            silence = max(CRASH_SILENCE / self.time_scale, self.min_silence)
            if powered_until is not None:
                duration = min(duration, powered_until - start - timedelta(minutes=10))
            duration = max(duration, silence * 3)
            details["silence_seconds"] = round(silence.total_seconds(), 3)
        elif kind is FaultKind.disk_filling:
            count = self.rng.randint(4, 8)
            # The first steps come early and are small: the signal starts subtle.
            details["steps"] = sorted(round(self.rng.uniform(0.05, 0.95), 3)
                                      for _ in range(count - 1)) + [1.0]  # fmt: skip
            details["step_sizes"] = [round(self.rng.uniform(0.4, 1.0) * (1 + n / count), 3)
                                     for n in range(count)]  # fmt: skip
        elif kind is FaultKind.network_flapping:
            flap = max(FLAP_PERIOD / self.time_scale, self.min_silence)
            duration = max(duration, flap * 4)
            details["flap_seconds"] = round(flap.total_seconds(), 3)
            if precursor and self.rng.random() < FLAP_PRECURSOR_CHANCE:
                low, high = _FLAP_PRECURSOR
                lead = (low + (high - low) * self.rng.random()) / self.time_scale
                lead = timedelta(seconds=round(lead.total_seconds(), 3))
                details["precursor_seconds"] = lead.total_seconds()
                details["precursor_strength"] = round(self.rng.uniform(0.4, 1.0), 2)
                start += lead
        elif kind is FaultKind.payment_gateway_timeout:
            details["timeout_share"] = round(self.rng.uniform(0.15, 0.6), 2)
            details["gateway"] = self.rng.choice(GATEWAYS)
        elif kind is FaultKind.bad_config_version:
            details["config_version"] = BAD_CONFIG_VERSION
            details["error_rate_points"] = round(self.rng.uniform(4, 12), 1)
        return Fault(device_id, site_id, kind, start, start + duration, details)


class LabelWriter:
    """Appends one line per injected fault: CSV when the file ends in .csv, else JSON lines."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.is_csv = path.suffix.lower() == ".csv"
        new_file = not path.exists() or path.stat().st_size == 0
        self._handle: TextIO = path.open("a", encoding="utf-8", newline="")
        self._csv = csv.DictWriter(self._handle, LABEL_FIELDS) if self.is_csv else None
        if self._csv is not None and new_file:
            self._csv.writeheader()
        self.written = 0

    def write(self, event: Fault | BenignEvent) -> None:
        label = event.label()
        if self._csv is not None:
            self._csv.writerow({**label, "details": json.dumps(label["details"])})
        else:
            self._handle.write(json.dumps(label) + "\n")
        self._handle.flush()
        self.written += 1

    def close(self) -> None:
        self._handle.close()


def read_labels(path: Path) -> list[dict[str, Any]]:
    """The labels a :class:`LabelWriter` wrote (either format)."""
    with path.open(encoding="utf-8", newline="") as handle:
        if path.suffix.lower() == ".csv":
            return [
                {**row, "details": json.loads(row["details"] or "{}")}
                for row in csv.DictReader(handle)
            ]
        return [json.loads(line) for line in handle if line.strip()]
