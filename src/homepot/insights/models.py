"""Insights tables: anomaly episodes and failure-risk scores.

Anomaly episodes: one row per contiguous anomaly on a device's (or a site's) metric.

No foreign keys, like the analytics tables: an episode outlives the device it describes.
``subject`` is what the episode is about: the device_id, ``site:<site_id>`` for a whole
site that stopped reporting, or ``api:<METHOD> <route>`` for an API route (metric
``api:<route>``, no device or site; see :mod:`homepot.insights.api_health`); with
``metric``, ``detector`` and ``started_at`` it is the episode's identity, so that a range
scanned twice stores each episode once.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, Index, Integer, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from homepot.db import Base, BigIntId, JSONType, utcnow


class AnomalySeverity(enum.StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


class AnomalyStatus(enum.StrEnum):
    active = "active"
    acknowledged = "acknowledged"
    resolved = "resolved"


class Anomaly(Base):
    __tablename__ = "anomalies"
    __table_args__ = (
        UniqueConstraint("subject", "metric", "detector", "started_at"),
        Index("ix_anomalies_started_at", "started_at"),
        Index("ix_anomalies_device_id_started_at", "device_id", "started_at"),
        Index("ix_anomalies_site_id_started_at", "site_id", "started_at"),
        # The scanner's question each pass: which episodes are still open?
        Index("ix_anomalies_ended_at", "ended_at"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(600))
    # Null for a site-wide episode (a whole site silent) and for an API route.
    device_id: Mapped[str | None] = mapped_column(String(64))
    site_id: Mapped[str | None] = mapped_column(String(64))
    # A device metric, "reporting", or "api:<route template>" (up to 512 characters).
    metric: Mapped[str] = mapped_column(String(520))
    detector: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime]
    # Null while the episode is under way.
    ended_at: Mapped[datetime | None]
    # The end of the last anomalous 5-minute bin seen so far.
    last_seen_at: Mapped[datetime]
    score: Mapped[int] = mapped_column(SmallInteger)
    severity: Mapped[str] = mapped_column(String(16))
    observed: Mapped[float | None] = mapped_column(Float)
    expected: Mapped[float | None] = mapped_column(Float)
    explanation: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=AnomalyStatus.active.value)
    expected_maintenance: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DeviceRisk(Base):
    """A device's failure risk as scored at ``computed_at``; the newest row is the current one."""

    __tablename__ = "device_risk"
    __table_args__ = (
        Index("ix_device_risk_device_id_computed_at", "device_id", "computed_at"),
        Index("ix_device_risk_computed_at", "computed_at"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64))
    site_id: Mapped[str | None] = mapped_column(String(64))
    computed_at: Mapped[datetime]
    horizon_minutes: Mapped[int] = mapped_column(Integer)
    risk: Mapped[float] = mapped_column(Float)
    # [{"factor": "memory % trend", "value": "+5.2 per h"}, ...], most important first.
    factors: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    # Which model scored it: "gbm-<trained at>", or "anomalies" without a model.
    model: Mapped[str] = mapped_column(String(64))
