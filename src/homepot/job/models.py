from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Enum, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from homepot.db import Base, BigIntId, utcnow


class JobStatus(enum.StrEnum):
    pending = "pending"
    scheduled = "scheduled"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class JobTargetType(enum.StrEnum):
    device = "device"
    site = "site"
    device_type = "device_type"


class JobSchedule(enum.StrEnum):
    now = "now"
    maintenance_window = "maintenance_window"
    recommended_window = "recommended_window"


class Job(Base):
    __tablename__ = "jobs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_type: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[JobTargetType] = mapped_column(
        Enum(JobTargetType, native_enum=False, length=16, validate_strings=True)
    )
    target_id: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=16, validate_strings=True),
        default=JobStatus.pending,
        index=True,
    )
    schedule: Mapped[JobSchedule] = mapped_column(
        Enum(JobSchedule, native_enum=False, length=32, validate_strings=True),
        default=JobSchedule.now,
    )
    scheduled_for: Mapped[datetime | None]
    priority: Mapped[int] = mapped_column(Integer, default=5)
    timeout_seconds: Mapped[int] = mapped_column(Integer, default=300)
    max_retries: Mapped[int] = mapped_column(Integer, default=2)
    description: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]


class ExecutionStatus(enum.StrEnum):
    pending = "pending"  # waiting for its time (now, a retry's backoff, a maintenance window)
    dispatched = "dispatched"  # pushed or handed out to the device, not yet acknowledged
    running = "running"  # the device acknowledged it
    success = "success"
    failed = "failed"
    timeout = "timeout"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_EXECUTION_STATES


FINISHED_EXECUTION_STATES = frozenset(
    {
        ExecutionStatus.success,
        ExecutionStatus.failed,
        ExecutionStatus.timeout,
        ExecutionStatus.cancelled,
    }
)


class JobExecution(Base):
    """One job on one device: what the orchestrator claims, dispatches, retries and times out."""

    __tablename__ = "job_executions"
    __table_args__ = (
        UniqueConstraint("job_id", "device_id"),
        Index("ix_job_executions_status_not_before", "status", "not_before"),
        Index("ix_job_executions_device_id_status", "device_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("jobs.job_id", ondelete="CASCADE"), index=True
    )
    device_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("devices.device_id", ondelete="CASCADE")
    )
    status: Mapped[ExecutionStatus] = mapped_column(
        Enum(ExecutionStatus, native_enum=False, length=16, validate_strings=True),
        default=ExecutionStatus.pending,
    )
    # Retries used so far (0 on the first attempt).
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime] = mapped_column(default=utcnow)
    deadline_at: Mapped[datetime | None]
    first_dispatched_at: Mapped[datetime | None]
    dispatched_at: Mapped[datetime | None]
    acked_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    delivery: Mapped[str | None] = mapped_column(String(8))  # push | poll
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    result: Mapped[dict[str, Any] | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
