"""What the analytics API reads and accepts: query parameters, rows, ingested events.

Query parameter models refuse names they do not know: a mistyped filter (``?devce_id=x``)
would otherwise be ignored and the answer would look like data for that device.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, to_json

from homepot.analytics.models import Source
from homepot.db import utcnow
from homepot.kit.jsonlimits import JsonLimits, StoredJson
from homepot.kit.localtime import LocalTime
from homepot.kit.query import StrictQuery
from homepot.kit.streams import StreamQuery
from homepot.kit.timeranges import UtcDatetime, representable_utc

MAX_ACTIVITY_BATCH = 100
MAX_JSON_BYTES = 4096
# One dashboard event as JSON (a whole request body is limited by settings.limits).
MAX_EVENT_BYTES = 8 * 1024
# Free-form context of a dashboard event or error report.
SmallJsonObject = Annotated[
    dict[str, JsonValue], BeforeValidator(JsonLimits(max_bytes=MAX_JSON_BYTES))
]
# What the dashboard records. Anything else is refused at ingestion, so that a buggy or
# hostile client cannot invent event kinds the reports would then have to explain.
TRACKED_ACTIVITY_TYPES = ("page_view", "click", "search", "form_submit")
# extra_data keys that would carry what a person typed into a form; never accepted.
FIELD_VALUE_KEYS = frozenset(
    {
        "value",
        "values",
        "field_value",
        "field_values",
        "input_value",
        "form_data",
        "form_values",
        "password",
        "passwd",
        "secret",
        "token",
    }
)
# How far a client's clock may run ahead, and how old an event a client may still send.
MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_EVENT_AGE = timedelta(days=7)

HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
Category = Literal["api", "database", "external_service", "validation"]
Severity = Literal["critical", "error", "warning", "info"]
JobOutcomeStatus = Literal["success", "failed", "timeout", "cancelled"]
EntityType = Literal["device", "site", "system"]
ChangeType = Literal["manual", "automated", "ai_recommended"]

Id64 = Annotated[str, Field(min_length=1, max_length=64)]
State = Annotated[str, Field(min_length=1, max_length=32)]
ActivityType = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z0-9_]{0,31}$",
        description="page_view, click, search, form_submit, or another short lowercase "
        "identifier (letters, digits, underscores; at most 32 characters)",
        examples=["page_view", "click", "search", "form_submit"],
    ),
]
ErrorCode = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
SessionId = Annotated[
    str,
    Field(
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="The browser session: 1 to 64 letters, digits, '-' or '_' "
        "(a UUID from crypto.randomUUID() fits)",
    ),
]


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _tracked_activity_type(value: str) -> str:
    if value not in TRACKED_ACTIVITY_TYPES:
        raise PydanticCustomError(
            "unknown_activity_type",
            "activity_type '{value}' is not recorded; use one of: {allowed}",
            {"value": value, "allowed": ", ".join(TRACKED_ACTIVITY_TYPES)},
        )
    return value


def _field_value_keys(value: Any, path: str = "extra_data") -> list[str]:
    """Where in ``value`` a key that would carry form input appears (as dotted paths)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            where = f"{path}.{key}"
            if str(key).lower() in FIELD_VALUE_KEYS:
                found.append(where)
            found.extend(_field_value_keys(inner, where))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found.extend(_field_value_keys(inner, f"{path}[{index}]"))
    return found


def _event_within_size(value: Any) -> Any:
    """Refuse one raw event bigger than MAX_EVENT_BYTES before looking at its fields."""
    if not isinstance(value, dict):
        return value
    try:
        size = len(to_json(value))
    except ValueError:
        return value  # not JSON at all (too deep, a lone surrogate): the fields say where
    if size > MAX_EVENT_BYTES:
        raise PydanticCustomError(
            "event_too_large",
            "this event is {size} bytes as JSON; at most {limit} are accepted per event",
            {"size": size, "limit": MAX_EVENT_BYTES},
        )
    return value


# -- query parameters -----------------------------------------------------------------------


class ProvenanceQuery(StreamQuery):
    """Every analytics stream can be read for one provenance."""

    source: Source | None = Field(
        default=None,
        description="device: rows the running system recorded (real terminals, API, users); "
        "simulated: rows of the simulation (backfill, sample data, simulated terminals). "
        "Both when left out; each row says its own.",
    )


class RequestQuery(ProvenanceQuery):
    endpoint: str | None = Field(
        default=None, min_length=1, max_length=2048, description="Exact path as requested"
    )
    route: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Path template, e.g. /api/v1/devices/{device_id}",
    )
    method: Annotated[HttpMethod | None, BeforeValidator(_upper)] = Field(
        default=None, description="HTTP method (case-insensitive)"
    )
    status_code: int | None = Field(default=None, ge=100, le=599, description="HTTP status")
    user_id: Id64 | None = Field(default=None, description="The authenticated caller's id")
    min_response_time_ms: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Only requests that took at least this long",
    )


class DeviceStateQuery(ProvenanceQuery):
    device_id: Id64 | None = Field(default=None, description="Device, e.g. pos-terminal-001")
    previous_state: State | None = Field(default=None, description="State before the change")
    new_state: State | None = Field(default=None, description="State after the change")
    changed_by: Id64 | None = Field(default=None, description="A user id, or system")


class JobOutcomeQuery(ProvenanceQuery):
    job_id: Id64 | None = Field(default=None, description="The job")
    job_type: Id64 | None = Field(default=None, description="e.g. firmware_update, restart")
    device_id: Id64 | None = Field(default=None, description="Target device")
    status: JobOutcomeStatus | None = Field(default=None, description="How the job ended")


class ErrorLogQuery(ProvenanceQuery):
    category: Category | None = Field(default=None, description="Where the error arose")
    severity: Severity | None = Field(default=None, description="How bad it is")
    error_code: ErrorCode | None = Field(default=None, description="e.g. DB_CONN_001")
    device_id: Id64 | None = Field(default=None, description="Device the error concerns")
    resolved: bool | None = Field(default=None, description="true or false")


class UserActivityQuery(ProvenanceQuery):
    user_id: Id64 | None = Field(default=None, description="The user")
    session_id: Id64 | None = Field(default=None, description="Browser session")
    activity_type: ActivityType | None = Field(
        default=None, description="e.g. page_view, click, search, form_submit"
    )
    page_url: str | None = Field(
        default=None, min_length=1, max_length=2048, description="Exact page URL"
    )


class DeviceMetricsQuery(ProvenanceQuery):
    device_id: list[Id64] | None = Field(
        default=None,
        max_length=100,
        description="Device; repeat for several (?device_id=a&device_id=b), at most 100",
    )


class ConfigHistoryQuery(ProvenanceQuery):
    entity_type: EntityType | None = Field(default=None, description="What was configured")
    entity_id: Id64 | None = Field(default=None, description="Its id, e.g. pos-terminal-005")
    parameter_name: str | None = Field(
        default=None, min_length=1, max_length=128, description="e.g. config_version"
    )
    change_type: ChangeType | None = Field(default=None, description="Who decided the change")


class SiteScheduleQuery(ProvenanceQuery):
    site_id: Id64 | None = Field(default=None, description="Site, e.g. site-001")
    day_of_week: int | None = Field(default=None, ge=0, le=6, description="0 = Monday ... 6")


# -- rows -----------------------------------------------------------------------------------


class EventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    event_id: str
    timestamp: datetime
    source: Source = Field(description="device (recorded for real) or simulated")


class APIRequestLogRead(EventRead):
    request_id: str | None
    endpoint: str
    route: str | None
    method: str
    status_code: int
    response_time_ms: float
    user_id: str | None
    ip_address: str | None
    user_agent: str | None
    error_message: str | None
    request_size_bytes: int
    response_size_bytes: int
    query_params: StoredJson


class DeviceStateHistoryRead(EventRead):
    device_id: str
    previous_state: str | None
    new_state: str
    changed_by: str
    reason: str | None
    extra_data: StoredJson


class JobOutcomeRead(EventRead):
    job_id: str
    job_type: str
    device_id: str | None
    status: str
    duration_ms: int | None
    error_code: str | None
    error_message: str | None
    retry_count: int
    initiated_by: str | None
    extra_data: StoredJson


class ErrorLogRead(EventRead):
    category: str
    severity: str
    error_code: str | None
    error_message: str
    stack_trace: str | None
    endpoint: str | None
    user_id: str | None
    device_id: str | None
    context: StoredJson
    resolved: bool
    resolved_at: datetime | None


class UserActivityRead(EventRead):
    user_id: str | None
    session_id: str | None
    activity_type: str
    page_url: str | None
    element_id: str | None
    search_query: str | None
    extra_data: StoredJson
    duration_ms: int | None


class DeviceMetricsRead(EventRead):
    device_id: str
    cpu_percent: float | None
    memory_percent: float | None
    disk_percent: float | None
    network_latency_ms: float | None
    transaction_count: int | None
    transaction_volume: float | None
    error_rate: float | None
    active_connections: int | None
    queue_depth: int | None
    extra_metrics: StoredJson
    collection_interval_seconds: float | None


class ConfigurationHistoryRead(EventRead):
    entity_type: str
    entity_id: str
    parameter_name: str
    old_value: StoredJson
    new_value: StoredJson
    changed_by: str
    change_reason: str | None
    change_type: str
    performance_before: StoredJson
    performance_after: StoredJson
    was_successful: bool | None
    was_rolled_back: bool
    rollback_reason: str | None


class SiteOperatingScheduleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    site_id: str
    day_of_week: int
    open_time: LocalTime | None
    close_time: LocalTime | None
    is_closed: bool
    is_maintenance_window: bool
    expected_transaction_volume: int | None
    peak_hours_start: LocalTime | None
    peak_hours_end: LocalTime | None
    notes: str | None
    special_considerations: StoredJson
    source: Source = Field(description="device (a real site's) or simulated")
    created_at: datetime
    updated_at: datetime


# -- ingestion ------------------------------------------------------------------------------


class UserActivityCreate(BaseModel):
    """One dashboard event. The user is the token's; an event naming a user_id is refused."""

    model_config = ConfigDict(extra="forbid")

    event_id: UUID | None = Field(
        default=None,
        description="A UUID the client makes (crypto.randomUUID()), so that a batch sent "
        "twice is stored once: an event is the same event by its event_id and its timestamp, "
        "so send both (without a timestamp, each receipt is a new moment, hence a new event)",
    )
    timestamp: Annotated[AwareDatetime, AfterValidator(representable_utc)] | None = Field(
        default=None,
        description="When it happened, with an offset; at most 7 days old and not in the "
        "future. Defaults to the time it is received.",
    )
    activity_type: Annotated[ActivityType, AfterValidator(_tracked_activity_type)] = Field(
        description="page_view, click, search or form_submit"
    )
    session_id: SessionId | None = None
    page_url: str | None = Field(default=None, max_length=2048)
    element_id: str | None = Field(default=None, max_length=256)
    search_query: str | None = Field(default=None, max_length=512)
    duration_ms: int | None = Field(default=None, ge=0, le=2**31 - 1)
    extra_data: SmallJsonObject | None = Field(
        default=None,
        description=f"Free-form context, at most {MAX_JSON_BYTES} bytes as JSON. It never "
        "carries what was typed into a form: keys such as value, values or password are "
        "refused.",
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_user_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "user_id" in data:
            raise PydanticCustomError(
                "user_id_not_accepted",
                "user_id is not accepted: events are recorded for the user of the token",
            )
        return data

    @field_validator("timestamp")
    @classmethod
    def _recent(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        now = utcnow()
        if value > now + MAX_CLOCK_SKEW:
            raise ValueError(f"timestamp {value.isoformat()} is in the future")
        if value < now - MAX_EVENT_AGE:
            raise ValueError(
                f"timestamp {value.isoformat()} is more than {MAX_EVENT_AGE.days} days old"
            )
        return value

    @field_validator("extra_data")
    @classmethod
    def _small_extra_data(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and (keys := _field_value_keys(value)):
            raise ValueError(
                f"extra_data must not carry form field values; refused key(s): {', '.join(keys)}"
            )
        return value


class UserActivityBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Annotated[UserActivityCreate, BeforeValidator(_event_within_size)]] = Field(
        min_length=1,
        description=f"1 to {MAX_ACTIVITY_BATCH} events, each at most {MAX_EVENT_BYTES} bytes "
        "as JSON",
    )


class ActivityBatchAccepted(BaseModel):
    accepted: int = Field(description="Events queued for storage")


CLIENT_ERROR_CODE_PREFIX = "FRONTEND_"


class ClientErrorCreate(BaseModel):
    """An error the dashboard caught in the browser."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=10_000)
    stack: str | None = Field(default=None, max_length=50_000)
    page_url: str | None = Field(default=None, max_length=2048)
    user_agent: str | None = Field(
        default=None, max_length=512, description="Defaults to the request's User-Agent"
    )
    # Client-reported: a browser cannot raise a server-side alarm. "critical" and codes
    # outside FRONTEND_* belong to what the server and devices detect themselves.
    severity: Literal["error", "warning", "info"] = Field(
        default="error", description="error, warning or info; critical is for server-side errors"
    )
    error_code: ErrorCode = Field(
        default="FRONTEND_ERROR",
        description=f"Starts with {CLIENT_ERROR_CODE_PREFIX} (e.g. FRONTEND_RENDER_FAILED)",
    )
    context: SmallJsonObject | None = Field(
        default=None, description=f"Free-form context, at most {MAX_JSON_BYTES} bytes as JSON"
    )

    @field_validator("error_code")
    @classmethod
    def _client_side_code(cls, value: str) -> str:
        if not value.startswith(CLIENT_ERROR_CODE_PREFIX):
            raise ValueError(
                f"an error reported by the dashboard has a code starting with"
                f" {CLIENT_ERROR_CODE_PREFIX}; server-side codes are the server's"
            )
        return value

    @field_validator("context")
    @classmethod
    def _small_context(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and (keys := _field_value_keys(value, "context")):
            raise ValueError(
                f"context must not carry form field values; refused key(s): {', '.join(keys)}"
            )
        return value


class ClientErrorAccepted(BaseModel):
    event_id: str | None = Field(
        description="The stored error's event_id (null when analytics recording is off)"
    )


class ErrorLogUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resolved: bool = Field(description="true sets resolved_at to now; false clears it")


# -- API traffic per route (from the route rollups) -------------------------------------------

MAX_TRAFFIC_SPAN = timedelta(days=92)


class RouteTrafficQuery(StrictQuery):
    since: UtcDatetime | None = Field(
        default=None, description="From this time (default: 24 hours before until); UTC"
    )
    until: UtcDatetime | None = Field(
        default=None, description="Up to this time, exclusive (default: now); UTC"
    )
    source: Source | None = Field(
        default=None, description="device or simulated requests only; both when left out"
    )

    def span(self) -> tuple[datetime, datetime]:
        """(since, until) with the defaults; ValueError when it is empty or too long."""
        until = self.until or utcnow()
        since = self.since or until - timedelta(hours=24)
        if since >= until:
            raise ValueError(f"since ({since.isoformat()}) must be before until")
        if until - since > MAX_TRAFFIC_SPAN:
            raise ValueError(f"since to until spans more than {MAX_TRAFFIC_SPAN.days} days")
        return since, until


class RouteTrafficRead(BaseModel):
    method: str
    route: str = Field(description='The path template; "" for requests that matched no route')
    requests: int
    client_errors: int = Field(description="4xx answers")
    server_errors: int = Field(description="5xx answers")
    server_error_percent: float
    latency_avg_ms: float | None
    latency_max_ms: float
    latency_p50_ms: float | None = Field(description="From the latency histogram (±1 bucket)")
    latency_p95_ms: float | None
    latency_p99_ms: float | None


class RouteTrafficSummary(BaseModel):
    since: datetime
    until: datetime
    routes: list[RouteTrafficRead] = Field(description="Busiest first")
