"""What a backfill is asked for (:class:`BackfillConfig`), what it reports, and the versions it
rolls out: the terminals' firmware and agent, the good configuration versions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from homepot.simulation.faults import FaultKind

AGENT_USER_AGENT = "homepot-agent/1.4.2"
FIRMWARE_OLD, FIRMWARE_NEW = "2.6.0", "2.7.1"
GOOD_CONFIG_VERSIONS = ("2.6.2", "2.7.0")


class BackfillError(ValueError):
    """Parameters that cannot make a history; the message says which and why."""


@dataclass
class BackfillConfig:
    days: float = 5.0
    sites: int = 150
    devices: int = 300
    interval_minutes: float = 5.0
    fault_rate: float = 0.3  # faults per terminal per day
    seed: int = 1
    labels: Path | None = None
    end: datetime | None = None  # default: now
    site_prefix: str = "store"
    # Name and place terminals as the live simulator does (``<prefix>-0001``, dealt round-robin
    # over the sites), so that the same fleet can run on live; None: ``<site>-pos-<n>``.
    device_prefix: str | None = None
    # Terminals stay on while their site is closed (idle, still reporting), as the live
    # simulator's do; otherwise they switch on and off with the opening hours.
    always_on: bool = False
    # Relative weights of the fault kinds (default: all alike); a kind left out never happens.
    fault_mix: dict[FaultKind, float] | None = None
    # Good configuration versions rolled out while sites trade (GOOD_CONFIG_VERSIONS, one per
    # half of the sites, mid-history): changes that are no fault, for the configuration
    # impact benchmark. Off by default, so that a seed's history stays what it was.
    good_config_rollouts: bool = False

    def validate(self) -> None:
        if not 0 < self.days <= 7:
            raise BackfillError(
                "--days must be above 0 and at most 7 (the analytics API reads history "
                "in windows of up to a week, and devices may not send older samples)"
            )
        if self.sites < 1 or self.devices < self.sites:
            raise BackfillError("need at least one site and at least one terminal per site")
        if not 1 <= self.interval_minutes <= 120:
            raise BackfillError("--interval-minutes must be between 1 and 120")
        if self.fault_rate < 0:
            raise BackfillError("--fault-rate cannot be negative")
        if self.fault_mix is not None and (
            any(weight < 0 for weight in self.fault_mix.values())
            or sum(self.fault_mix.values()) <= 0
        ):
            raise BackfillError("the fault mix needs non-negative weights, not all zero")


@dataclass
class BackfillResult:
    events: dict[str, int] = field(default_factory=dict)  # rows recorded per event table
    core: dict[str, int] = field(default_factory=dict)  # rows inserted per core table
    faults: int = 0
    start: datetime | None = None
    end: datetime | None = None
