"""The orchestrator: dispatches due job executions, watches deadlines, retries, times out.

Each pass, in its own short transactions:

1. Deadlines: an execution dispatched or running past its deadline is retried (attempt + 1,
   exponential backoff) until the job's ``max_retries``, then it times out.
2. Unacknowledged pushes: after ``fleet.ack_timeout_seconds`` without an acknowledgement the
   execution's delivery becomes ``poll``; the device collects it from ``GET /agent/jobs``.
3. Due executions (pending, ``not_before`` reached) are claimed — ``SELECT ... FOR UPDATE SKIP
   LOCKED`` on PostgreSQL, so several server processes never claim the same one — marked
   dispatched and committed, and only then pushed through ``app.state.push_channel``,
   ``fleet.push_concurrency`` at a time, so that one slow device delays none of the others.
   A missing or failing channel leaves them to polling.

Everything lives in the database, so a restarted server simply continues. An error about a
simulated terminal is recorded as simulated, like everything else about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from homepot.analytics.error_logger import failed_pass_logger, record_error
from homepot.analytics.models import source_of
from homepot.analytics.recorder import Recorder
from homepot.config import FleetSettings
from homepot.db import utcnow
from homepot.device.models import Device
from homepot.job import executions
from homepot.job.models import ExecutionStatus, Job, JobExecution
from homepot.kit.periodic import run_periodically
from homepot.protocol.channels import PushChannel
from homepot.protocol.messages import JobCommand

logger = logging.getLogger(__name__)

# Executions handled per step of a pass: keeps each transaction short.
BATCH_SIZE = 200


def worker_id() -> str:
    """This process, as written to ``job_executions.claimed_by``."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class PassReport:
    dispatched: int = 0
    pushed: int = 0
    push_failed: int = 0
    left_for_polling: int = 0
    retried: int = 0
    timed_out: int = 0


class Orchestrator:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        recorder: Recorder,
        settings: FleetSettings,
        push_channel: Callable[[], PushChannel | None],
        *,
        claimed_by: str | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.session_factory = session_factory
        self.recorder = recorder
        self.settings = settings
        self.push_channel = push_channel
        self.claimed_by = claimed_by or worker_id()
        self.batch_size = batch_size

    @classmethod
    def for_app(cls, app: FastAPI) -> Orchestrator:
        return cls(
            app.state.session_factory,
            app.state.recorder,
            app.state.settings.fleet,
            lambda: getattr(app.state, "push_channel", None),
        )

    async def run_pass(self, now: datetime | None = None) -> PassReport:
        now = now or utcnow()
        report = PassReport()
        await self._expire_overdue(now, report)
        await self._leave_unacknowledged_for_polling(now, report)
        await self._dispatch_due(now, report)
        return report

    async def _simulated(self, device_ids: set[str]) -> set[str]:
        """Which of ``device_ids`` are simulated terminals."""
        if not device_ids:
            return set()
        async with self.session_factory() as session:
            found = await session.scalars(
                select(Device.device_id).where(Device.device_id.in_(device_ids), Device.simulated)
            )
            return set(found)

    # -- steps -----------------------------------------------------------------------------

    async def _expire_overdue(self, now: datetime, report: PassReport) -> None:
        async with self.session_factory() as session:
            overdue = (
                await session.scalars(
                    select(JobExecution)
                    .where(
                        JobExecution.status.in_(
                            (ExecutionStatus.dispatched, ExecutionStatus.running)
                        ),
                        JobExecution.deadline_at <= now,
                    )
                    .order_by(JobExecution.deadline_at)
                    .limit(self.batch_size)
                )
            ).all()
        simulated = await self._simulated({execution.device_id for execution in overdue})
        for execution in overdue:
            # One transaction each: it locks the execution's job (see executions.expire).
            async with self.session_factory() as session, session.begin():
                session.add(execution)
                outcome = await executions.expire(
                    session,
                    self.recorder,
                    execution,
                    retry_backoff_seconds=self.settings.retry_backoff_seconds,
                    now=now,
                )
            if outcome is ExecutionStatus.pending:
                report.retried += 1
                self._error(
                    "warning",
                    "JOB_DEADLINE_MISSED",
                    f"{execution.device_id} sent no result for execution {execution.id} in"
                    f" time; retry {execution.attempt} at {execution.not_before.isoformat()}",
                    execution,
                    execution.device_id in simulated,
                )
            elif outcome is ExecutionStatus.timeout:
                report.timed_out += 1
                message = execution.error_message or ""
                self._error(
                    "error", "JOB_TIMEOUT", message, execution, execution.device_id in simulated
                )

    async def _leave_unacknowledged_for_polling(self, now: datetime, report: PassReport) -> None:
        overdue = now - timedelta(seconds=self.settings.ack_timeout_seconds)
        async with self.session_factory() as session, session.begin():
            result = await session.execute(
                update(JobExecution)
                .where(
                    JobExecution.status == ExecutionStatus.dispatched,
                    JobExecution.delivery == executions.PUSH,
                    JobExecution.dispatched_at <= overdue,
                )
                .values(delivery=executions.POLL, updated_at=now)
                .returning(JobExecution.id, JobExecution.device_id)
            )
            unacknowledged = result.all()
        simulated = await self._simulated({device_id for _, device_id in unacknowledged})
        for execution_id, device_id in unacknowledged:
            report.left_for_polling += 1
            record_error(
                category="external_service",
                severity="info",
                error_code="JOB_PUSH_UNACKNOWLEDGED",
                error_message=f"{device_id} did not acknowledge the push of execution"
                f" {execution_id} within {self.settings.ack_timeout_seconds:g} s; it is left"
                " for the device to poll",
                device_id=device_id,
                context={"execution_id": execution_id},
                recorder=self.recorder,
                source=source_of(device_id in simulated),
            )

    async def _dispatch_due(self, now: datetime, report: PassReport) -> None:
        channel = self.push_channel()
        delivery = executions.PUSH if channel is not None else executions.POLL
        claimed: list[tuple[str, JobCommand]] = []
        async with self.session_factory() as session, session.begin():
            statement = (
                select(JobExecution, Job)
                .join(Job, Job.job_id == JobExecution.job_id)
                .where(
                    JobExecution.status == ExecutionStatus.pending,
                    JobExecution.not_before <= now,
                )
                .order_by(Job.priority.desc(), JobExecution.not_before, JobExecution.id)
                .limit(self.batch_size)
            )
            rows = (await session.execute(executions.locked(session, statement))).all()
            for execution, job in rows:
                if await executions.mark_dispatched(
                    session, execution, job, now=now, delivery=delivery, claimed_by=self.claimed_by
                ):
                    await session.refresh(execution)
                    claimed.append((execution.device_id, executions.command_for(execution, job)))
        # Committed before any push: a device never gets a command the database lacks.
        report.dispatched += len(claimed)
        if channel is None:
            report.left_for_polling += len(claimed)
            return
        gate = asyncio.Semaphore(self.settings.push_concurrency)

        async def push(device_id: str, command: JobCommand) -> None:
            async with gate:
                await self._push(channel, device_id, command, now, report)

        await asyncio.gather(*(push(device_id, command) for device_id, command in claimed))

    async def _push(
        self,
        channel: PushChannel,
        device_id: str,
        command: JobCommand,
        now: datetime,
        report: PassReport,
    ) -> None:
        try:
            await asyncio.wait_for(
                channel.push(device_id, command), timeout=self.settings.ack_timeout_seconds
            )
            report.pushed += 1
            return
        except Exception as exc:
            problem: Any = exc
        report.push_failed += 1
        report.left_for_polling += 1
        async with self.session_factory() as session, session.begin():
            await session.execute(
                update(JobExecution)
                .where(
                    JobExecution.id == command.execution_id,
                    JobExecution.status == ExecutionStatus.dispatched,
                )
                .values(delivery=executions.POLL, updated_at=now)
            )
        record_error(
            category="external_service",
            severity="warning",
            error_code="JOB_PUSH_FAILED",
            error_message=f"could not push execution {command.execution_id} to {device_id}:"
            f" {type(problem).__name__}: {problem}; the device gets it by polling",
            exception=problem,
            device_id=device_id,
            context={"execution_id": command.execution_id, "job_id": command.job_id},
            recorder=self.recorder,
            source=source_of(bool(await self._simulated({device_id}))),
        )

    def _error(
        self, severity: str, code: str, message: str, execution: JobExecution, simulated: bool
    ) -> None:
        record_error(
            category="external_service",
            severity=severity,
            error_code=code,
            error_message=message,
            device_id=execution.device_id,
            context={"execution_id": execution.id, "job_id": execution.job_id},
            recorder=self.recorder,
            source=source_of(simulated),
        )


async def run_pass(app: FastAPI, *, now: datetime | None = None) -> PassReport:
    """One orchestrator pass for ``app`` (what the background service runs every interval)."""
    return await Orchestrator.for_app(app).run_pass(now)


@contextlib.asynccontextmanager
async def run_orchestrator(app: FastAPI) -> AsyncIterator[None]:
    """Background service of the server: one orchestrator pass every interval."""
    orchestrator = Orchestrator.for_app(app)
    app.state.orchestrator = orchestrator
    async with run_periodically(
        "homepot-orchestrator",
        orchestrator.settings.orchestrator_interval_seconds,
        orchestrator.run_pass,
        failed_pass_logger(
            orchestrator.recorder, "JOB_ORCHESTRATOR_FAILED", "job orchestrator pass"
        ),
        leadership=app.state.leadership,
    ):
        yield
