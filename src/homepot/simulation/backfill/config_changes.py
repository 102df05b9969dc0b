"""Configuration changes of a terminal with the performance before and after them, and the
bad configuration's arrival and rollback.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from statistics import fmean
from typing import Any

from homepot.analytics.models import ConfigurationHistory
from homepot.simulation.backfill.config import FIRMWARE_OLD
from homepot.simulation.backfill.history import History, Row, Terminal
from homepot.simulation.faults import BAD_CONFIG_VERSION, Fault


def performance(terminal: Terminal, start: datetime, end: datetime) -> Row | None:
    """The terminal's means over ``[start, end)`` as the change's row keeps them; None: no
    samples then."""
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


def impact_window(history: History) -> timedelta:
    """How long before and after a change its impact is measured: three samples, ten minutes at
    least."""
    return max(timedelta(minutes=10), 3 * history.step)


def config_change(
    history: History,
    terminal: Terminal,
    when: datetime,
    parameter: str,
    old: Any,
    new: Any,
    changed_by: str,
    reason: str,
    change_type: str = "automated",
    rolled_back: str | None = None,
) -> None:
    window = impact_window(history)
    before = performance(terminal, when - window, when)
    after = performance(terminal, when, when + window)
    successful = None
    if before and after:
        error_up = after["avg_error_rate"] - before["avg_error_rate"]
        successful = (
            not (error_up > 0.5 and error_up > 0.2 * before["avg_error_rate"])
            and after["avg_network_latency_ms"] <= 1.2 * before["avg_network_latency_ms"]
        )
    if rolled_back:
        successful = False
    history.record(
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


def bad_config(history: History, terminal: Terminal, fault: Fault) -> None:
    """The faulty configuration's arrival, and its rollback when the fault ends.

    A fault still running at the end of the history has not been rolled back yet: its
    rollback would be a row in the future.
    """
    rolled_back = fault.end < history.end
    config_change(
        history,
        terminal, fault.start, "config_version", FIRMWARE_OLD, BAD_CONFIG_VERSION, "system",
        f"Configuration {BAD_CONFIG_VERSION} pushed by the release pipeline",
        rolled_back=f"Error rate rose after {BAD_CONFIG_VERSION}; restored {FIRMWARE_OLD}"
        if rolled_back else None,
    )  # fmt: skip
    if rolled_back:
        config_change(
            history,
            terminal, fault.end, "config_version", BAD_CONFIG_VERSION, FIRMWARE_OLD, "system",
            "Automatic rollback: the change made things worse",
        )  # fmt: skip
