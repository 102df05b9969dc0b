from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError

from homepot.audit.service import Actor
from homepot.auth.deps import CurrentUser, OperatorUser
from homepot.config import API_PREFIX
from homepot.db import SessionDep
from homepot.job import executions, service
from homepot.job.schemas import JobCreate, JobDetail, JobListQuery, JobRead
from homepot.kit.pagination import Page
from homepot.kit.routing import api_router

router = api_router(prefix=API_PREFIX, tags=["jobs"])


@router.post(
    "/jobs",
    response_model=JobDetail,
    status_code=status.HTTP_201_CREATED,
    summary="Create a job for a device, a site or a device type (operator or admin)",
    description=(
        "The job gets one execution per target device. With `schedule: maintenance_window`"
        " each execution waits for its site's next maintenance window and `scheduled_for`"
        " says when the first one starts (status `scheduled` until then). A site or device"
        " type without devices gives a job that is `completed` at once, with no executions."
    ),
)
async def create_job(
    user: OperatorUser, body: JobCreate, request: Request, session: SessionDep
) -> JobDetail:
    try:
        job = await service.create_job(session, Actor.of(request, user), body)
    except service.UnknownTarget as exc:
        raise RequestValidationError(
            [
                {
                    "type": "not_found",
                    "loc": ("body", "target_id"),
                    "msg": str(exc),
                    "input": body.target_id,
                }
            ]
        ) from exc
    return JobDetail.of(job, await executions.list_executions(session, job.job_id))


@router.get("/jobs", response_model=Page[JobRead], summary="List jobs, newest first")
async def list_jobs(
    _user: CurrentUser,
    session: SessionDep,
    params: Annotated[JobListQuery, Query()],
) -> Page[JobRead]:
    items, total = await service.list_jobs(
        session,
        params.page,
        status=params.status,
        job_type=params.job_type,
        target_id=params.target_id,
    )
    return Page[JobRead].of(items, total, params.page)


JobIdPath = Annotated[str, Path(description="e.g. job-3f2a9c1b7d4e")]


@router.get(
    "/jobs/{job_id}", response_model=JobDetail, summary="Read a job with each device's execution"
)
async def read_job(_user: CurrentUser, job_id: JobIdPath, session: SessionDep) -> JobDetail:
    try:
        job, job_executions = await service.get_job_with_executions(session, job_id)
    except service.JobNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return JobDetail.of(job, job_executions)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobDetail,
    summary="Cancel a job: every unfinished execution is cancelled (operator or admin)",
    description="Cancelling a cancelled job again changes nothing; a finished job is a 409.",
)
async def cancel_job(
    user: OperatorUser, job_id: JobIdPath, request: Request, session: SessionDep
) -> JobDetail:
    try:
        job = await service.cancel_job(
            session, request.app.state.recorder, Actor.of(request, user), job_id
        )
    except service.JobNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except executions.JobAlreadyFinished as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return JobDetail.of(job, await executions.list_executions(session, job_id))
