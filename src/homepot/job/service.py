"""Jobs: created here, run by the orchestrator."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics.recorder import Recorder
from homepot.audit.service import Actor, write_audit_log
from homepot.db import utcnow
from homepot.device.models import Device
from homepot.job import executions
from homepot.job.models import Job, JobExecution, JobStatus, JobTargetType
from homepot.job.schemas import JobCreate, JobType
from homepot.kit.pagination import PageParams, fetch_page
from homepot.kit.redaction import mask_text
from homepot.site.models import Site


class JobNotFound(LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} does not exist")


class UnknownTarget(LookupError):
    def __init__(self, target_type: JobTargetType, target_id: str) -> None:
        super().__init__(f"the target {target_type.value} {target_id!r} does not exist")


def new_job_id() -> str:
    return f"job-{secrets.token_hex(6)}"


async def get_job(session: AsyncSession, job_id: str) -> Job:
    job = await session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


async def list_jobs(
    session: AsyncSession,
    params: PageParams,
    *,
    status: JobStatus | None = None,
    job_type: JobType | None = None,
    target_id: str | None = None,
) -> tuple[Sequence[Job], int]:
    statement = select(Job).order_by(Job.created_at.desc(), Job.job_id.desc())
    if status is not None:
        statement = statement.where(Job.status == status)
    if job_type is not None:
        statement = statement.where(Job.job_type == job_type.value)
    if target_id is not None:
        statement = statement.where(Job.target_id == target_id)
    return await fetch_page(session, statement, params)


async def get_job_with_executions(
    session: AsyncSession, job_id: str
) -> tuple[Job, Sequence[JobExecution]]:
    job = await get_job(session, job_id)
    return job, await executions.list_executions(session, job_id)


async def create_job(session: AsyncSession, actor: Actor, data: JobCreate) -> Job:
    """A job with one execution per target device (see :func:`executions.expand_job`).

    Raises UnknownTarget when its device or site does not exist.
    """
    now = utcnow()
    target_model = {JobTargetType.device: Device, JobTargetType.site: Site}.get(data.target_type)
    if target_model is not None and await session.get(target_model, data.target_id) is None:
        raise UnknownTarget(data.target_type, data.target_id)
    job = Job(
        job_id=new_job_id(),
        **data.model_dump(exclude={"description"}),
        # A note people type: card numbers and inline secrets are masked. The payload is
        # what the device needs and is kept as sent.
        description=mask_text(data.description) if data.description else None,
        status=JobStatus.pending,
        created_by=actor.user_id,
        created_at=now,
    )
    session.add(job)
    await session.flush()  # the executions reference it
    await executions.expand_job(session, job, now)
    write_audit_log(
        session,
        actor,
        action="job.create",
        resource_type="job",
        resource_id=job.job_id,
        details=data.model_dump(mode="json"),
    )
    await session.flush()
    return job


async def cancel_job(session: AsyncSession, recorder: Recorder, actor: Actor, job_id: str) -> Job:
    """Cancel a job and its unfinished executions; raises JobNotFound, JobAlreadyFinished."""
    await get_job(session, job_id)
    return await executions.cancel_job(session, recorder, job_id, actor)
