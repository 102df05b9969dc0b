"""What the audit API reads: its query parameters and rows."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from homepot.kit.jsonlimits import StoredJson
from homepot.kit.streams import StreamQuery


class AuditLogQuery(StreamQuery):
    """Filters of GET /api/v1/audit-logs; unknown parameters are refused like analytics'."""

    user_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Who acted: a user id, `system` (the server) or `cli:<os user>`",
    )
    action: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="e.g. analytics.query, error.resolve, schedule.update, retention.run",
    )
    resource_type: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="e.g. analytics, error_log, site_schedule, retention",
    )
    resource_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The resource acted on, e.g. an analytics stream or `<site_id>/<day>`",
    )


class AuditLogRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    timestamp: datetime
    user_id: str | None
    action: str
    resource_type: str
    resource_id: str | None
    ip_address: str | None
    details: StoredJson
