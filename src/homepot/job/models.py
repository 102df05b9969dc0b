from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Enum, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from homepot.db import Base, utcnow


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
