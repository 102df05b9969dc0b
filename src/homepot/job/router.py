from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError

from homepot.audit.service import Actor
from homepot.auth.deps import CurrentUser, OperatorUser
from homepot.config import API_PREFIX
from homepot.db import SessionDep
from homepot.job import service
from homepot.job.models import Job, JobStatus
from homepot.job.schemas import JobCreate, JobRead, JobType
from homepot.kit.page import Page, PageQuery

router = APIRouter(prefix=API_PREFIX, tags=["jobs"])


@router.post(
    "/jobs",
    response_model=JobRead,
    status_code=status.HTTP_201_CREATED,
    summary="Create a pending job for a device, a site or a device type (operator or admin)",
)
async def create_job(
    user: OperatorUser, body: JobCreate, request: Request, session: SessionDep
) -> Job:
    try:
        return await service.create_job(session, Actor.of(request, user), body)
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


@router.get("/jobs", response_model=Page[JobRead], summary="List jobs, newest first")
async def list_jobs(
    _user: CurrentUser,
    session: SessionDep,
    page: PageQuery,
    job_status: Annotated[
        JobStatus | None, Query(alias="status", description="Only jobs in this status")
    ] = None,
    job_type: Annotated[JobType | None, Query(description="Only jobs of this type")] = None,
    target_id: Annotated[
        str | None, Query(description="Only jobs for this device_id, site_id or device type")
    ] = None,
) -> Page[JobRead]:
    items, total = await service.list_jobs(
        session, page, status=job_status, job_type=job_type, target_id=target_id
    )
    return Page[JobRead].of(items, total, page)


@router.get("/jobs/{job_id}", response_model=JobRead, summary="Read a job")
async def read_job(
    _user: CurrentUser,
    job_id: Annotated[str, Path(description="e.g. job-3f2a9c1b7d4e")],
    session: SessionDep,
) -> Job:
    try:
        return await service.get_job(session, job_id)
    except service.JobNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
