from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from homepot.job.models import ExecutionStatus, JobSchedule, JobStatus, JobTargetType
from homepot.kit.jsonlimits import JsonObject, StoredJsonObject
from homepot.kit.pagination import ListQuery


class JobType(enum.StrEnum):
    restart = "restart"
    config_change = "config_change"
    firmware_update = "firmware_update"
    health_check = "health_check"


class JobListQuery(ListQuery):
    status: JobStatus | None = Field(default=None, description="Only jobs in this status")
    job_type: JobType | None = Field(default=None, description="Only jobs of this type")
    target_id: str | None = Field(
        default=None,
        max_length=64,
        description="Only jobs for this device_id, site_id or device type",
    )


class JobCreate(BaseModel):
    # JSON values only: NaN and Infinity cannot be stored as JSON.
    model_config = ConfigDict(allow_inf_nan=False)

    job_type: JobType
    target_type: JobTargetType = Field(
        description="device: one device; site: every device of a site; device_type: every"
        " device of that type"
    )
    target_id: str = Field(
        min_length=1,
        max_length=64,
        description="A device_id or site_id (which must exist), or a device type",
        examples=["pos-terminal-001"],
    )
    payload: JsonObject = Field(
        default_factory=dict, description="What the job needs, e.g. the firmware version"
    )
    schedule: JobSchedule = Field(
        default=JobSchedule.now,
        description="now; maintenance_window: in each target site's next declared maintenance"
        " window; recommended_window: in each site's next recommended window (the hour that"
        " disturbed the fewest transactions on that weekday, see"
        " /api/v1/insights/maintenance-windows)",
    )
    priority: int = Field(default=5, ge=1, le=10, description="1 (lowest) to 10 (most urgent)")
    timeout_seconds: int = Field(default=300, ge=1, le=86_400)
    max_retries: int = Field(default=2, ge=0, le=10)
    description: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _payload_fits_the_job(self) -> Self:
        # Checked here so that a device's success cannot fail to apply later.
        config = self.payload.get("config", {})
        if self.job_type is JobType.config_change and not isinstance(config, dict):
            raise ValueError('payload.config must be an object, e.g. {"volume": 3}')
        if self.job_type is JobType.firmware_update and "version" in self.payload:
            version = self.payload["version"]
            if not isinstance(version, str) or not 1 <= len(version) <= 64:
                raise ValueError("payload.version must be a firmware version of 1-64 characters")
        return self


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    job_id: str
    job_type: str
    target_type: JobTargetType
    target_id: str
    payload: StoredJsonObject
    status: JobStatus
    schedule: JobSchedule
    scheduled_for: datetime | None
    priority: int
    timeout_seconds: int
    max_retries: int
    description: str | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


class ExecutionRead(BaseModel):
    """One device's execution of a job."""

    model_config = ConfigDict(from_attributes=True, validate_by_name=True)

    execution_id: int = Field(validation_alias="id")
    device_id: str
    status: ExecutionStatus
    attempt: int = Field(description="Retries used so far (0 on the first attempt)")
    delivery: str | None = Field(description="push or poll: how the device got it last")
    not_before: datetime = Field(description="Not dispatched before this time")
    first_dispatched_at: datetime | None
    dispatched_at: datetime | None
    acked_at: datetime | None
    deadline_at: datetime | None
    finished_at: datetime | None
    error_code: str | None
    error_message: str | None
    result: StoredJsonObject | None


class JobDetail(JobRead):
    """A job with each device's execution."""

    executions: list[ExecutionRead]

    @classmethod
    def of(cls, job: object, executions: Sequence[object]) -> JobDetail:
        return cls.model_validate(
            {
                **JobRead.model_validate(job).model_dump(),
                "executions": [ExecutionRead.model_validate(e) for e in executions],
            }
        )


class AgentExecutionState(BaseModel):
    """What a device is told after an acknowledgement or a result."""

    model_config = ConfigDict(from_attributes=True, validate_by_name=True)

    execution_id: int = Field(validation_alias="id")
    job_id: str
    status: ExecutionStatus
    attempt: int
    deadline_at: datetime | None


class AgentResultAnswer(AgentExecutionState):
    accepted: bool = Field(description="False when the execution had already finished")
    detail: str
