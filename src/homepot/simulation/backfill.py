"""``homepot simulate backfill``: days of realistic fleet history, written in minutes.

A chain of stores (``sites``) in several time zones, each with a weekly schedule and its
terminals, lived through the last ``days`` days with the simulator's model
(:mod:`homepot.simulation.live`): terminals switch on half an hour before opening and off half
an hour after closing, sell in proportion to the site's load (peaks included, on the site's own
clock), get a nightly price-and-promotions update and a midday health check, receive firmware
(a reboot in the maintenance window), settle at closing, rotate their logs, and suffer the
faults of :mod:`homepot.simulation.faults` (a store's payment gateway fails for most of its
terminals at once: :mod:`homepot.simulation.gateways`); the ground truth of the faults and of
the benign events (``benign_*``) goes to the labels file. Operators at head office log in a
few times a day, browse the dashboard, create jobs and change site settings.

Every row it writes is marked as the simulation's: events and schedules with source
``simulated``, sites and devices with ``simulated`` true.

Event rows (the seven analytics event tables) go through a :class:`Recorder` of their own;
core rows (sites, schedules, devices, users, jobs, executions, health checks, audit logs) through
a session, in short transactions, each committed before the recorder writes (SQLite allows one
writer at a time). Everything derives from ``seed`` and the end time, and event ids from
the seed. A chain (``site_prefix``) gets one history: a second run for the same stores is
refused, since its days would overlap the first (pick another prefix to add stores).

``site_operating_schedules`` holds one row per site and weekday, so its 1,000-row target needs at
least 143 sites: the default chain has 150 stores with two terminals each.
"""

from __future__ import annotations

import random
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from statistics import fmean
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from homepot.analytics.models import (
    SIMULATED,
    APIRequestLog,
    ConfigurationHistory,
    DeviceMetrics,
    DeviceStateHistory,
    ErrorLog,
    JobOutcome,
    SiteOperatingSchedule,
    UserActivity,
)
from homepot.analytics.recorder import Recorder
from homepot.analytics.rollups import backfill_rollups
from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from homepot.auth.service import ensure_user, generate_password
from homepot.config import AnalyticsSettings
from homepot.db import Base, create_session_factory
from homepot.device.models import Device, DeviceStatus, HealthCheck
from homepot.job.models import (
    ExecutionStatus,
    Job,
    JobExecution,
    JobSchedule,
    JobStatus,
    JobTargetType,
)
from homepot.simulation.faults import (
    BAD_CONFIG_VERSION,
    GATEWAY_WARNING_CODE,
    LINK_WARNING_CODE,
    NO_EFFECT,
    PAYMENT_TIMEOUT_CODE,
    BenignEvent,
    Fault,
    FaultEffects,
    FaultKind,
    FaultPlanner,
    LabelWriter,
    warning_counts,
)
from homepot.simulation.gateways import outage_rate, plan_store_gateway
from homepot.simulation.jobfailures import draw_failure
from homepot.simulation.model import (
    FIRMWARE_REBOOT,
    SITE_TIMEZONES,
    DaySchedule,
    SiteProfile,
    TerminalModel,
    deal_terminals,
    default_week,
    site_ids,
    site_load,
)
from homepot.site.models import Site

Row = dict[str, Any]
_NAMESPACE = uuid.UUID("0b8a3f0e-52a1-4c1e-8f7d-6a0f3c9e2b41")
# Events kept in memory before the recorder writes them.
_FLUSH_EVERY = 20_000
# The server's watchdog marks a silent terminal offline after this long (fleet settings).
_OFFLINE_AFTER = timedelta(seconds=90)
AGENT_USER_AGENT = "homepot-agent/1.4.2"
FIRMWARE_OLD, FIRMWARE_NEW = "2.6.0", "2.7.1"
GOOD_CONFIG_VERSIONS = ("2.6.2", "2.7.0")
_BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36"
)


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


@dataclass
class _Terminal:
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


class _Backfill:
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

    # -- the chain -------------------------------------------------------------------------

    def sites(self) -> list[tuple[SiteProfile, list[_Terminal]]]:
        config = self.config
        chain: list[tuple[SiteProfile, list[_Terminal]]] = []
        ids = site_ids(config.site_prefix, config.sites)
        dealt: dict[str, list[str]] = {site_id: [] for site_id in ids}
        if config.device_prefix is not None:
            for device_id, site_id in deal_terminals(ids, config.devices, config.device_prefix):
                dealt[site_id].append(device_id)
        for number, site_id in enumerate(ids):
            timezone = SITE_TIMEZONES[number % len(SITE_TIMEZONES)]
            scale = self.rng.uniform(0.6, 1.6)
            week = tuple(
                DaySchedule(
                    day.open_time,
                    day.close_time,
                    day.is_closed,
                    day.peak_start,
                    day.peak_end,
                    round(day.expected_volume * scale),
                    day.is_maintenance_window,
                )
                for day in default_week(number)
            )
            site = SiteProfile(site_id, timezone, week)
            # Terminals are dealt round-robin, so sites differ by one at most.
            tills = config.devices // config.sites + (number < config.devices % config.sites)
            names = dealt[site_id] or [f"{site_id}-pos-{till}" for till in range(1, tills + 1)]
            terminals = []
            for till, device_id in enumerate(names, start=1):
                model = TerminalModel(
                    device_id, site, tills, random.Random(f"{config.seed}/{device_id}")
                )
                ip = f"10.{number // 250}.{number % 250}.{10 + till}"
                terminals.append(_Terminal(device_id, site, model, ip))
            chain.append((site, terminals))
        return chain

    def write_site(self, site: SiteProfile, number: int, terminals: list[_Terminal]) -> None:
        opened = self.start - timedelta(days=90)
        self.add_core(
            Site,
            {
                "site_id": site.site_id,
                "name": f"Store {number + 1:03d} ({_city(site.timezone)})",
                "timezone": site.timezone,
                "address": None,
                "config": {"receipt_footer": "Thank you!", "price_table_version": "pt-0"},
                "created_at": opened,
                "updated_at": opened,
                "simulated": True,
            },
        )
        for weekday, day in enumerate(site.days):
            self.add_core(
                SiteOperatingSchedule,
                {
                    "site_id": site.site_id,
                    "day_of_week": weekday,
                    "open_time": day.open_time,
                    "close_time": day.close_time,
                    "is_closed": day.is_closed,
                    "is_maintenance_window": day.is_maintenance_window,
                    "expected_transaction_volume": day.expected_volume,
                    "peak_hours_start": day.peak_start,
                    "peak_hours_end": day.peak_end,
                    "notes": "Closed" if day.is_closed else "Regular trading day",
                    "special_considerations": {"maintenance_window": True}
                    if day.is_maintenance_window
                    else None,
                    "created_at": opened,
                    "updated_at": opened,
                    "source": SIMULATED,
                },
            )

    # -- one terminal over the window ------------------------------------------------------

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

    def firmware_windows(self, site: SiteProfile, number: int) -> list[datetime]:
        """When the site's terminals take the firmware update: in the maintenance window,
        25 minutes before opening, on every other site."""
        if number % 2:
            return []
        zone = ZoneInfo(site.timezone)
        first = self.start.astimezone(zone).date()
        windows = []
        for offset in range(int(self.config.days) + 2):
            local_day = first + timedelta(days=offset)
            day = site.day(local_day.weekday())
            if not day.is_maintenance_window or day.is_closed or day.open_time is None:
                continue
            opening = datetime.combine(local_day, day.open_time, zone).astimezone(UTC)
            window = opening - timedelta(minutes=25)
            if self.start <= window < self.end:
                windows.append(window)
        return windows

    def plan_gateways(self, site: SiteProfile, terminals: list[_Terminal]) -> None:
        """The store's gateway outages (faults of its terminals, planned ahead) and slow
        spells (trouble of every terminal)."""
        if not terminals:
            return
        store = plan_store_gateway(
            self.gateway_rng,
            site.site_id,
            [terminal.device_id for terminal in terminals],
            start=self.start,
            end=self.end,
            step=self.step,
            open_at=lambda moment: self.powered(site, moment),
            outages_per_day=outage_rate(self.config.fault_rate, self.gateway_share),
        )
        for terminal in terminals:
            terminal.gateway = store.gateway
            terminal.planned = store.faults[terminal.device_id]
            terminal.model.disturbances = list(store.spells)

    def label(self, event: Fault | BenignEvent) -> None:
        if self.labels is not None:
            self.labels.write(event)

    def live(self, terminal: _Terminal) -> None:
        """Walk one terminal through the window: samples, requests, states, faults."""
        moment = self.start
        model = terminal.model
        fault: Fault | None = None
        unreachable_since: datetime | None = None
        offline_cause: str | None = None
        was_on = False
        switched_off_at = self.start
        reboots = list(terminal.reboots)
        rebooting_until = self.start
        # Settlements and log rotations, in time order; labelled when the terminal is on.
        benign = model.benign_events(self.start, self.end)
        benign.sort(key=lambda event: event.start)
        while moment < self.end:
            on = self.powered(terminal.site, moment)
            if fault is not None and moment >= fault.end:
                if fault.kind is FaultKind.memory_leak_crash:
                    model.boot(fault.end)
                fault = None
            if on and not was_on:
                model.boot(moment)  # switched on in the morning
                switched_off_at = self.powered_until(terminal.site, moment)
            was_on = on
            planned = terminal.planned
            while planned and planned[0].end <= moment:
                planned.pop(0)  # the terminal was off, or in another fault: it missed it
            if fault is None and on and planned and planned[0].precursor_start <= moment:
                fault = planned.pop(0)
                terminal.faults.append(fault)
                self.fault_count += 1
                self.label(fault)
            if fault is None and on:
                fault = self.planner.maybe_start(
                    terminal.device_id,
                    terminal.site.site_id,
                    moment,
                    self.step,
                    powered_until=switched_off_at,
                )
                if fault is not None:
                    terminal.faults.append(fault)
                    self.fault_count += 1
                    self.label(fault)
            while reboots and reboots[0] <= moment:
                reboot = reboots.pop(0)
                if on:
                    self.label(model.firmware_reboot(reboot, terminal.site.site_id))
                    rebooting_until = reboot + FIRMWARE_REBOOT
            while benign and benign[0].start < moment + self.step:
                event = benign.pop(0)
                if on:
                    self.label(event)
            effects = terminal.model.effects_of(fault, moment) if on else NO_EFFECT
            silent = not on or effects.crashed or moment < rebooting_until
            if silent or not effects.reachable:
                if unreachable_since is None:
                    unreachable_since = moment
                # Silent for this whole step: the watchdog's 90 s may run out within it.
                offline_at = unreachable_since + _OFFLINE_AFTER
                if terminal.state == "online" and offline_at < moment + self.step:
                    extra = (
                        {"fault": fault.kind.value}
                        if fault is not None and on and fault.active_at(moment)
                        else None
                    )
                    self.state(
                        terminal, max(moment, offline_at), "offline", "No heartbeat for 90 s", extra
                    )
                    offline_cause = (
                        "Heartbeat received after a restart"
                        if effects.crashed
                        else "Heartbeat received: the link is back"
                        if on
                        else "Heartbeat received: terminal switched on"
                    )
            if not silent:
                self.sample(terminal, moment, effects, fault)
            if not silent and effects.reachable:
                if terminal.state != "online":
                    self.state(
                        terminal, moment, "online", offline_cause or "Heartbeat received", None
                    )
                unreachable_since = None
                self.report_requests(terminal, moment)
            moment += self.step
        for fault_done in terminal.faults:
            if fault_done.kind is FaultKind.bad_config_version:
                self.bad_config(terminal, fault_done)

    def state(
        self, terminal: _Terminal, moment: datetime, new: str, reason: str, extra: Row | None
    ) -> None:
        if terminal.state == new:
            return
        self.record(
            DeviceStateHistory,
            timestamp=min(moment + timedelta(seconds=self.rng.uniform(0, 20)), self.end),
            device_id=terminal.device_id,
            previous_state=terminal.state,
            new_state=new,
            changed_by="system",
            reason=reason,
            extra_data=extra,
        )
        terminal.state = new

    def sample(
        self, terminal: _Terminal, moment: datetime, effects: FaultEffects, fault: Fault | None
    ) -> None:
        fields, timeouts = terminal.model.sample(moment, self.step, effects)
        when = moment + timedelta(seconds=self.rng.uniform(0, 5))
        fields["extra_metrics"]["firmware_version"] = terminal.firmware
        self.record(
            DeviceMetrics,
            timestamp=when,
            device_id=terminal.device_id,
            collection_interval_seconds=self.step.total_seconds(),
            **fields,
        )
        terminal.samples.append({"timestamp": when, **fields})
        self.transaction_errors(terminal, when, fields, timeouts, effects, fault)
        self.trouble_warnings(terminal, when, effects)

    def trouble_warnings(
        self, terminal: _Terminal, moment: datetime, effects: FaultEffects
    ) -> None:
        """Warnings of a link or a gateway in trouble: retransmissions to the server, slow
        answers from the gateway. A healthy terminal has a few too."""
        rng = self.trouble_rng
        link, gateway = warning_counts(rng, effects, self.step.total_seconds() / 3600)
        for _ in range(link):
            share = rng.uniform(4, 25)
            self.error(terminal, moment, "api", "warning", LINK_WARNING_CODE,
                       f"{share:.0f} % of segments to the server retransmitted in the last minute",
                       {"retransmit_percent": round(share, 1)}, rng=rng)  # fmt: skip
        for _ in range(gateway):
            seconds = rng.uniform(8, 28)
            self.error(terminal, moment, "external_service", "warning", GATEWAY_WARNING_CODE,
                       f"Payment gateway slow: {terminal.gateway} answered in {seconds:.0f} s",
                       {"gateway": terminal.gateway, "answer_s": round(seconds, 1)},
                       rng=rng)  # fmt: skip

    def transaction_errors(
        self,
        terminal: _Terminal,
        moment: datetime,
        fields: Row,
        timeouts: int,
        effects: FaultEffects,
        fault: Fault | None,
    ) -> None:
        """One error log per failed transaction, in agreement with the reported error rate."""
        count = fields["transaction_count"]
        failures = sum(
            self.rng.random() < terminal.model.base_error_rate / 100 for _ in range(count)
        )
        for _ in range(timeouts):
            gateway = fault.details.get("gateway") if fault else terminal.gateway
            self.error(
                terminal, moment, "external_service", "critical", PAYMENT_TIMEOUT_CODE,
                f"Payment gateway timeout: {gateway} did not answer within 30 s",
                {"gateway": gateway, "timeout_s": 30},
            )  # fmt: skip
        for _ in range(failures):
            if effects.disk_percent is not None and effects.disk_percent > 95:
                self.error(terminal, moment, "database", "error", "LOCAL_STORE_WRITE_FAILED",
                           "Transaction journal write failed: no space left on device",
                           {"disk_percent": fields["disk_percent"]})  # fmt: skip
            elif effects.config_version == BAD_CONFIG_VERSION:
                self.error(terminal, moment, "validation", "error", "CONFIG_VALIDATION_FAILED",
                           f"Tax rule missing in configuration {BAD_CONFIG_VERSION}",
                           {"config_version": BAD_CONFIG_VERSION})  # fmt: skip
            else:
                code, message = self.rng.choice(
                    (
                        ("CARD_READER_ERROR", "Card reader returned an unreadable chip response"),
                        ("PAYMENT_DECLINED_TECHNICAL", "Acquirer declined: technical error 96"),
                        ("RECEIPT_PRINTER_JAM", "Receipt printer reported a paper jam"),
                    )
                )
                self.error(terminal, moment, "external_service", "warning", code, message, None)

    def error(
        self,
        terminal: _Terminal,
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

    def report_requests(self, terminal: _Terminal, moment: datetime) -> None:
        """The agent's own API calls: a heartbeat and a telemetry batch per interval."""
        for offset, endpoint, status, request_size, response_size in (
            (0.0, "/api/v1/agent/heartbeat", 200, 142, 48),
            (0.4, "/api/v1/agent/telemetry", 202, 610, 15),
        ):
            self.record(
                APIRequestLog,
                timestamp=moment + timedelta(seconds=offset + self.rng.uniform(0, 2)),
                request_id=f"{self.rng.getrandbits(64):016x}",
                endpoint=endpoint,
                route=endpoint,
                method="POST",
                status_code=status,
                response_time_ms=round(self.rng.lognormvariate(1.8, 0.4), 2),
                ip_address=terminal.ip_address,
                user_agent=AGENT_USER_AGENT,
                request_size_bytes=request_size,
                response_size_bytes=response_size,
            )
        self.add_core(
            HealthCheck,
            {
                "device_id": terminal.device_id,
                "timestamp": moment,
                "status": "healthy" if terminal.model.base_error_rate < 2 else "degraded",
                "response_time_ms": round(self.rng.uniform(15, 60), 1),
                "details": {"firmware_version": terminal.firmware},
            },
        )

    # -- jobs and configuration ------------------------------------------------------------

    def new_job(
        self,
        job_type: str,
        target_type: JobTargetType,
        target_id: str,
        when: datetime,
        created_by: str,
        payload: Row,
        description: str,
        schedule: JobSchedule = JobSchedule.now,
    ) -> str:
        self.job_number += 1
        job_id = f"bf{self.config.seed}-job-{self.job_number:06d}"
        self.add_core(
            Job,
            {
                "job_id": job_id,
                "job_type": job_type,
                "target_type": target_type,
                "target_id": target_id,
                "payload": payload,
                "status": JobStatus.completed,
                "schedule": schedule,
                "scheduled_for": when if schedule is JobSchedule.maintenance_window else None,
                "priority": 5,
                "timeout_seconds": 600 if job_type == "firmware_update" else 120,
                "max_retries": 2,
                "description": description,
                "created_by": created_by,
                "created_at": when - timedelta(minutes=2),
                "started_at": when,
                "completed_at": when + timedelta(minutes=5),
            },
        )
        self.add_core(
            AuditLog,
            {
                "timestamp": when - timedelta(minutes=2),
                "user_id": created_by if created_by != "system" else None,
                "action": "job.create",
                "resource_type": "job",
                "resource_id": job_id,
                "ip_address": "192.0.2.10" if created_by != "system" else None,
                "details": {"job_type": job_type, "target": target_id},
            },
        )
        return job_id

    def execute(
        self,
        job_id: str,
        job_type: str,
        terminal: _Terminal,
        when: datetime,
        initiated_by: str,
        durations: tuple[float, float],
    ) -> bool:
        """One device's execution and its outcome; True when it succeeded."""
        faulty = any(f.active_at(when) for f in terminal.faults)
        online = self.powered(terminal.site, when) and not any(
            f.effects_at(when, base_memory=0, base_disk=0).crashed
            for f in terminal.faults
        )  # fmt: skip
        retries = 0
        if not online:
            status, code, message = (
                "timeout",
                "E_TIMEOUT",
                f"{terminal.device_id} did not acknowledge in time",
            )
            retries = 2
            duration = 3 * 120_000
        else:
            duration = round(self.rng.uniform(*durations) * 1000)
            failure = draw_failure(
                self.rng,
                terminal.device_id,
                job_type,
                hardware=terminal.model.device_type,
                latency_ms=terminal.model.base_latency_ms,
                site_id=terminal.site.site_id,
                load=site_load(terminal.site, when),
                faulty=faulty,
            )
            if self.rng.random() < 0.05:
                retries = 1
                duration += 30_000
            codes = {
                "config_change": ("E_CONFIG_REJECTED", "configuration refused: terminal busy"),
                "firmware_update": ("E_FIRMWARE_CHECKSUM", "firmware image checksum mismatch"),
                "restart": ("E_RESTART_FAILED", "the POS application did not come back"),
                "health_check": ("E_HEALTH_DEGRADED", "self-test reported a degraded card reader"),
            }
            status, code, message = "success", None, None
            if failure == "failed":
                status, (code, message) = "failed", codes[job_type]
            elif failure == "timeout":
                status, code = "timeout", "E_DOWNLOAD_TIMEOUT"
                message = f"{terminal.device_id} did not finish the {job_type} download in time"
                retries, duration = 2, 3 * (600_000 if job_type == "firmware_update" else 120_000)
        self.execution_number += 1
        finished = when + timedelta(milliseconds=duration)
        self.add_core(
            JobExecution,
            {
                "job_id": job_id,
                "device_id": terminal.device_id,
                "status": ExecutionStatus(status),
                "attempt": retries,
                "not_before": when,
                "first_dispatched_at": when,
                "dispatched_at": when,
                "acked_at": when + timedelta(seconds=1) if online else None,
                "finished_at": finished,
                "delivery": "push",
                "claimed_by": "backfill",
                "error_code": code,
                "error_message": message,
                "created_at": when,
                "updated_at": finished,
            },
        )
        self.record(
            JobOutcome,
            timestamp=finished,
            job_id=job_id,
            job_type=job_type,
            device_id=terminal.device_id,
            status=status,
            duration_ms=duration,
            error_code=code,
            error_message=message,
            retry_count=retries,
            initiated_by=initiated_by,
            extra_data={
                "site_id": terminal.site.site_id,
                "delivery": "push",
                "attempts": retries + 1,
            },
        )
        if status != "success":
            self.error(
                terminal, finished, "external_service", "error", code or "E_JOB_FAILED",
                f"{job_type} on {terminal.device_id} ended {status}: {message}", {"job_id": job_id},
            )  # fmt: skip
        return status == "success"

    def performance(self, terminal: _Terminal, start: datetime, end: datetime) -> Row | None:
        window = [s for s in terminal.samples if start <= s["timestamp"] < end]
        if not window:
            return None
        return {
            "samples": len(window),
            "window_seconds": (end - start).total_seconds(),
            "avg_cpu_percent": round(fmean(s["cpu_percent"] for s in window), 2),
            "avg_error_rate": round(fmean(s["error_rate"] for s in window), 3),
            "avg_network_latency_ms": round(fmean(s["network_latency_ms"] for s in window), 1),
        }

    def impact_window(self) -> timedelta:
        return max(timedelta(minutes=10), 3 * self.step)

    def config_change(
        self,
        terminal: _Terminal,
        when: datetime,
        parameter: str,
        old: Any,
        new: Any,
        changed_by: str,
        reason: str,
        change_type: str = "automated",
        rolled_back: str | None = None,
    ) -> None:
        window = self.impact_window()
        before = self.performance(terminal, when - window, when)
        after = self.performance(terminal, when, when + window)
        successful = None
        if before and after:
            error_up = after["avg_error_rate"] - before["avg_error_rate"]
            successful = (
                not (error_up > 0.5 and error_up > 0.2 * before["avg_error_rate"])
                and after["avg_network_latency_ms"] <= 1.2 * before["avg_network_latency_ms"]
            )
        if rolled_back:
            successful = False
        self.record(
            ConfigurationHistory,
            timestamp=when,
            entity_type="device",
            entity_id=terminal.device_id,
            parameter_name=parameter,
            old_value={"value": old},
            new_value={"value": new},
            changed_by=changed_by,
            change_reason=reason,
            change_type=change_type,
            performance_before=before,
            performance_after=after,
            was_successful=successful,
            was_rolled_back=rolled_back is not None,
            rollback_reason=rolled_back,
        )

    def bad_config(self, terminal: _Terminal, fault: Fault) -> None:
        """The faulty configuration's arrival, and its rollback when the fault ends.

        A fault still running at the end of the history has not been rolled back yet: its
        rollback would be a row in the future.
        """
        rolled_back = fault.end < self.end
        self.config_change(
            terminal, fault.start, "config_version", FIRMWARE_OLD, BAD_CONFIG_VERSION, "system",
            f"Configuration {BAD_CONFIG_VERSION} pushed by the release pipeline",
            rolled_back=f"Error rate rose after {BAD_CONFIG_VERSION}; restored {FIRMWARE_OLD}"
            if rolled_back else None,
        )  # fmt: skip
        if rolled_back:
            self.config_change(
                terminal, fault.end, "config_version", BAD_CONFIG_VERSION, FIRMWARE_OLD, "system",
                "Automatic rollback: the change made things worse",
            )  # fmt: skip

    def site_jobs(self, site: SiteProfile, terminals: list[_Terminal], number: int) -> None:
        """Each trading day: prices and promotions before opening, a health check at noon;
        firmware in the maintenance window; a restart after every crash."""
        zone = ZoneInfo(site.timezone)
        operator = self.rng.choice(self.users["operator"])
        first = self.start.astimezone(zone).date()
        for offset in range(int(self.config.days) + 2):
            local_day = first + timedelta(days=offset)
            day = site.day(local_day.weekday())
            if day.is_closed or day.open_time is None:
                continue
            opening = datetime.combine(local_day, day.open_time, zone).astimezone(UTC)
            update_at = opening - timedelta(minutes=20)
            if self.start <= update_at < self.end - timedelta(minutes=30):
                version = f"pt-{local_day.isoformat()}"
                job_id = self.new_job(
                    "config_change", JobTargetType.site, site.site_id, update_at, operator,
                    {"config": {"price_table_version": version, "promotions_version": version}},
                    "Nightly prices and promotions",
                )  # fmt: skip
                for terminal in terminals:
                    moment = update_at + timedelta(seconds=self.rng.uniform(0, 30))
                    if self.execute(job_id, "config_change", terminal, moment, operator, (2, 8)):
                        previous = f"pt-{(local_day - timedelta(days=1)).isoformat()}"
                        for parameter in ("price_table_version", "promotions_version"):
                            self.config_change(
                                terminal, moment, parameter, previous, version, operator,
                                "Nightly prices and promotions",
                            )  # fmt: skip
            noon = datetime.combine(local_day, time(12, 30), zone).astimezone(UTC)
            if self.start <= noon < self.end and day.is_open_at(time(12, 30)):
                job_id = self.new_job(
                    "health_check", JobTargetType.site, site.site_id, noon, "system", {},
                    "Daily health check",
                )  # fmt: skip
                for terminal in terminals:
                    self.execute(job_id, "health_check", terminal, noon, "system", (1, 4))
        if self.config.good_config_rollouts:
            self.good_config_rollout(site, terminals, number, operator)
        for window in self.firmware_windows(site, number):
            admin = self.users["admin"][0]
            job_id = self.new_job(
                "firmware_update", JobTargetType.site, site.site_id, window, admin,
                {"version": FIRMWARE_NEW}, f"Firmware {FIRMWARE_NEW} rollout",
                JobSchedule.maintenance_window,
            )  # fmt: skip
            for terminal in terminals:
                self.firmware(terminal, job_id, window, admin)
        for terminal in terminals:
            for fault in terminal.faults:
                if fault.kind is FaultKind.memory_leak_crash and fault.end < self.end:
                    job_id = self.new_job(
                        "restart", JobTargetType.device, terminal.device_id, fault.end, operator,
                        {}, "Restart after a crash",
                    )  # fmt: skip
                    self.execute(job_id, "restart", terminal, fault.end, operator, (5, 20))

    def good_config_rollout(
        self, site: SiteProfile, terminals: list[_Terminal], number: int, operator: str
    ) -> None:
        """A good configuration version at 11:00 local on a trading day mid-history: even
        sites get the first of GOOD_CONFIG_VERSIONS, odd ones the second, a day later."""
        zone = ZoneInfo(site.timezone)
        version = GOOD_CONFIG_VERSIONS[number % 2]
        first = self.start.astimezone(zone).date() + timedelta(days=int(self.config.days) // 2)
        for offset in range(number % 2, number % 2 + 3):
            local_day = first + timedelta(days=offset)
            when = datetime.combine(local_day, time(11), zone).astimezone(UTC)
            if not site.day(local_day.weekday()).is_open_at(time(11)) or not (
                self.start <= when < self.end - timedelta(hours=2)
            ):
                continue
            job_id = self.new_job(
                "config_change", JobTargetType.site, site.site_id, when, operator,
                {"config": {"config_version": version}}, f"Roll out configuration {version}",
            )  # fmt: skip
            for terminal in terminals:
                moment = when + timedelta(seconds=self.rng.uniform(0, 60))
                if self.execute(job_id, "config_change", terminal, moment, operator, (2, 8)):
                    self.config_change(
                        terminal, moment, "config_version", FIRMWARE_OLD, version, operator,
                        f"Roll out configuration {version}",
                    )  # fmt: skip
            return

    def firmware(self, terminal: _Terminal, job_id: str, when: datetime, admin: str) -> None:
        previous = terminal.state
        self.state_at(
            terminal, when, previous, "updating", f"Firmware update {FIRMWARE_NEW} started", job_id
        )
        if self.execute(job_id, "firmware_update", terminal, when, admin, (60, 180)):
            terminal.firmware = FIRMWARE_NEW
        done = when + timedelta(minutes=4)
        self.state_at(
            terminal, done, "updating", previous, f"Firmware update {FIRMWARE_NEW} finished", job_id
        )

    def state_at(
        self, terminal: _Terminal, when: datetime, old: str, new: str, reason: str, job_id: str
    ) -> None:
        self.record(
            DeviceStateHistory,
            timestamp=when,
            device_id=terminal.device_id,
            previous_state=old,
            new_state=new,
            changed_by="system",
            reason=reason,
            extra_data={"job_id": job_id},
        )

    # -- operators -------------------------------------------------------------------------

    def operator_sessions(self, site_ids: list[str], device_ids: list[str]) -> None:
        """Head office (London) staff: a few dashboard sessions per working day each."""
        zone = ZoneInfo("Europe/London")
        people = self.users["operator"] + self.users["admin"]
        first = self.start.astimezone(zone).date()
        for offset in range(int(self.config.days) + 2):
            local_day = first + timedelta(days=offset)
            for user_id in people:
                for _ in range(self.rng.randint(2, 4)):
                    minute = self.rng.randint(8 * 60, 18 * 60)
                    begin = datetime.combine(local_day, time(minute // 60, minute % 60), zone)
                    begin = begin.astimezone(UTC)
                    if self.start <= begin < self.end - timedelta(hours=1):
                        self.session(user_id, begin, site_ids, device_ids)

    def session(
        self, user_id: str, begin: datetime, site_ids: list[str], device_ids: list[str]
    ) -> None:
        rng = self.rng
        session_id = f"{rng.getrandbits(128):032x}"
        moment = begin
        staff = self.users["operator"] + self.users["admin"]
        ip = f"192.0.2.{10 + staff.index(user_id)}"
        self.api(moment, "POST", "/api/v1/auth/token", None, 200, user_id, ip, 312)
        self.add_core(
            AuditLog,
            {"timestamp": moment, "user_id": user_id, "action": "user.login",
             "resource_type": "user", "resource_id": user_id, "ip_address": ip, "details": None},
        )  # fmt: skip
        for _ in range(rng.randint(6, 22)):
            moment += timedelta(seconds=rng.uniform(3, 120))
            device = rng.choice(device_ids)
            site = rng.choice(site_ids)
            kind = rng.choices(
                ("dashboard", "devices", "device", "search", "analytics", "site_config"),
                weights=(3, 3, 3, 2, 2, 1),
            )[0]
            if kind == "dashboard":
                self.activity(moment, user_id, session_id, "page_view", "/dashboard", None, None)
                self.api(
                    moment,
                    "GET",
                    "/api/v1/analytics/device-metrics",
                    None,
                    200,
                    user_id,
                    ip,
                    18_250,
                )
            elif kind == "devices":
                self.activity(moment, user_id, session_id, "page_view", "/devices", None, None)
                self.api(moment, "GET", "/api/v1/devices", None, 200, user_id, ip, 5_230)
            elif kind == "device":
                self.activity(
                    moment, user_id, session_id, "click", "/devices", f"device-row-{device}", None
                )
                found = rng.random() > 0.03
                self.api(
                    moment,
                    "GET",
                    f"/api/v1/devices/{device if found else device + 'x'}",
                    "/api/v1/devices/{device_id}",
                    200 if found else 404,
                    user_id,
                    ip,
                    512,
                )
                self.activity(
                    moment, user_id, session_id, "page_view", f"/devices/{device}", None, None
                )
            elif kind == "search":
                query = device.split("-pos")[0]
                self.activity(
                    moment, user_id, session_id, "search", "/devices", "device-search", query
                )
                self.api(
                    moment, "GET", "/api/v1/devices", None, 200, user_id, ip, 2_048, {"q": query}
                )
            elif kind == "analytics":
                self.activity(moment, user_id, session_id, "page_view", "/analytics", None, None)
                bad = rng.random() < 0.05
                self.api(
                    moment,
                    "GET",
                    "/api/v1/analytics/errors",
                    None,
                    422 if bad else 200,
                    user_id,
                    ip,
                    164 if bad else 9_400,
                    {"start_date": "yesterday" if bad else "2025-12-01"},
                )
            else:
                self.activity(
                    moment, user_id, session_id, "form_submit", f"/sites/{site}", "site-form", None
                )
                self.api(
                    moment,
                    "PATCH",
                    f"/api/v1/sites/{site}",
                    "/api/v1/sites/{site_id}",
                    200,
                    user_id,
                    ip,
                    640,
                )
                footer = rng.choice(("Thank you!", "See you soon!", "Thanks for shopping with us"))
                self.record(
                    ConfigurationHistory,
                    timestamp=moment,
                    entity_type="site",
                    entity_id=site,
                    parameter_name="receipt_footer",
                    old_value={"value": "Thank you!"},
                    new_value={"value": footer},
                    changed_by=user_id,
                    change_type="manual",
                    change_reason="Receipt wording for the season",
                )
                self.add_core(
                    AuditLog,
                    {"timestamp": moment, "user_id": user_id, "action": "site.update",
                     "resource_type": "site", "resource_id": site, "ip_address": ip,
                     "details": {"config": ["receipt_footer"]}},
                )  # fmt: skip

    def activity(
        self, moment: datetime, user_id: str, session_id: str, kind: str, page: str,
        element: str | None, query: str | None,
    ) -> None:  # fmt: skip
        self.record(
            UserActivity,
            timestamp=moment,
            user_id=user_id,
            session_id=session_id,
            activity_type=kind,
            page_url=page,
            element_id=element,
            search_query=query,
            duration_ms=round(self.rng.uniform(2_000, 95_000)) if kind == "page_view" else None,
            extra_data={"viewport": "1440x900"} if kind == "page_view" else None,
        )

    def api(
        self, moment: datetime, method: str, endpoint: str, route: str | None, status: int,
        user_id: str, ip: str, size: int, query: Row | None = None,
    ) -> None:  # fmt: skip
        self.record(
            APIRequestLog,
            timestamp=moment + timedelta(milliseconds=self.rng.uniform(30, 400)),
            request_id=f"{self.rng.getrandbits(64):016x}",
            endpoint=endpoint,
            route=route or endpoint,
            method=method,
            status_code=status,
            response_time_ms=round(self.rng.lognormvariate(3.0, 0.5), 2),
            user_id=user_id,
            ip_address=ip,
            user_agent=_BROWSER,
            error_message=None
            if status < 400
            else ("not found" if status == 404 else "invalid start_date"),
            request_size_bytes=0 if method == "GET" else 180,
            response_size_bytes=size,
            query_params=query,
        )


def _city(timezone: str) -> str:
    return timezone.split("/")[-1].replace("_", " ")


def _shift(moment: time, minutes: int) -> time:
    total = (moment.hour * 60 + moment.minute + minutes) % 1440
    return time(total // 60, total % 60)


async def _insert(session: AsyncSession, model: type[Base], rows: list[Row]) -> None:
    table = model.__table__
    assert isinstance(table, Table)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for start in range(0, len(rows), 2_000):
        await session.execute(insert(table).on_conflict_do_nothing(), rows[start : start + 2_000])


async def history_loaded_at(engine: AsyncEngine, site_prefix: str) -> datetime | None:
    """When the stores ``<site_prefix>-*`` got their backfilled history (None: not yet)."""
    async with engine.connect() as connection:
        loaded_at: datetime | None = await connection.scalar(
            select(AuditLog.timestamp)
            .where(AuditLog.resource_type == "backfill", AuditLog.resource_id == site_prefix)
            .limit(1)
        )
    if loaded_at is not None and loaded_at.tzinfo is None:  # SQLite keeps no offset
        loaded_at = loaded_at.replace(tzinfo=UTC)
    return loaded_at


async def _refuse_a_second_history(engine: AsyncEngine, site_prefix: str) -> None:
    """Terminals live one life: a second history for the same stores would overlap the first."""
    loaded_at = await history_loaded_at(engine, site_prefix)
    if loaded_at is not None:
        raise BackfillError(
            f"the stores {site_prefix}-* already have a backfilled history (up to "
            f"{loaded_at.isoformat(timespec='seconds')}); pass another --site-prefix to add "
            "another chain of stores"
        )


async def _ensure_users(engine: AsyncEngine, operators: int) -> dict[str, list[str]]:
    """Head-office staff who act in the history (passwords random: nobody logs in as them)."""
    ids: dict[str, list[str]] = {"admin": [], "operator": []}
    async with create_session_factory(engine)() as session, session.begin():
        user, _ = await ensure_user(
            session, email="backfill-admin@homepot.example", password=generate_password(),
            role=Role.admin,
        )  # fmt: skip
        ids["admin"].append(user.id)
        for number in range(1, operators + 1):
            user, _ = await ensure_user(
                session, email=f"backfill-operator-{number}@homepot.example",
                password=generate_password(), role=Role.operator,
            )  # fmt: skip
            ids["operator"].append(user.id)
    return ids


async def run_backfill(
    engine: AsyncEngine,
    config: BackfillConfig,
    *,
    progress: Callable[[str], None] = lambda _message: None,
    staff: dict[str, list[str]] | None = None,
) -> BackfillResult:
    """Write the history into the database behind ``engine``; returns what it added.

    ``staff`` holds the ids of the head-office users who act in it (keys ``admin`` and
    ``operator``, one id each at least); by default users are made for the purpose.
    """
    config.validate()
    await _refuse_a_second_history(engine, config.site_prefix)
    users = staff or await _ensure_users(engine, max(3, config.sites // 20))
    with tempfile.TemporaryDirectory(prefix="homepot-backfill-") as spool:
        settings = AnalyticsSettings(
            queue_max_events=_FLUSH_EVERY * 4, batch_size=5_000, spool_dir=Path(spool)
        )
        recorder = Recorder(engine, settings)
        builder = _Backfill(config, recorder, users)
        result = BackfillResult(start=builder.start, end=builder.end)
        factory = create_session_factory(engine)

        async def write_core() -> None:
            async with factory() as session, session.begin():
                # Parents first: devices need sites, executions need jobs and devices.
                for model in (
                    Site,
                    SiteOperatingSchedule,
                    Device,
                    Job,
                    JobExecution,
                    HealthCheck,
                    AuditLog,
                ):
                    rows = builder.core.pop(model, [])
                    if rows:
                        await _insert(session, model, rows)
                        result.core[model.__tablename__] = result.core.get(
                            model.__tablename__, 0
                        ) + len(rows)

        async def write_events() -> None:
            if recorder.queued >= _FLUSH_EVERY:
                await write_core()
                await recorder.flush()

        chain = builder.sites()
        # The marker that this chain has its history (see _refuse_a_second_history).
        builder.add_core(
            AuditLog,
            {
                "timestamp": builder.end,
                "user_id": None,
                "action": "backfill.load",
                "resource_type": "backfill",
                "resource_id": config.site_prefix,
                "ip_address": None,
                "details": {
                    "seed": config.seed,
                    "days": config.days,
                    "sites": config.sites,
                    "devices": config.devices,
                    "start": builder.start.isoformat(),
                    "end": builder.end.isoformat(),
                },
            },
        )
        all_devices = [t.device_id for _, terminals in chain for t in terminals]
        for number, (site, terminals) in enumerate(chain):
            builder.write_site(site, number, terminals)
            reboots = builder.firmware_windows(site, number)
            builder.plan_gateways(site, terminals)
            for terminal in terminals:
                terminal.reboots = reboots
                builder.live(terminal)
            builder.site_jobs(site, terminals, number)
            for terminal in terminals:
                # Before the health checks and executions that refer to it.
                builder.core.setdefault(Device, []).append(
                    _device_row(terminal, builder.start, builder.end)
                )
                terminal.samples.clear()
            await write_events()
            if (number + 1) % 10 == 0:
                progress(f"{number + 1} of {len(chain)} sites")
        builder.operator_sessions([site.site_id for site, _ in chain], all_devices)
        await write_core()
        await recorder.flush()
        # The charts read rollups: make them for the history at once, not minute by minute.
        await backfill_rollups(engine, builder.start, builder.end)
        if builder.labels is not None:
            builder.labels.close()
        result.events = dict(recorder.stats.written_by_table)
        result.faults = builder.fault_count
        if recorder.stats.spilled:
            raise BackfillError(
                f"{recorder.stats.spilled} events could not be written: {recorder.stats.last_error}"
            )
    return result


def _device_row(terminal: _Terminal, start: datetime, end: datetime) -> Row:
    created = start - timedelta(days=60)
    # An online terminal heartbeats every 30 s between its samples: it was seen at the end.
    last_sample = terminal.samples[-1]["timestamp"] if terminal.samples else None
    last_seen = end if terminal.state == "online" else last_sample
    return {
        "device_id": terminal.device_id,
        "site_id": terminal.site.site_id,
        "name": f"{terminal.site.site_id} till {terminal.device_id.rsplit('-', 1)[-1]}",
        "device_type": terminal.model.device_type,
        "status": DeviceStatus(terminal.state),
        "config": {"config_version": FIRMWARE_OLD, "receipt_printer": True},
        "firmware_version": terminal.firmware,
        "agent_version": AGENT_USER_AGENT.split("/")[1],
        "ip_address": terminal.ip_address,
        "last_seen_at": last_seen,
        "created_at": created,
        "updated_at": created,
        "simulated": True,
    }
