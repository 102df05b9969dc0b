"""The jobs of a store: nightly prices and promotions, the midday health check, firmware in the
maintenance window, a restart after a crash, the good configuration rollouts; each device's
execution and its outcome.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from homepot.analytics.models import DeviceStateHistory, JobOutcome
from homepot.audit.models import AuditLog
from homepot.job.models import (
    ExecutionStatus,
    Job,
    JobExecution,
    JobSchedule,
    JobStatus,
    JobTargetType,
)
from homepot.simulation.backfill.chain import firmware_windows
from homepot.simulation.backfill.config import FIRMWARE_NEW, FIRMWARE_OLD, GOOD_CONFIG_VERSIONS
from homepot.simulation.backfill.config_changes import config_change
from homepot.simulation.backfill.history import History, Row, Terminal
from homepot.simulation.faults import FaultKind
from homepot.simulation.jobfailures import draw_failure
from homepot.simulation.model import SiteProfile, site_load


def new_job(
    history: History,
    job_type: str,
    target_type: JobTargetType,
    target_id: str,
    when: datetime,
    created_by: str,
    payload: Row,
    description: str,
    schedule: JobSchedule = JobSchedule.now,
) -> str:
    history.job_number += 1
    job_id = f"bf{history.config.seed}-job-{history.job_number:06d}"
    history.add_core(
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
    history.add_core(
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
    history: History,
    job_id: str,
    job_type: str,
    terminal: Terminal,
    when: datetime,
    initiated_by: str,
    durations: tuple[float, float],
) -> bool:
    """One device's execution and its outcome; True when it succeeded."""
    faulty = any(f.active_at(when) for f in terminal.faults)
    online = history.powered(terminal.site, when) and not any(
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
        duration = round(history.rng.uniform(*durations) * 1000)
        failure = draw_failure(
            history.rng,
            terminal.device_id,
            job_type,
            hardware=terminal.model.device_type,
            latency_ms=terminal.model.base_latency_ms,
            site_id=terminal.site.site_id,
            load=site_load(terminal.site, when),
            faulty=faulty,
        )
        if history.rng.random() < 0.05:
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
    history.execution_number += 1
    finished = when + timedelta(milliseconds=duration)
    history.add_core(
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
    history.record(
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
        history.error(
            terminal, finished, "external_service", "error", code or "E_JOB_FAILED",
            f"{job_type} on {terminal.device_id} ended {status}: {message}", {"job_id": job_id},
        )  # fmt: skip
    return status == "success"


def site_jobs(history: History, site: SiteProfile, terminals: list[Terminal], number: int) -> None:
    """Each trading day: prices and promotions before opening, a health check at noon;
    firmware in the maintenance window; a restart after every crash."""
    zone = ZoneInfo(site.timezone)
    operator = history.rng.choice(history.users["operator"])
    first = history.start.astimezone(zone).date()
    for offset in range(int(history.config.days) + 2):
        local_day = first + timedelta(days=offset)
        day = site.day(local_day.weekday())
        if day.is_closed or day.open_time is None:
            continue
        opening = datetime.combine(local_day, day.open_time, zone).astimezone(UTC)
        update_at = opening - timedelta(minutes=20)
        if history.start <= update_at < history.end - timedelta(minutes=30):
            version = f"pt-{local_day.isoformat()}"
            job_id = new_job(
                history, "config_change", JobTargetType.site, site.site_id, update_at, operator,
                {"config": {"price_table_version": version, "promotions_version": version}},
                "Nightly prices and promotions",
            )  # fmt: skip
            for terminal in terminals:
                moment = update_at + timedelta(seconds=history.rng.uniform(0, 30))
                if execute(history, job_id, "config_change", terminal, moment, operator, (2, 8)):
                    previous = f"pt-{(local_day - timedelta(days=1)).isoformat()}"
                    for parameter in ("price_table_version", "promotions_version"):
                        config_change(
                            history, terminal, moment, parameter, previous, version, operator,
                            "Nightly prices and promotions",
                        )  # fmt: skip
        noon = datetime.combine(local_day, time(12, 30), zone).astimezone(UTC)
        if history.start <= noon < history.end and day.is_open_at(time(12, 30)):
            job_id = new_job(
                history, "health_check", JobTargetType.site, site.site_id, noon, "system", {},
                "Daily health check",
            )  # fmt: skip
            for terminal in terminals:
                execute(history, job_id, "health_check", terminal, noon, "system", (1, 4))
    if history.config.good_config_rollouts:
        good_config_rollout(history, site, terminals, number, operator)
    for window in firmware_windows(history, site, number):
        admin = history.users["admin"][0]
        job_id = new_job(
            history, "firmware_update", JobTargetType.site, site.site_id, window, admin,
            {"version": FIRMWARE_NEW}, f"Firmware {FIRMWARE_NEW} rollout",
            JobSchedule.maintenance_window,
        )  # fmt: skip
        for terminal in terminals:
            update_firmware(history, terminal, job_id, window, admin)
    for terminal in terminals:
        for fault in terminal.faults:
            if fault.kind is FaultKind.memory_leak_crash and fault.end < history.end:
                job_id = new_job(
                    history, "restart", JobTargetType.device, terminal.device_id, fault.end,
                    operator, {}, "Restart after a crash",
                )  # fmt: skip
                execute(history, job_id, "restart", terminal, fault.end, operator, (5, 20))


def good_config_rollout(
    history: History, site: SiteProfile, terminals: list[Terminal], number: int, operator: str
) -> None:
    """A good configuration version at 11:00 local on a trading day mid-history: even
    sites get the first of GOOD_CONFIG_VERSIONS, odd ones the second, a day later."""
    zone = ZoneInfo(site.timezone)
    version = GOOD_CONFIG_VERSIONS[number % 2]
    first = history.start.astimezone(zone).date() + timedelta(days=int(history.config.days) // 2)
    for offset in range(number % 2, number % 2 + 3):
        local_day = first + timedelta(days=offset)
        when = datetime.combine(local_day, time(11), zone).astimezone(UTC)
        if not site.day(local_day.weekday()).is_open_at(time(11)) or not (
            history.start <= when < history.end - timedelta(hours=2)
        ):
            continue
        job_id = new_job(
            history, "config_change", JobTargetType.site, site.site_id, when, operator,
            {"config": {"config_version": version}}, f"Roll out configuration {version}",
        )  # fmt: skip
        for terminal in terminals:
            moment = when + timedelta(seconds=history.rng.uniform(0, 60))
            if execute(history, job_id, "config_change", terminal, moment, operator, (2, 8)):
                config_change(
                    history, terminal, moment, "config_version", FIRMWARE_OLD, version, operator,
                    f"Roll out configuration {version}",
                )  # fmt: skip
        return


def update_firmware(
    history: History, terminal: Terminal, job_id: str, when: datetime, admin: str
) -> None:
    previous = terminal.state
    state_at(
        history,
        terminal,
        when,
        previous,
        "updating",
        f"Firmware update {FIRMWARE_NEW} started",
        job_id,
    )
    if execute(history, job_id, "firmware_update", terminal, when, admin, (60, 180)):
        terminal.firmware = FIRMWARE_NEW
    done = when + timedelta(minutes=4)
    state_at(
        history,
        terminal,
        done,
        "updating",
        previous,
        f"Firmware update {FIRMWARE_NEW} finished",
        job_id,
    )


def state_at(
    history: History,
    terminal: Terminal,
    when: datetime,
    old: str,
    new: str,
    reason: str,
    job_id: str,
) -> None:
    history.record(
        DeviceStateHistory,
        timestamp=when,
        device_id=terminal.device_id,
        previous_state=old,
        new_state=new,
        changed_by="system",
        reason=reason,
        extra_data={"job_id": job_id},
    )
