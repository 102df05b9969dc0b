"""Insights tables. No foreign keys, like the analytics tables: a row outlives its device."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from homepot.db import Base, BigIntId, JSONType


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
