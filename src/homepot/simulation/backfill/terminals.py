"""One terminal lived through the window, step by step: its samples, the agent's requests and
health checks, its states (online, offline), its faults and their error logs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from homepot.analytics.models import APIRequestLog, DeviceMetrics, DeviceStateHistory
from homepot.device.models import HealthCheck
from homepot.simulation.backfill.config import AGENT_USER_AGENT
from homepot.simulation.backfill.config_changes import bad_config
from homepot.simulation.backfill.history import History, Row, Terminal
from homepot.simulation.faults import (
    BAD_CONFIG_VERSION,
    GATEWAY_WARNING_CODE,
    LINK_WARNING_CODE,
    NO_EFFECT,
    PAYMENT_TIMEOUT_CODE,
    Fault,
    FaultEffects,
    FaultKind,
    warning_counts,
)
from homepot.simulation.model import FIRMWARE_REBOOT

# The server's watchdog marks a silent terminal offline after this long (fleet settings).
_OFFLINE_AFTER = timedelta(seconds=90)


def live_through(history: History, terminal: Terminal) -> None:
    """Walk one terminal through the window: samples, requests, states, faults."""
    moment = history.start
    model = terminal.model
    fault: Fault | None = None
    unreachable_since: datetime | None = None
    offline_cause: str | None = None
    was_on = False
    switched_off_at = history.start
    reboots = list(terminal.reboots)
    rebooting_until = history.start
    # Settlements and log rotations, in time order; labelled when the terminal is on.
    benign = model.benign_events(history.start, history.end)
    benign.sort(key=lambda event: event.start)
    while moment < history.end:
        on = history.powered(terminal.site, moment)
        if fault is not None and moment >= fault.end:
            if fault.kind is FaultKind.memory_leak_crash:
                model.boot(fault.end)
            fault = None
        if on and not was_on:
            model.boot(moment)  # switched on in the morning
            switched_off_at = history.powered_until(terminal.site, moment)
        was_on = on
        planned = terminal.planned
        while planned and planned[0].end <= moment:
            planned.pop(0)  # the terminal was off, or in another fault: it missed it
        if fault is None and on and planned and planned[0].precursor_start <= moment:
            fault = planned.pop(0)
            terminal.faults.append(fault)
            history.fault_count += 1
            history.label(fault)
        if fault is None and on:
            fault = history.planner.maybe_start(
                terminal.device_id,
                terminal.site.site_id,
                moment,
                history.step,
                powered_until=switched_off_at,
            )
            if fault is not None:
                terminal.faults.append(fault)
                history.fault_count += 1
                history.label(fault)
        while reboots and reboots[0] <= moment:
            reboot = reboots.pop(0)
            if on:
                history.label(model.firmware_reboot(reboot, terminal.site.site_id))
                rebooting_until = reboot + FIRMWARE_REBOOT
        while benign and benign[0].start < moment + history.step:
            event = benign.pop(0)
            if on:
                history.label(event)
        effects = terminal.model.effects_of(fault, moment) if on else NO_EFFECT
        silent = not on or effects.crashed or moment < rebooting_until
        if silent or not effects.reachable:
            if unreachable_since is None:
                unreachable_since = moment
            # Silent for this whole step: the watchdog's 90 s may run out within it.
            offline_at = unreachable_since + _OFFLINE_AFTER
            if terminal.state == "online" and offline_at < moment + history.step:
                extra = (
                    {"fault": fault.kind.value}
                    if fault is not None and on and fault.active_at(moment)
                    else None
                )
                change_state(
                    history,
                    terminal,
                    max(moment, offline_at),
                    "offline",
                    "No heartbeat for 90 s",
                    extra,
                )
                offline_cause = (
                    "Heartbeat received after a restart"
                    if effects.crashed
                    else "Heartbeat received: the link is back"
                    if on
                    else "Heartbeat received: terminal switched on"
                )
        if not silent:
            record_sample(history, terminal, moment, effects, fault)
        if not silent and effects.reachable:
            if terminal.state != "online":
                change_state(
                    history, terminal, moment, "online", offline_cause or "Heartbeat received", None
                )
            unreachable_since = None
            report_requests(history, terminal, moment)
        moment += history.step
    for fault_done in terminal.faults:
        if fault_done.kind is FaultKind.bad_config_version:
            bad_config(history, terminal, fault_done)


def change_state(
    history: History, terminal: Terminal, moment: datetime, new: str, reason: str, extra: Row | None
) -> None:
    if terminal.state == new:
        return
    history.record(
        DeviceStateHistory,
        timestamp=min(moment + timedelta(seconds=history.rng.uniform(0, 20)), history.end),
        device_id=terminal.device_id,
        previous_state=terminal.state,
        new_state=new,
        changed_by="system",
        reason=reason,
        extra_data=extra,
    )
    terminal.state = new


def record_sample(
    history: History,
    terminal: Terminal,
    moment: datetime,
    effects: FaultEffects,
    fault: Fault | None,
) -> None:
    fields, timeouts = terminal.model.sample(moment, history.step, effects)
    when = moment + timedelta(seconds=history.rng.uniform(0, 5))
    fields["extra_metrics"]["firmware_version"] = terminal.firmware
    history.record(
        DeviceMetrics,
        timestamp=when,
        device_id=terminal.device_id,
        collection_interval_seconds=history.step.total_seconds(),
        **fields,
    )
    terminal.samples.append({"timestamp": when, **fields})
    transaction_errors(history, terminal, when, fields, timeouts, effects, fault)
    trouble_warnings(history, terminal, when, effects)


def trouble_warnings(
    history: History, terminal: Terminal, moment: datetime, effects: FaultEffects
) -> None:
    """Warnings of a link or a gateway in trouble: retransmissions to the server, slow
    answers from the gateway. A healthy terminal has a few too."""
    rng = history.trouble_rng
    link, gateway = warning_counts(rng, effects, history.step.total_seconds() / 3600)
    for _ in range(link):
        share = rng.uniform(4, 25)
        history.error(terminal, moment, "api", "warning", LINK_WARNING_CODE,
                   f"{share:.0f} % of segments to the server retransmitted in the last minute",
                   {"retransmit_percent": round(share, 1)}, rng=rng)  # fmt: skip
    for _ in range(gateway):
        seconds = rng.uniform(8, 28)
        history.error(terminal, moment, "external_service", "warning", GATEWAY_WARNING_CODE,
                   f"Payment gateway slow: {terminal.gateway} answered in {seconds:.0f} s",
                   {"gateway": terminal.gateway, "answer_s": round(seconds, 1)},
                   rng=rng)  # fmt: skip


def transaction_errors(
    history: History,
    terminal: Terminal,
    moment: datetime,
    fields: Row,
    timeouts: int,
    effects: FaultEffects,
    fault: Fault | None,
) -> None:
    """One error log per failed transaction, in agreement with the reported error rate."""
    count = fields["transaction_count"]
    failures = sum(
        history.rng.random() < terminal.model.base_error_rate / 100 for _ in range(count)
    )
    for _ in range(timeouts):
        gateway = fault.details.get("gateway") if fault else terminal.gateway
        history.error(
            terminal, moment, "external_service", "critical", PAYMENT_TIMEOUT_CODE,
            f"Payment gateway timeout: {gateway} did not answer within 30 s",
            {"gateway": gateway, "timeout_s": 30},
        )  # fmt: skip
    for _ in range(failures):
        if effects.disk_percent is not None and effects.disk_percent > 95:
            history.error(terminal, moment, "database", "error", "LOCAL_STORE_WRITE_FAILED",
                       "Transaction journal write failed: no space left on device",
                       {"disk_percent": fields["disk_percent"]})  # fmt: skip
        elif effects.config_version == BAD_CONFIG_VERSION:
            history.error(terminal, moment, "validation", "error", "CONFIG_VALIDATION_FAILED",
                       f"Tax rule missing in configuration {BAD_CONFIG_VERSION}",
                       {"config_version": BAD_CONFIG_VERSION})  # fmt: skip
        else:
            code, message = history.rng.choice(
                (
                    ("CARD_READER_ERROR", "Card reader returned an unreadable chip response"),
                    ("PAYMENT_DECLINED_TECHNICAL", "Acquirer declined: technical error 96"),
                    ("RECEIPT_PRINTER_JAM", "Receipt printer reported a paper jam"),
                )
            )
            history.error(terminal, moment, "external_service", "warning", code, message, None)


def report_requests(history: History, terminal: Terminal, moment: datetime) -> None:
    """The agent's own API calls: a heartbeat and a telemetry batch per interval."""
    for offset, endpoint, status, request_size, response_size in (
        (0.0, "/api/v1/agent/heartbeat", 200, 142, 48),
        (0.4, "/api/v1/agent/telemetry", 202, 610, 15),
    ):
        history.record(
            APIRequestLog,
            timestamp=moment + timedelta(seconds=offset + history.rng.uniform(0, 2)),
            request_id=f"{history.rng.getrandbits(64):016x}",
            endpoint=endpoint,
            route=endpoint,
            method="POST",
            status_code=status,
            response_time_ms=round(history.rng.lognormvariate(1.8, 0.4), 2),
            ip_address=terminal.ip_address,
            user_agent=AGENT_USER_AGENT,
            request_size_bytes=request_size,
            response_size_bytes=response_size,
        )
    history.add_core(
        HealthCheck,
        {
            "device_id": terminal.device_id,
            "timestamp": moment,
            "status": "healthy" if terminal.model.base_error_rate < 2 else "degraded",
            "response_time_ms": round(history.rng.uniform(15, 60), 1),
            "details": {"firmware_version": terminal.firmware},
        },
    )
