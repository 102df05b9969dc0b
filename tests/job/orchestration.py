"""Helpers for the orchestrator and execution tests."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import select

from homepot.config import FleetSettings, Settings
from homepot.job.models import JobExecution
from homepot.protocol.messages import JobCommand

JOBS = "/api/v1/jobs"
AGENT_JOBS = "/api/v1/agent/jobs"
ACK_TIMEOUT = 5.0
BACKOFF = 10.0


def manual_orchestrator(settings: Settings) -> Settings:
    """The background orchestrator never runs a pass by itself: tests call run_pass(now=...)."""
    settings.fleet = FleetSettings(
        orchestrator_interval_seconds=3600,
        ack_timeout_seconds=ACK_TIMEOUT,
        retry_backoff_seconds=BACKOFF,
    )
    return settings


class RecordingChannel:
    """A push channel that remembers what it pushed, or fails like an unreachable broker."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.pushed: list[tuple[str, JobCommand]] = []

    async def push(self, device_id: str, command: JobCommand) -> None:
        if self.fail:
            raise ConnectionError("broker 127.0.0.1:1883 refused the connection")
        self.pushed.append((device_id, command))


async def create_job(client: AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    body = {"job_type": "restart", "target_type": "device", **body}
    response = await client.post(JOBS, json=body, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def read_job(client: AsyncClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    response = await client.get(f"{JOBS}/{job_id}", headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def executions_of(app: FastAPI, job_id: str) -> list[JobExecution]:
    async with app.state.session_factory() as session:
        statement = (
            select(JobExecution)
            .where(JobExecution.job_id == job_id)
            .order_by(JobExecution.device_id)
        )
        return list(await session.scalars(statement))


async def report(
    client: AsyncClient,
    device: dict[str, str],
    execution_id: int,
    status: str = "success",
    **fields: Any,
) -> Any:
    return await client.post(
        f"{AGENT_JOBS}/{execution_id}/result",
        json={"execution_id": execution_id, "status": status, **fields},
        headers=device,
    )
