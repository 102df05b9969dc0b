"""The device side of jobs: polling for commands, acknowledging them, reporting results.

Authenticated with the device's own API key; the device id always comes from the key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import Field

from homepot.config import API_PREFIX
from homepot.db import SessionDep
from homepot.fleet.auth import CurrentDevice, ensure_own_device
from homepot.job import executions
from homepot.job.schemas import AgentExecutionState, AgentResultAnswer
from homepot.kit.query import StrictQuery
from homepot.kit.routing import api_router
from homepot.protocol.messages import JobAck, JobCommand, JobResult

router = api_router(prefix=f"{API_PREFIX}/agent/jobs", tags=["agent"])


class PollQuery(StrictQuery):
    limit: int = Field(default=10, ge=1, le=100, description="At most this many commands")


ExecutionIdPath = Annotated[int, Path(ge=1, le=2**63 - 1, description="From the JobCommand")]


def _same_execution(path_id: int, body_id: int) -> None:
    if path_id != body_id:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "execution_id"),
                    "msg": f"execution_id {body_id} does not match the path's {path_id}",
                    "input": body_id,
                }
            ]
        )


@router.get(
    "",
    response_model=list[JobCommand],
    summary="Jobs waiting for this device (the fallback when a push is not acknowledged)",
)
async def poll_jobs(
    device: CurrentDevice,
    request: Request,
    session: SessionDep,
    params: Annotated[PollQuery, Query()],
) -> list[JobCommand]:
    return await executions.poll_commands(
        session,
        device.device_id,
        params.limit,
        ack_timeout_seconds=request.app.state.settings.fleet.ack_timeout_seconds,
    )


@router.post(
    "/{execution_id}/ack",
    response_model=AgentExecutionState,
    summary="Acknowledge a job: the device has it and is running it",
)
async def acknowledge_job(
    device: CurrentDevice,
    execution_id: ExecutionIdPath,
    session: SessionDep,
    body: JobAck | None = None,
) -> AgentExecutionState:
    if body is not None:
        ensure_own_device(device, body.device_id)
        _same_execution(execution_id, body.execution_id)
    try:
        execution = await executions.acknowledge(session, device.device_id, execution_id)
    except executions.ExecutionNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except executions.ExecutionNotDispatched as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return AgentExecutionState.model_validate(execution)


@router.post(
    "/{execution_id}/result",
    response_model=AgentResultAnswer,
    summary="Report a job's result (success or failed)",
    description=(
        "A result for an execution that has already finished (a duplicate, or one that"
        " arrives after a timeout or a cancel) is answered with `accepted: false` and ignored."
    ),
)
async def report_result(
    device: CurrentDevice,
    execution_id: ExecutionIdPath,
    body: JobResult,
    request: Request,
    session: SessionDep,
) -> AgentResultAnswer:
    ensure_own_device(device, body.device_id)
    _same_execution(execution_id, body.execution_id)
    try:
        answer = await executions.finish(
            session,
            request.app.state.recorder,
            device.device_id,
            body,
            settings=request.app.state.settings,
        )
    except executions.ExecutionNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    state = AgentExecutionState.model_validate(answer.execution)
    return AgentResultAnswer(**state.model_dump(), accepted=answer.accepted, detail=answer.detail)
