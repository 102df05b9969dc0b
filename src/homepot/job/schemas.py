from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from homepot.job.models import JobSchedule, JobStatus, JobTargetType
from homepot.site.schemas import JsonObject


class JobType(enum.StrEnum):
    restart = "restart"
    config_change = "config_change"
    firmware_update = "firmware_update"
    health_check = "health_check"


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
        description="now, or in the target site's next maintenance window",
    )
    priority: int = Field(default=5, ge=1, le=10, description="1 (lowest) to 10 (most urgent)")
    timeout_seconds: int = Field(default=300, ge=1, le=86_400)
    max_retries: int = Field(default=2, ge=0, le=10)
    description: str | None = Field(default=None, max_length=2000)


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    job_id: str
    job_type: str
    target_type: JobTargetType
    target_id: str
    payload: dict[str, Any]
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
