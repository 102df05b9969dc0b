"""What the insights endpoints answer."""

from __future__ import annotations

from datetime import datetime, time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from homepot.site.schemas import DAY_NAMES


class WindowRead(BaseModel):
    start: time = Field(description="Local start time (the site's time zone)")
    end: time = Field(description="Local end time; 00:00 is midnight at the end of the day")
    expected_transactions: float = Field(
        description="Transactions that fell in this window on an average observed day"
    )


class MaintenanceWindowRead(BaseModel):
    weekday: int = Field(description="0 = Monday ... 6 = Sunday")
    day_name: str
    recommended: WindowRead | None = Field(
        description="The window disturbing the fewest transactions; null when no window of "
        "this length fits inside the day's closed hours"
    )
    inside_closed_hours: bool = Field(
        description="True when the day has declared closed hours and the window respects them"
    )
    basis_days: int = Field(
        description="How many days of this weekday had telemetry in the lookback; 0 means the "
        "recommendation rests on the declared hours alone"
    )
    declared: WindowRead | None = Field(
        description="A job of the same length at the start of the declared maintenance window "
        "that day (null when the declared rules open no window that day)"
    )
    transactions_saved: float | None = Field(
        description="declared.expected_transactions − recommended.expected_transactions"
    )


class MaintenanceWindowAdvice(BaseModel):
    site_id: str
    timezone: str
    duration_minutes: int
    lookback_days: int
    computed_at: datetime
    items: list[MaintenanceWindowRead]


class MaintenanceWindowQuery(BaseModel):
    """Parameters of GET /insights/maintenance-windows; unknown names are refused."""

    model_config = ConfigDict(extra="forbid")

    site_id: str = Field(min_length=1, max_length=64, description="The site to advise on")
    duration_minutes: int = Field(
        default=60, ge=15, le=24 * 60, description="Length of the window (15 minutes to 24 h)"
    )
    lookback_days: int = Field(
        default=28, ge=1, le=90, description="Days of observed transactions to learn from"
    )


def day_name(weekday: int) -> str:
    return DAY_NAMES[weekday]


def window_read(window: Any) -> WindowRead | None:
    if window is None:
        return None
    return WindowRead(
        start=window.start, end=window.end, expected_transactions=window.expected_transactions
    )
