from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from homepot.device.schemas import MetricSeries
from homepot.job.schemas import JobRead


class DeviceCounts(BaseModel):
    total: int
    online: int
    offline: int
    error: int
    maintenance: int
    updating: int


class ErrorSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    timestamp: datetime
    category: str
    severity: str
    error_code: str | None
    error_message: str
    device_id: str | None
    resolved: bool


class JobOutcomeCounts(BaseModel):
    success: int = 0
    failed: int = 0
    timeout: int = 0
    cancelled: int = 0


class FleetOverview(BaseModel):
    generated_at: datetime
    hours: int = Field(description="The window the outcomes and metrics cover, in hours")
    devices: DeviceCounts
    unresolved_errors: int = Field(description="Errors not yet resolved, of any age")
    critical_anomalies: int = Field(
        description="Anomaly episodes of severity critical still waiting for an operator "
        "(status active: not acknowledged, not resolved), outside maintenance windows"
    )
    recent_errors: list[ErrorSummary] = Field(description="The newest errors, newest first")
    recent_jobs: list[JobRead] = Field(description="The newest jobs, newest first")
    job_outcomes: JobOutcomeCounts = Field(description="Device job outcomes within the window")
    job_success_rate: float | None = Field(
        description="Successful outcomes / finished outcomes (cancelled ones left out) within"
        " the window, 0 to 1; null when none finished"
    )
    metrics: MetricSeries = Field(description="Fleet-wide metric averages per time bucket")
