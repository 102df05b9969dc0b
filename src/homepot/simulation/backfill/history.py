"""The state a backfill shares between its parts (:class:`History`: the window, the random
draws, the rows waiting to be written) and a terminal as lived so far (:class:`Terminal`).

Every row goes through :class:`History`: event rows to the recorder with ids derived from the
seed, core rows kept until the writer inserts them. The draws are split into streams of their
own (``rng``, ``gateway_rng``, ``trouble_rng``, the fault planner's), so that each part of the
history draws in the order it always did: the same seed gives the same rows.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from homepot.analytics.models import SIMULATED, ErrorLog
from homepot.analytics.recorder import Recorder
from homepot.db import Base
from homepot.simulation.backfill.config import FIRMWARE_OLD, BackfillConfig
from homepot.simulation.faults import BenignEvent, Fault, FaultKind, FaultPlanner, LabelWriter
from homepot.simulation.model import DaySchedule, SiteProfile, TerminalModel

Row = dict[str, Any]
_NAMESPACE = uuid.UUID("0b8a3f0e-52a1-4c1e-8f7d-6a0f3c9e2b41")


@dataclass
class Terminal:
    """One terminal of the chain, with what happened to it so far in the window."""

    device_id: str
    site: SiteProfile
    model: TerminalModel
    ip_address: str
    faults: list[Fault] = field(default_factory=list)
    # Faults planned for the terminal from outside (its store's gateway), in time order.
    planned: list[Fault] = field(default_factory=list)
    gateway: str = "acquirer-eu"
    reboots: list[datetime] = field(default_factory=list)  # firmware updates, in time order
    samples: list[Row] = field(default_factory=list)  # metric rows, in time order
    state: str = "offline"
    firmware: str = FIRMWARE_OLD


class History:
    """The window, the draws and the rows of one backfill; the parts write through it."""

    def __init__(self, config: BackfillConfig, recorder: Recorder, users: dict[str, list[str]]):
        self.config = config
        self.recorder = recorder
        self.users = users
        self.rng = random.Random(f"backfill/{config.seed}")
        self.end = (config.end or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        self.start = self.end - timedelta(days=config.days)
        self.step = timedelta(minutes=config.interval_minutes)
        self.counter = 0
        self.core: dict[type[Base], list[Row]] = {}
        self.labels = LabelWriter(config.labels) if config.labels else None
        mix = config.fault_mix or dict.fromkeys(FaultKind, 1.0)
        # Gateway timeouts are planned per store (plan_gateways), the rest per terminal.
        gateway = FaultKind.payment_gateway_timeout
        self.gateway_share = mix.get(gateway, 0) / sum(mix.values())
        kinds = tuple(kind for kind in FaultKind if mix.get(kind, 0) > 0 and kind is not gateway)
        self.planner = FaultPlanner(
            random.Random(f"faults/{config.seed}"),
            config.fault_rate * (1 - self.gateway_share) if kinds else 0.0,
            kinds=kinds or (gateway,),
            weights=tuple(mix[kind] for kind in kinds) or (1.0,),
        )
        # Draws for the stores' gateways and for the warnings of trouble, apart from the rest,
        # so that adding them left every other row of a seed as it was.
        self.gateway_rng = random.Random(f"gateways/{config.seed}")
        self.trouble_rng = random.Random(f"trouble/{config.seed}")
        self.fault_count = 0
        self.job_number = 0
        self.execution_number = 0

    # -- ids and writing -------------------------------------------------------------------

    def event_id(self) -> str:
        self.counter += 1
        return uuid.uuid5(_NAMESPACE, f"{self.config.seed}/{self.counter}").hex

    def record(self, model: type[Any], **fields: Any) -> None:
        self.recorder.record(model, event_id=self.event_id(), source=SIMULATED, **fields)

    def add_core(self, model: type[Base], row: Row) -> None:
        self.core.setdefault(model, []).append(row)

    def label(self, event: Fault | BenignEvent) -> None:
        if self.labels is not None:
            self.labels.write(event)

    def error(
        self,
        terminal: Terminal,
        moment: datetime,
        category: str,
        severity: str,
        code: str,
        message: str,
        context: Row | None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        rng = rng or self.rng
        resolved = severity != "critical" or rng.random() < 0.8
        self.record(
            ErrorLog,
            timestamp=moment + timedelta(seconds=rng.uniform(0, self.step.total_seconds())),
            category=category,
            severity=severity,
            error_code=code,
            error_message=message,
            device_id=terminal.device_id,
            context={"site_id": terminal.site.site_id, **(context or {})},
            resolved=resolved,
            resolved_at=moment + timedelta(minutes=rng.uniform(5, 90)) if resolved else None,
        )

    def powered(self, site: SiteProfile, moment: datetime) -> bool:
        """Terminals are on from half an hour before opening to half an hour after closing
        (always, with ``always_on``)."""
        if self.config.always_on:
            return True
        local = moment.astimezone(ZoneInfo(site.timezone))
        day = site.day(local.weekday())
        if day.is_closed or day.open_time is None or day.close_time is None:
            return False
        widened = DaySchedule(
            _shift(day.open_time, -30), _shift(day.close_time, 30), is_closed=False
        )
        return widened.is_open_at(local.time())

    def powered_until(self, site: SiteProfile, moment: datetime) -> datetime:
        """When a terminal that is on at ``moment`` is switched off (half an hour after closing)."""
        zone = ZoneInfo(site.timezone)
        local = moment.astimezone(zone)
        for back in (0, 1):  # a store open past midnight closes on the day after it opened
            day = site.day((local.weekday() - back) % 7)
            if day.close_time is None:
                continue
            off = datetime.combine(local.date(), day.close_time, zone) + timedelta(minutes=30)
            while off.astimezone(UTC) <= moment:
                off += timedelta(days=1)
            return off.astimezone(UTC)
        return moment + timedelta(hours=12)


def _shift(moment: time, minutes: int) -> time:
    total = (moment.hour * 60 + moment.minute + minutes) % 1440
    return time(total // 60, total % 60)
