"""One job on one device: expansion, dispatch, acknowledgement, results, retries, cancel.

Every change of an execution's status is a guarded update (``... WHERE id = :id AND status
IN (...)``) whose row count says whether this caller made the change. So a result and a
timeout racing for the same execution, or two server processes, can never both finish it:
each finished execution writes exactly one ``job_outcomes`` row. Work on a job's executions
that can change the job's own status first locks the job row (PostgreSQL), always job before
execution, so that the last two results of a job cannot both miss that the job is done.

Services flush, never commit: the request (or the orchestrator's pass) owns the transaction,
and outcome rows are queued with ``record_after_commit`` so a rolled-back change leaves none.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, TypeVarTuple

from sqlalchemy import ColumnElement, Select, and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from homepot.analytics.config_history import change_config
from homepot.analytics.models import JobOutcome, SiteOperatingSchedule, Source, source_of
from homepot.analytics.recorder import Recorder
from homepot.audit.service import Actor, write_audit_log
from homepot.config import Settings, get_settings
from homepot.db import utcnow
from homepot.device.models import Device
from homepot.job.models import (
    FINISHED_EXECUTION_STATES,
    ExecutionStatus,
    Job,
    JobExecution,
    JobSchedule,
    JobStatus,
    JobTargetType,
)
from homepot.kit.redaction import mask_text, redact
from homepot.protocol.messages import JobCommand, JobResult, JobResultStatus
from homepot.site.models import Site
from homepot.site.recommended import (
    DEFAULT_DURATION_MINUTES,
    next_recommended_start,
    site_recommendations,
)
from homepot.site.windows import next_maintenance_window

PUSH: Final = "push"
POLL: Final = "poll"
FINISHED_JOB_STATES: Final = frozenset({JobStatus.completed, JobStatus.failed, JobStatus.cancelled})
_UNFINISHED: Final = tuple(s for s in ExecutionStatus if s not in FINISHED_EXECUTION_STATES)
_IN_FLIGHT: Final = (ExecutionStatus.dispatched, ExecutionStatus.running)


class ExecutionNotFound(LookupError):
    def __init__(self, execution_id: int, device_id: str) -> None:
        super().__init__(f"execution {execution_id} does not exist for device {device_id}")


class ExecutionNotDispatched(Exception):
    def __init__(self, execution: JobExecution) -> None:
        super().__init__(
            f"execution {execution.id} is not dispatched to this device now: it waits until"
            f" {execution.not_before.isoformat()} (attempt {execution.attempt + 1}) and will"
            " be sent again then"
        )


class JobAlreadyFinished(Exception):
    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.job_id!r} has already {job.status.value}; nothing to cancel")


@dataclass(frozen=True)
class FinishAnswer:
    """What a device is told about its result: stored, or ignored because already finished."""

    execution: JobExecution
    accepted: bool
    detail: str


# -- creation ------------------------------------------------------------------------------


async def expand_job(session: AsyncSession, job: Job, now: datetime) -> list[JobExecution]:
    """One pending execution per target device; sets the job's status and ``scheduled_for``.

    With ``schedule: maintenance_window`` each execution waits for its own site's next
    declared window, with ``recommended_window`` for its site's next recommended one
    (:mod:`homepot.site.recommended`; a site without one falls back to its declared window),
    and ``scheduled_for`` is the earliest of them. A target without devices gives a
    job that is completed at once, with no executions.
    """
    condition = {
        JobTargetType.device: Device.device_id == job.target_id,
        JobTargetType.site: Device.site_id == job.target_id,
        JobTargetType.device_type: Device.device_type == job.target_id,
    }[job.target_type]
    devices = (
        await session.execute(
            select(Device.device_id, Device.site_id).where(condition).order_by(Device.device_id)
        )
    ).all()
    if not devices:
        job.status, job.started_at, job.completed_at = JobStatus.completed, now, now
        return []
    windows: dict[str, datetime] = {}
    if job.schedule is not JobSchedule.now:
        windows = await _maintenance_windows(
            session,
            {site_id for _, site_id in devices},
            now,
            recommended=job.schedule is JobSchedule.recommended_window,
            duration_minutes=max(DEFAULT_DURATION_MINUTES, math.ceil(job.timeout_seconds / 60)),
        )
    executions = [
        JobExecution(
            job_id=job.job_id,
            device_id=device_id,
            status=ExecutionStatus.pending,
            attempt=0,
            not_before=windows.get(site_id, now),
            created_at=now,
            updated_at=now,
        )
        for device_id, site_id in devices
    ]
    session.add_all(executions)
    if job.schedule is not JobSchedule.now:
        job.scheduled_for = min(execution.not_before for execution in executions)
    waiting = job.scheduled_for is not None and job.scheduled_for > now
    job.status = JobStatus.scheduled if waiting else JobStatus.pending
    return executions


async def _maintenance_windows(
    session: AsyncSession,
    site_ids: set[str],
    now: datetime,
    *,
    recommended: bool,
    duration_minutes: int,
) -> dict[str, datetime]:
    sites = (await session.scalars(select(Site).where(Site.site_id.in_(site_ids)))).all()
    schedules: defaultdict[str, list[SiteOperatingSchedule]] = defaultdict(list)
    for schedule in await session.scalars(
        select(SiteOperatingSchedule).where(SiteOperatingSchedule.site_id.in_(site_ids))
    ):
        schedules[schedule.site_id].append(schedule)
    starts: dict[str, datetime] = {}
    for site in sites:
        start = None
        if recommended and duration_minutes <= 24 * 60:
            advice = await site_recommendations(
                session,
                site_id=site.site_id,
                timezone=site.timezone,
                schedules=schedules[site.site_id],
                now=now,
                duration_minutes=duration_minutes,
            )
            start = next_recommended_start(advice, site.timezone, now)
        if start is None:
            start = next_maintenance_window(schedules[site.site_id], site.timezone, now)
        starts[site.site_id] = start
    return starts


async def list_executions(session: AsyncSession, job_id: str) -> Sequence[JobExecution]:
    statement = (
        select(JobExecution).where(JobExecution.job_id == job_id).order_by(JobExecution.device_id)
    )
    return (await session.scalars(statement)).all()


# -- dispatch ------------------------------------------------------------------------------


Columns = TypeVarTuple("Columns")


def locked(session: AsyncSession, statement: Select[*Columns]) -> Select[*Columns]:
    """Rows another transaction holds are skipped on PostgreSQL (SQLite runs one process)."""
    if session.get_bind().dialect.name == "postgresql":
        return statement.with_for_update(skip_locked=True, of=JobExecution)
    return statement


def command_for(execution: JobExecution, job: Job) -> JobCommand:
    assert execution.dispatched_at is not None
    return JobCommand(
        execution_id=execution.id,
        job_id=job.job_id,
        job_type=job.job_type,
        payload=job.payload,
        timeout_seconds=job.timeout_seconds,
        attempt=execution.attempt,
        issued_at=execution.dispatched_at,
    )


async def mark_dispatched(
    session: AsyncSession,
    execution: JobExecution,
    job: Job,
    *,
    now: datetime,
    delivery: str,
    claimed_by: str,
) -> bool:
    """Pending → dispatched; False when someone else changed the execution first."""
    result = await session.execute(
        update(JobExecution)
        .where(JobExecution.id == execution.id, JobExecution.status == ExecutionStatus.pending)
        .values(
            status=ExecutionStatus.dispatched,
            dispatched_at=now,
            first_dispatched_at=execution.first_dispatched_at or now,
            deadline_at=now + timedelta(seconds=job.timeout_seconds),
            acked_at=None,
            delivery=delivery,
            claimed_by=claimed_by,
            updated_at=now,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def waiting_for_poll(
    device_id: ColumnElement[str] | InstrumentedAttribute[str],
) -> ColumnElement[bool]:
    """The executions a poll of ``device_id`` hands out: due pending ones, and dispatched
    ones not pushed or whose push is unacknowledged past the ack timeout.

    Bound parameters ``poll_now`` and ``poll_ack_overdue`` (now minus the ack timeout) are
    given when the statement runs, so that statements built on it are built once.
    """
    return and_(
        JobExecution.device_id == device_id,
        or_(
            and_(
                JobExecution.status == ExecutionStatus.pending,
                JobExecution.not_before <= bindparam("poll_now"),
            ),
            and_(
                JobExecution.status == ExecutionStatus.dispatched,
                or_(
                    JobExecution.delivery.is_(None),
                    JobExecution.delivery != PUSH,
                    JobExecution.dispatched_at <= bindparam("poll_ack_overdue"),
                ),
            ),
        ),
    )


def _poll_statement() -> Select[JobExecution, Job]:
    return (
        select(JobExecution, Job)
        .join(Job, Job.job_id == JobExecution.job_id)
        .where(waiting_for_poll(bindparam("poll_device_id")))
        .order_by(Job.priority.desc(), JobExecution.not_before, JobExecution.id)
        .limit(bindparam("poll_limit"))
    )


# Built once (a poll runs with every report): constructing the statement and its cache key
# cost more than a millisecond of CPU per poll.
_POLL = _poll_statement()
_POLL_LOCKED = _POLL.with_for_update(of=JobExecution, skip_locked=True)


async def poll_commands(
    session: AsyncSession,
    device_id: str,
    limit: int,
    *,
    ack_timeout_seconds: float,
    now: datetime | None = None,
) -> list[JobCommand]:
    """What a polling device should run: due executions and unacknowledged ones.

    A pushed execution is handed out here only once its acknowledgement is overdue, so a
    device that received the push does not also get it by polling. Everything returned is
    marked dispatched with delivery ``poll``.
    """
    now = now or utcnow()
    parameters = {
        "poll_device_id": device_id,
        "poll_now": now,
        "poll_ack_overdue": now - timedelta(seconds=ack_timeout_seconds),
        "poll_limit": limit,
    }
    statement = _POLL_LOCKED if session.get_bind().dialect.name == "postgresql" else _POLL
    commands = []
    for execution, job in (await session.execute(statement, parameters)).all():
        if execution.status is ExecutionStatus.pending:
            handed_out = await mark_dispatched(
                session, execution, job, now=now, delivery=POLL, claimed_by=POLL
            )
        else:
            result = await session.execute(
                update(JobExecution)
                .where(
                    JobExecution.id == execution.id,
                    JobExecution.status == ExecutionStatus.dispatched,
                )
                .values(delivery=POLL, updated_at=now)
            )
            handed_out = bool(result.rowcount)  # type: ignore[attr-defined]
        if handed_out:
            await session.refresh(execution)
            commands.append(command_for(execution, job))
    return commands


# -- the device's answers ------------------------------------------------------------------


async def _own_execution(session: AsyncSession, device_id: str, execution_id: int) -> JobExecution:
    execution = await session.get(JobExecution, execution_id)
    if execution is None or execution.device_id != device_id:
        # Another device's execution is reported as missing: its existence is not theirs.
        raise ExecutionNotFound(execution_id, device_id)
    return execution


async def _lock_job(session: AsyncSession, job_id: str) -> Job:
    statement = select(Job).where(Job.job_id == job_id).execution_options(populate_existing=True)
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update(of=Job)
    job = await session.scalar(statement)
    assert job is not None  # executions are deleted with their job
    return job


def _job_started(job: Job, now: datetime) -> None:
    if job.status in (JobStatus.pending, JobStatus.scheduled):
        job.status = JobStatus.running
        job.started_at = job.started_at or now


async def acknowledge(
    session: AsyncSession, device_id: str, execution_id: int, *, now: datetime | None = None
) -> JobExecution:
    """The device has the job and is running it: dispatched → running.

    Acknowledging again, or acknowledging a finished execution, changes nothing and returns
    its current state. An execution waiting for a retry raises ExecutionNotDispatched.
    """
    now = now or utcnow()
    execution = await _own_execution(session, device_id, execution_id)
    if execution.status is ExecutionStatus.pending:
        raise ExecutionNotDispatched(execution)
    if execution.status is not ExecutionStatus.dispatched:
        return execution
    job = await session.get(Job, execution.job_id)
    assert job is not None
    # Only the job's first acknowledgement changes the job: the others need not queue on it.
    starts_job = job.status in (JobStatus.pending, JobStatus.scheduled)
    if starts_job:
        job = await _lock_job(session, execution.job_id)
    result = await session.execute(
        update(JobExecution)
        .where(JobExecution.id == execution.id, JobExecution.status == ExecutionStatus.dispatched)
        .values(status=ExecutionStatus.running, acked_at=now, updated_at=now)
    )
    if result.rowcount and starts_job:  # type: ignore[attr-defined]
        _job_started(job, now)
    await session.refresh(execution)
    return execution


async def finish(
    session: AsyncSession,
    recorder: Recorder,
    device_id: str,
    result: JobResult,
    *,
    settings: Settings | None = None,
    now: datetime | None = None,
) -> FinishAnswer:
    """Store the device's result: success or failed, one job outcome, the job's own status.

    A result for an execution that has already finished (a duplicate, or one that arrives
    after a timeout or a cancel) is ignored and says so. A successful ``config_change``
    applies ``payload["config"]`` to the device; a successful ``firmware_update`` sets the
    device's firmware version from ``payload["version"]``.
    """
    now = now or utcnow()
    execution = await _own_execution(session, device_id, result.execution_id)
    if execution.status in FINISHED_EXECUTION_STATES:
        return _ignored(execution)
    job = await _lock_job(session, execution.job_id)
    status = ExecutionStatus(result.status.value)
    error_code = result.error_code if result.status is JobResultStatus.failed else None
    error_message = result.error_message if result.status is JobResultStatus.failed else None
    # What a device reports is stored like any free text: secrets and card numbers masked.
    changed = await _finish_execution(
        session,
        execution,
        _UNFINISHED,
        status=status,
        now=now,
        error_code=error_code,
        error_message=mask_text(error_message) if error_message else None,
        result=redact(
            result.model_dump(mode="json", include={"output", "started_at", "finished_at"})
        ),
    )
    if not changed:
        return _ignored(execution)
    device = await session.get(Device, device_id)
    assert device is not None
    if status is ExecutionStatus.success:
        await _apply_success(session, recorder, job, device, settings or get_settings(), now)
    _job_started(job, now)
    _record_outcome(session, recorder, job, execution, device.site_id, device.source)
    await _settle_job(session, job, now)
    return FinishAnswer(execution, True, f"execution {execution.id} finished as {status.value}")


def _ignored(execution: JobExecution) -> FinishAnswer:
    return FinishAnswer(
        execution,
        False,
        f"execution {execution.id} had already finished as {execution.status.value};"
        " this result was ignored",
    )


async def _finish_execution(
    session: AsyncSession,
    execution: JobExecution,
    from_states: Sequence[ExecutionStatus],
    *,
    status: ExecutionStatus,
    now: datetime,
    error_code: str | None = None,
    error_message: str | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    changed = await session.execute(
        update(JobExecution)
        .where(JobExecution.id == execution.id, JobExecution.status.in_(from_states))
        .values(
            status=status,
            finished_at=now,
            error_code=error_code,
            error_message=error_message,
            result=result,
            updated_at=now,
        )
    )
    await session.refresh(execution)
    return bool(changed.rowcount)  # type: ignore[attr-defined]


async def _apply_success(
    session: AsyncSession,
    recorder: Recorder,
    job: Job,
    device: Device,
    settings: Settings,
    now: datetime,
) -> None:
    if job.job_type == "config_change" and job.payload.get("config"):
        await change_config(
            session,
            recorder,
            entity_type="device",
            entity=device,
            patch=job.payload["config"],
            changed_by=job.created_by or "system",
            reason=f"config_change job {job.job_id}: {job.description or 'no description'}",
            # A rollback an operator accepted from the configuration impact insights.
            change_type="ai_recommended" if job.payload.get("recommendation_id") else "automated",
            settings=settings,
            now=now,
        )
    elif job.job_type == "firmware_update":
        version = job.payload.get("version") or job.payload.get("firmware_version")
        if isinstance(version, str) and version:
            device.firmware_version = version


def _record_outcome(
    session: AsyncSession,
    recorder: Recorder,
    job: Job,
    execution: JobExecution,
    site_id: str | None,
    source: Source,
    **extra: Any,
) -> None:
    assert execution.finished_at is not None
    duration_ms = None
    if execution.first_dispatched_at is not None:
        elapsed = execution.finished_at - execution.first_dispatched_at
        duration_ms = round(elapsed.total_seconds() * 1000)
    recorder.record_after_commit(
        session,
        JobOutcome,
        timestamp=execution.finished_at,
        job_id=job.job_id,
        job_type=job.job_type,
        device_id=execution.device_id,
        status=execution.status.value,
        duration_ms=duration_ms,
        error_code=execution.error_code,
        error_message=execution.error_message,
        retry_count=execution.attempt,
        initiated_by=job.created_by,
        source=source,
        extra_data={
            "execution_id": execution.id,
            "delivery": execution.delivery,
            "site_id": site_id,
            "attempts": execution.attempt + (execution.first_dispatched_at is not None),
            "target_type": job.target_type.value,
            "target_id": job.target_id,
            **extra,
        },
    )


async def _settle_job(session: AsyncSession, job: Job, now: datetime) -> None:
    """Once every execution has finished, the job is completed, failed or cancelled."""
    if job.status in FINISHED_JOB_STATES:
        return
    statuses = set(
        (
            await session.scalars(
                select(JobExecution.status).where(JobExecution.job_id == job.job_id).distinct()
            )
        ).all()
    )
    if not statuses <= FINISHED_EXECUTION_STATES:
        return
    if ExecutionStatus.cancelled in statuses:
        job.status = JobStatus.cancelled
    elif statuses & {ExecutionStatus.failed, ExecutionStatus.timeout}:
        job.status = JobStatus.failed
    else:
        job.status = JobStatus.completed
    job.completed_at = now


# -- deadlines and cancel ------------------------------------------------------------------


async def expire(
    session: AsyncSession,
    recorder: Recorder,
    execution: JobExecution,
    *,
    retry_backoff_seconds: float,
    now: datetime,
) -> ExecutionStatus | None:
    """An execution past its deadline without a result: retry it, or time it out.

    Retry number ``n`` (attempt ``n``) waits ``retry_backoff_seconds * 2**(n-1)``. After
    ``job.max_retries`` retries the execution times out. Returns the new status, or None when
    another transaction changed the execution first.
    """
    job = await _lock_job(session, execution.job_id)
    overdue = and_(
        JobExecution.id == execution.id,
        JobExecution.status.in_(_IN_FLIGHT),
        JobExecution.deadline_at <= now,
        JobExecution.attempt == execution.attempt,
    )
    if execution.attempt < job.max_retries:
        backoff = timedelta(seconds=retry_backoff_seconds * 2**execution.attempt)
        retried = await session.execute(
            update(JobExecution)
            .where(overdue)
            .values(
                status=ExecutionStatus.pending,
                attempt=JobExecution.attempt + 1,
                not_before=now + backoff,
                deadline_at=None,
                dispatched_at=None,
                acked_at=None,
                claimed_by=None,
                updated_at=now,
            )
        )
        await session.refresh(execution)
        return ExecutionStatus.pending if retried.rowcount else None  # type: ignore[attr-defined]
    message = (
        f"{execution.device_id} reported no result within {job.timeout_seconds} s"
        f" ({execution.attempt + 1} attempt(s))"
    )
    timed_out = await session.execute(
        update(JobExecution)
        .where(overdue)
        .values(
            status=ExecutionStatus.timeout,
            finished_at=now,
            error_code="JOB_TIMEOUT",
            error_message=message,
            updated_at=now,
        )
    )
    await session.refresh(execution)
    if not timed_out.rowcount:  # type: ignore[attr-defined]
        return None
    target = (
        await session.execute(
            select(Device.site_id, Device.simulated).where(Device.device_id == execution.device_id)
        )
    ).first()
    site_id, simulated = target if target is not None else (None, False)
    _record_outcome(session, recorder, job, execution, site_id, source_of(simulated))
    await _settle_job(session, job, now)
    return ExecutionStatus.timeout


async def cancel_job(
    session: AsyncSession,
    recorder: Recorder,
    job_id: str,
    actor: Actor,
    *,
    now: datetime | None = None,
) -> Job:
    """Cancel every unfinished execution (one ``cancelled`` outcome each) and the job.

    Cancelling a cancelled job again changes nothing; a completed or failed job raises
    JobAlreadyFinished.
    """
    now = now or utcnow()
    job = await _lock_job(session, job_id)
    if job.status is JobStatus.cancelled:
        return job
    if job.status in FINISHED_JOB_STATES:
        raise JobAlreadyFinished(job)
    rows = (
        await session.execute(
            select(JobExecution, Device.site_id, Device.simulated)
            .join(Device, Device.device_id == JobExecution.device_id)
            .where(JobExecution.job_id == job_id, JobExecution.status.in_(_UNFINISHED))
        )
    ).all()
    cancelled = 0
    for execution, site_id, simulated in rows:
        if await _finish_execution(
            session,
            execution,
            _UNFINISHED,
            status=ExecutionStatus.cancelled,
            now=now,
            error_message=f"cancelled by {actor.user_id}",
        ):
            cancelled += 1
            _record_outcome(
                session,
                recorder,
                job,
                execution,
                site_id,
                source_of(simulated),
                cancelled_by=actor.user_id,
            )
    job.status = JobStatus.cancelled
    job.completed_at = now
    write_audit_log(
        session,
        actor,
        action="job.cancel",
        resource_type="job",
        resource_id=job_id,
        details={"cancelled_executions": cancelled},
    )
    await session.flush()
    return job
