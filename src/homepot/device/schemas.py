from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from homepot.device.models import DeviceStatus
from homepot.kit.jsonlimits import StoredJsonObject
from homepot.kit.pagination import ListQuery
from homepot.kit.query import StrictQuery
from homepot.kit.timeranges import UtcDatetime
from homepot.site.schemas import ConfigObject, SiteId, public_id_check

DeviceId = Annotated[
    str,
    AfterValidator(public_id_check("device_id", "pos-terminal-001")),
    Field(examples=["pos-terminal-001"]),
]
DeviceType = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$", examples=["pos_terminal"])
]


class DeviceListQuery(ListQuery):
    site_id: str | None = Field(
        default=None, max_length=64, description="Only devices of this site"
    )
    status: DeviceStatus | None = Field(default=None, description="Only devices in this status")
    device_type: str | None = Field(
        default=None, max_length=64, description="Only devices of this type"
    )
    q: str | None = Field(
        default=None,
        max_length=200,
        description="Only devices whose device_id or name contains this",
    )


class HistoryQuery(StrictQuery):
    """A device's history, newest first, by keyset."""

    limit: int = Field(default=50, ge=1, le=500, description="Rows per page, newest first")
    cursor: str | None = Field(
        default=None, max_length=200, description="The next_cursor of the previous page"
    )


class MetricsQuery(StrictQuery):
    since: UtcDatetime | None = Field(
        default=None, description="Start (ISO 8601; default six hours before until)"
    )
    until: UtcDatetime | None = Field(default=None, description="End (ISO 8601; default now)")
    limit: int = Field(
        default=120, ge=1, le=1000, description="At most this many points (time buckets)"
    )


class DeviceCreate(BaseModel):
    # JSON values only: NaN and Infinity cannot be stored as JSON.
    model_config = ConfigDict(allow_inf_nan=False)

    device_id: DeviceId
    site_id: SiteId = Field(description="The site the device belongs to; it must exist")
    name: str = Field(min_length=1, max_length=200)
    device_type: DeviceType = "pos_terminal"
    status: DeviceStatus = DeviceStatus.offline
    config: ConfigObject = Field(default_factory=dict)
    firmware_version: str | None = Field(default=None, max_length=64)


class DeviceUpdate(BaseModel):
    """Fields to change; omitted fields keep their value."""

    # JSON values only: NaN and Infinity cannot be stored as JSON.
    model_config = ConfigDict(allow_inf_nan=False)

    name: str | None = Field(default=None, min_length=1, max_length=200)
    site_id: SiteId | None = Field(default=None, description="Move the device to this site")
    device_type: DeviceType | None = None
    status: DeviceStatus | None = Field(
        default=None,
        description="A new status is recorded in device_state_history when it differs",
    )
    reason: str | None = Field(
        default=None, max_length=1000, description="Why the status changes (stored in history)"
    )
    config: ConfigObject | None = Field(
        default=None,
        description=(
            "A merge patch of the device's config: each key given replaces that key, a key set"
            " to null is removed, keys not given are kept. Every changed key is recorded in"
            " configuration_history."
        ),
    )
    change_reason: str | None = Field(
        default=None, max_length=1000, description="Why the config changes (stored in history)"
    )
    firmware_version: str | None = Field(default=None, max_length=64)

    @field_validator("name", "site_id", "device_type", "status", "config")
    @classmethod
    def _refuse_null(cls, value: Any) -> Any:
        # Runs only for values the client sent: an omitted field keeps its value.
        if value is None:
            raise ValueError("may be omitted but not null")
        return value

    @model_validator(mode="after")
    def _reasons_need_their_change(self) -> Self:
        if self.reason is not None and self.status is None:
            raise ValueError("reason explains a status change; send it with status")
        if self.change_reason is not None and self.config is None:
            raise ValueError("change_reason explains a config change; send it with config")
        return self


class DeviceRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    device_id: str
    site_id: str
    name: str
    device_type: str
    status: DeviceStatus
    config: StoredJsonObject
    firmware_version: str | None
    ip_address: str | None
    last_seen_at: datetime | None
    simulated: bool = Field(
        description="A terminal of the simulation (it registered as simulated): its analytics "
        "rows have source 'simulated'"
    )
    created_at: datetime
    updated_at: datetime


class MetricPoint(BaseModel):
    """Metrics of one time bucket: averages, except transactions which are summed."""

    timestamp: datetime = Field(description="Start of the bucket (UTC)")
    samples: int = Field(description="Metric samples in the bucket")
    devices: int = Field(description="Devices that reported in the bucket")
    cpu_percent: float | None
    memory_percent: float | None
    disk_percent: float | None
    network_latency_ms: float | None
    transaction_count: int | None = Field(description="Transactions in the bucket, summed")
    error_rate: float | None


class MetricSeries(BaseModel):
    """Metrics from ``since`` to ``until`` in buckets of ``bucket_seconds``, oldest first.

    Buckets without samples are left out.
    """

    since: datetime
    until: datetime
    bucket_seconds: int
    points: list[MetricPoint]


class DeviceMetricSeries(MetricSeries):
    device_id: str
