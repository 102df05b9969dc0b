"""Fault scenarios for simulated terminals, and the ground-truth labels file they leave.

A :class:`Fault` is planned in full when it is injected (device, kind, start, end), so the
label is written at once and stays true even if the simulation stops early. What a fault
does to a terminal at a given moment is :meth:`Fault.effects_at`, a pure function of time,
shared by the live simulator and the backfill:

- ``memory_leak_crash``: memory climbs to ~98 %, then the terminal crashes and stays silent
  for the last part of the fault (longer than the server's offline timeout), then reboots.
- ``disk_filling``: the disk fills to ~99 %; above 95 % receipts fail and the error rate rises.
- ``network_flapping``: the link drops and returns every couple of minutes; latency soars
  while it is up. Messages made while it is down wait in the device's retry queue.
- ``payment_gateway_timeout``: a share of card payments time out at the acquirer; each is
  reported by the terminal (server side: error_logs external_service / critical /
  ``EXT_SERVICE_TIMEOUT``).
- ``bad_config_version``: a faulty configuration version raises the error rate until it is
  replaced.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
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


# Typical lengths in simulated time: (shortest, longest).
_DURATIONS: dict[FaultKind, tuple[timedelta, timedelta]] = {
    FaultKind.memory_leak_crash: (timedelta(minutes=40), timedelta(hours=3)),
    FaultKind.disk_filling: (timedelta(hours=1), timedelta(hours=6)),
    FaultKind.network_flapping: (timedelta(minutes=10), timedelta(minutes=45)),
    FaultKind.payment_gateway_timeout: (timedelta(minutes=5), timedelta(minutes=40)),
    FaultKind.bad_config_version: (timedelta(minutes=30), timedelta(hours=4)),
}
# Silent time after a crash before the terminal is back: well past the 90 s offline timeout.
CRASH_SILENCE = timedelta(minutes=5)
FLAP_PERIOD = timedelta(minutes=2)


@dataclass(frozen=True)
class FaultEffects:
    """How a fault bends a terminal's readings at one moment."""

    memory_percent: float | None = None  # overrides the normal reading
    disk_percent: float | None = None
    latency_factor: float = 1.0
    error_rate_points: float = 0.0
    # Share of card payments that time out at the gateway (0..1).
    payment_timeout_share: float = 0.0
    reachable: bool = True  # False: the terminal cannot talk to the server
    crashed: bool = False  # silent: no heartbeat, no sample at all
    config_version: str | None = None


NO_EFFECT = FaultEffects()


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

    def effects_at(self, moment: datetime, *, base_memory: float, base_disk: float) -> FaultEffects:
        if not self.active_at(moment):
            return NO_EFFECT
        elapsed = moment - self.start
        progress = elapsed / (self.end - self.start)
        match self.kind:
            case FaultKind.memory_leak_crash:
                crash_at = self.end - self._crash_silence()
                if moment >= crash_at:
                    return FaultEffects(crashed=True, reachable=False)
                climb = elapsed / (crash_at - self.start)
                return FaultEffects(
                    memory_percent=base_memory + (98.5 - base_memory) * climb,
                    latency_factor=1 + climb,
                )
            case FaultKind.disk_filling:
                disk = base_disk + (99.2 - base_disk) * progress
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

    def _crash_silence(self) -> timedelta:
        return timedelta(seconds=float(self.details.get("silence_seconds", CRASH_SILENCE.seconds)))

    def _flap_period(self) -> timedelta:
        return timedelta(seconds=float(self.details.get("flap_seconds", FLAP_PERIOD.seconds)))

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
        min_silence: timedelta = CRASH_SILENCE,
    ) -> None:
        if rate_per_day < 0:
            raise ValueError("the fault rate cannot be negative")
        self.rng = rng
        self.rate_per_day = rate_per_day
        self.time_scale = time_scale
        self.kinds = kinds
        # Wall-clock floors, so that a crash or a flap stays visible to a real watchdog.
        self.min_silence = min_silence

    def maybe_start(
        self, device_id: str, site_id: str, now: datetime, tick: timedelta
    ) -> Fault | None:
        """A new fault starting now, with probability rate × (tick in simulated days)."""
        simulated_days = tick.total_seconds() * self.time_scale / 86_400
        if self.rng.random() >= self.rate_per_day * simulated_days:
            return None
        return self.plan(device_id, site_id, self.rng.choice(self.kinds), now)

    def plan(self, device_id: str, site_id: str, kind: FaultKind, start: datetime) -> Fault:
        shortest, longest = _DURATIONS[kind]
        simulated = shortest + (longest - shortest) * self.rng.random()
        duration = simulated / self.time_scale
        details: dict[str, Any] = {}
        if kind is FaultKind.memory_leak_crash:
            silence = max(CRASH_SILENCE / self.time_scale, self.min_silence)
            duration = max(duration, silence * 3)
            details["silence_seconds"] = round(silence.total_seconds(), 3)
        elif kind is FaultKind.network_flapping:
            flap = max(FLAP_PERIOD / self.time_scale, self.min_silence)
            duration = max(duration, flap * 4)
            details["flap_seconds"] = round(flap.total_seconds(), 3)
        elif kind is FaultKind.payment_gateway_timeout:
            details["timeout_share"] = round(self.rng.uniform(0.15, 0.6), 2)
            details["gateway"] = self.rng.choice(("acquirer-eu", "acquirer-us", "acquirer-apac"))
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

    def write(self, fault: Fault) -> None:
        label = fault.label()
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
