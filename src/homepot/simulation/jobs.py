"""How a simulated terminal carries out a job: it takes a while and sometimes fails."""

from __future__ import annotations

import asyncio
from typing import Any

from homepot.protocol.messages import JobCommand, JobResult, JobResultStatus
from homepot.simulation.faults import Fault
from homepot.simulation.model import TerminalModel


async def simulate_job(
    model: TerminalModel, command: JobCommand, *, speed: float, fault: Fault | None = None
) -> JobResult:
    """Carry out a job on a simulated terminal: it takes a while and sometimes fails."""
    rng = model.rng
    seconds = {"restart": (5, 20), "config_change": (2, 8), "firmware_update": (60, 180)}
    low, high = seconds.get(command.job_type, (1, 3))
    await asyncio.sleep(rng.uniform(low, high) / speed)
    failure_share = 0.04 + (0.25 if fault is not None else 0.0)
    codes = {
        "restart": ("E_RESTART_FAILED", "the POS application did not come back after restart"),
        "config_change": ("E_CONFIG_REJECTED", "configuration refused: terminal busy"),
        "firmware_update": ("E_FIRMWARE_CHECKSUM", "firmware image checksum mismatch"),
    }
    if command.job_type not in (*codes, "health_check"):
        return JobResult(
            execution_id=command.execution_id,
            status=JobResultStatus.failed,
            error_code="E_UNSUPPORTED_JOB",
            error_message=f"this terminal cannot run {command.job_type!r} jobs",
        )
    if command.job_type in codes and rng.random() < failure_share:
        code, message = codes[command.job_type]
        return JobResult(
            execution_id=command.execution_id,
            status=JobResultStatus.failed,
            error_code=code,
            error_message=message,
        )
    output: dict[str, Any] = {}
    if command.job_type == "config_change":
        config = command.payload.get("config") or {}
        if isinstance(config, dict) and "config_version" in config:
            model.config_version = str(config["config_version"])
        output["config_version"] = model.config_version
    elif command.job_type == "firmware_update":
        version = command.payload.get("version") or command.payload.get("firmware_version")
        model.firmware_version = str(version or model.firmware_version)
        output["firmware_version"] = model.firmware_version
    return JobResult(
        execution_id=command.execution_id, status=JobResultStatus.success, output=output
    )
