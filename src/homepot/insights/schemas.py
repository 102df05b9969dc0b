"""What the insights API reads and returns."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from homepot.analytics.schemas import Id64
from homepot.kit.streams import StreamQuery

MetricName = Literal[
    "cpu", "memory", "disk", "network_latency", "error_rate", "transactions", "reporting"
]
StatusName = Literal["active", "acknowledged", "resolved"]


class AnomalyQuery(StreamQuery):
    """Filters of GET /api/v1/insights/anomalies; the dates apply to ``started_at``."""

    device_id: Id64 | None = Field(default=None, description="Device, e.g. pos-terminal-001")
    site_id: Id64 | None = Field(default=None, description="Site, e.g. site-001")
    metric: MetricName | None = Field(default=None, description="The metric, or reporting")
    status: StatusName | None = Field(default=None, description="Where the operator is with it")
    min_score: int | None = Field(default=None, ge=0, le=100, description="Score at least this")
    expected_maintenance: bool | None = Field(
        default=None, description="true: only episodes inside a maintenance window; false: none"
    )


class AnomalyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    device_id: str | None = Field(description="Null for a whole site that stopped reporting")
    site_id: str | None
    metric: str
    detector: str = Field(description="level, trend or silence")
    started_at: datetime
    ended_at: datetime | None = Field(description="Null while the episode is under way")
    last_seen_at: datetime = Field(description="End of the last anomalous 5-minute bin")
    score: int = Field(description="0 to 100: how far from normal, or how soon the limit")
    severity: str = Field(description="info (< 45), warning (45 to 74), critical (75+)")
    observed: float | None
    expected: float | None
    explanation: str
    status: str
    expected_maintenance: bool = Field(
        description="Began inside the site's maintenance window: stored, never alerts"
    )
    created_at: datetime
    updated_at: datetime


class AnomalyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: StatusName = Field(
        description="acknowledged (someone is on it), resolved (handled), or active again"
    )


class FleetDevice(BaseModel):
    device_id: str
    site_id: str | None
    worst_severity: str
    top_score: int
    active_anomalies: list[AnomalyRead]


class FleetRanking(BaseModel):
    risk_source: Literal["anomalies"] = Field(
        description="What the ranking rests on: active anomaly episodes (no risk model yet)"
    )
    devices: list[FleetDevice]


class BaselineBand(BaseModel):
    """A metric's 5-minute means next to what is normal for each bin (for charts)."""

    metric: str
    times: list[datetime]
    observed: list[float | None]
    expected: list[float | None]
    lower: list[float | None]
    upper: list[float | None]
    source: list[str] = Field(description="hour_of_week, hour_of_day, recent, cohort or none")


class DeviceInsights(BaseModel):
    device_id: str
    site_id: str
    risk_source: Literal["anomalies"]
    anomalies: list[AnomalyRead]
    bands: list[BaselineBand]
