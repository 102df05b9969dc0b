"""A small, consistent sample fleet with history in all 16 tables (``db init --sample-data``).

Three sites in three time zones run twelve POS terminals. The terminals' current status
matches the last state change recorded for them, their metrics follow their site's opening
hours, every job has outcomes that agree with its status, and the events reference the
sample users by id. Timestamps lie in the hours before the load.

The set is loaded once. Its marker is an audit-log entry (resource ``sample_data``, id
:data:`SAMPLE_SET`) written in the same transaction as the rows; while it exists, loading
again adds nothing. Tables are not checked for emptiness, so a database that already holds
real data gets the sample set once, and never twice. Every row with a natural key (site,
device and job ids, fixed ``sample-<table>-<n>`` event ids, a schedule's site and day) is
inserted with ``ON CONFLICT DO NOTHING``, so the set never collides with a row someone made
by hand. The rows are written directly, in the caller's transaction, not through the
recorder: they are history, not live events.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert

from homepot.analytics.models import (
    APIRequestLog,
    ConfigurationHistory,
    DeviceMetrics,
    DeviceStateHistory,
    ErrorLog,
    JobOutcome,
    SiteOperatingSchedule,
    UserActivity,
)
from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from homepot.auth.service import ensure_user
from homepot.db import Base, utcnow
from homepot.dbtools import count_rows
from homepot.device.models import Device, DeviceStatus, HealthCheck
from homepot.insights.models import Anomaly
from homepot.job.models import (
    ExecutionStatus,
    Job,
    JobExecution,
    JobSchedule,
    JobStatus,
    JobTargetType,
)
from homepot.site.models import Site
from homepot.site.windows import next_maintenance_window

SAMPLE_SET: Final = "homepot-sample-v1"
# The reserved .example domain (RFC 2606): no real mailbox, yet a valid e-mail for the API.
# (.local is refused by e-mail validation, so such a user could not be read back.)
DEMO_ADMIN_EMAIL: Final = "admin@homepot.example"

Row = dict[str, Any]


@dataclass(frozen=True)
class Credentials:
    """A user the load created, with the password generated for it (shown once)."""

    email: str
    role: Role
    password: str


@dataclass
class SampleDataResult:
    loaded: bool  # False when the set was already present
    loaded_at: datetime  # when the set was (or had been) loaded
    added: dict[str, int] = field(default_factory=dict)  # rows added per table
    credentials: list[Credentials] = field(default_factory=list)


def generate_password() -> str:
    """16 URL- and shell-safe characters (96 bits)."""
    return secrets.token_urlsafe(12)


async def ensure_demo_admin(session: AsyncSession) -> Credentials | None:
    """Create :data:`DEMO_ADMIN_EMAIL` with a generated password unless it exists."""
    password = generate_password()
    _user, created = await ensure_user(
        session, email=DEMO_ADMIN_EMAIL, password=password, role=Role.admin
    )
    return Credentials(DEMO_ADMIN_EMAIL, Role.admin, password) if created else None


async def sample_set_loaded_at(session: AsyncSession) -> datetime | None:
    return await session.scalar(
        select(AuditLog.timestamp)
        .where(AuditLog.resource_type == "sample_data", AuditLog.resource_id == SAMPLE_SET)
        .order_by(AuditLog.timestamp)
        .limit(1)
    )


async def load_sample_data(
    session: AsyncSession, *, now: datetime | None = None
) -> SampleDataResult:
    """Add the sample set unless its marker exists. Flushes; the caller commits."""
    loaded_at = await sample_set_loaded_at(session)
    if loaded_at is not None:
        return SampleDataResult(loaded=False, loaded_at=loaded_at)
    now = (now or utcnow()).astimezone(UTC).replace(microsecond=0)
    before = {count.table: count.rows for count in await count_rows(session)}

    users, credentials = await _ensure_sample_users(session)
    builder = _SampleBuilder(now, users)
    for model, rows in builder.tables():
        await _insert_missing(session, model, rows)

    after = await count_rows(session)
    return SampleDataResult(
        loaded=True,
        loaded_at=now,
        added={count.table: count.rows - before[count.table] for count in after},
        credentials=credentials,
    )


_SAMPLE_USERS: Final = (
    (DEMO_ADMIN_EMAIL, Role.admin, "Demo Admin"),
    ("operator@homepot.example", Role.operator, "Olivia Operator"),
    ("viewer@homepot.example", Role.viewer, "Victor Viewer"),
)


async def _ensure_sample_users(
    session: AsyncSession,
) -> tuple[dict[Role, str], list[Credentials]]:
    """The sample users' ids by role; an e-mail that exists keeps its user and password."""
    ids: dict[Role, str] = {}
    created: list[Credentials] = []
    for email, role, full_name in _SAMPLE_USERS:
        password = generate_password()
        user, is_new = await ensure_user(session, email=email, password=password, role=role)
        if is_new:
            user.full_name = full_name
            created.append(Credentials(email, role, password))
        ids[role] = user.id
    await session.flush()
    return ids, created


async def _insert_missing(session: AsyncSession, model: type[Base], rows: Sequence[Row]) -> None:
    """Insert ``rows``, skipping any whose primary or unique key already exists."""
    if not rows:
        return
    table = model.__table__
    assert isinstance(table, Table)
    dialect = session.get_bind().dialect.name
    statement: Insert
    if dialect == "postgresql":
        statement = postgresql.insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(table).on_conflict_do_nothing()
    else:
        raise RuntimeError(f"sample data supports SQLite and PostgreSQL, not {dialect}")
    await session.execute(statement, list(rows))


# --- the fleet -----------------------------------------------------------------------------
# Sample content is tabular; the tables below keep one row per line where they can.
# "admin", "operator" and "viewer" stand for the sample users' ids; "system" is itself.


@dataclass(frozen=True)
class _SiteSpec:
    site_id: str
    name: str
    timezone: str
    address: str
    currency: str
    volume_factor: float  # scales the weekly schedule's expected transaction volume
    closed_on_sunday: bool


_SITES: Final = (
    _SiteSpec("site-001", "HOMEPOT London Camden", "Europe/London",
              "12 Camden High Street, London NW1 0JH, United Kingdom", "GBP", 1.0, False),
    _SiteSpec("site-002", "HOMEPOT New York Midtown", "America/New_York",
              "350 Fifth Avenue, New York, NY 10118, United States", "USD", 1.4, False),
    _SiteSpec("site-003", "HOMEPOT Sydney Harbour", "Australia/Sydney",
              "100 George Street, Sydney NSW 2000, Australia", "AUD", 0.8, True),
)  # fmt: skip
TERMINALS_PER_SITE: Final = 4
DEVICE_IDS: Final = tuple(f"pos-terminal-{n:03d}" for n in range(1, 13))
_OUTDATED: Final = frozenset({"pos-terminal-004", "pos-terminal-012"})  # still on 2.5.1

# Terminals that are not online now: their status, since when (minutes before the load),
# who changed it and why. Everything else (state history, health checks, metrics) agrees.
_NOT_ONLINE: Final = {
    "pos-terminal-004": (DeviceStatus.offline, 70, "system", "No heartbeat for 90 s"),
    "pos-terminal-007": (DeviceStatus.maintenance, 50, "operator", "Receipt printer replacement"),
    "pos-terminal-010": (DeviceStatus.error, 180, "system", "Payment module not responding"),
    "pos-terminal-012": (DeviceStatus.updating, 20, "system", "Firmware update 2.6.0 started"),
}
_ONLINE: Final = (DeviceStatus.online, 0, "system", "")


_HEALTH_BY_STATUS: Final = {
    DeviceStatus.offline: "unreachable",
    DeviceStatus.maintenance: "maintenance",
    DeviceStatus.error: "unhealthy",
    DeviceStatus.updating: "degraded",
}

_FIRMWARE: Final = {"firmware_version": "2.6.0", "url": "https://updates.example.com/pos/2.6.0.bin"}
_CONFIG: Final = {"version": "2.6.0", "url": "https://config.example.com/pos/2.6.0"}

# fmt: off
# (n, job type, target type, target id, status, created minutes ago, ran minutes, created by,
#  description)
_JOBS: Final = (
    (1, "firmware_update", "site", "site-001", "failed", 300, 12, "admin",
     "Roll out firmware 2.6.0 to Camden"),
    (2, "config_update", "site", "site-002", "failed", 240, 4, "operator",
     "Midtown: new receipt layout"),
    (3, "restart", "device", "pos-terminal-010", "failed", 175, 5, "operator",
     "Restart the payment module"),
    (4, "health_check", "device_type", "pos_terminal", "failed", 90, 20, "admin",
     "Fleet-wide health check"),
    (5, "firmware_update", "device", "pos-terminal-012", "running", 21, None, "admin",
     "Bring Sydney till 4 to 2.6.0"),
    (6, "config_update", "site", "site-003", "scheduled", 30, None, "operator",
     "Sydney: new receipt layout, in the next maintenance window"),
    (7, "restart", "device", "pos-terminal-004", "cancelled", 65, None, "admin",
     "Restart Camden till 4 (cancelled: the terminal is offline)"),
    (8, "diagnostics", "site", "site-002", "pending", 2, None, "operator",
     "Collect receipt printer diagnostics"),
)

# A job is completed when every device succeeded, failed when any failed or timed out (as the
# orchestrator decides it).
# (job n, device, status, minutes ago, duration ms from first dispatch (None: never
#  dispatched), retries, error code, error message)
_JOB_OUTCOMES: Final = (
    (1, "pos-terminal-001", "success", 290, 412_300, 0, None, None),
    (1, "pos-terminal-002", "success", 289, 398_750, 0, None, None),
    (1, "pos-terminal-003", "success", 288, 431_020, 0, None, None),
    (1, "pos-terminal-004", "timeout", 288, 1_890_000, 2, "JOB_TIMEOUT",
     "pos-terminal-004 reported no result within 600 s (3 attempt(s))"),
    (2, "pos-terminal-005", "success", 237, 3_500, 0, None, None),
    (2, "pos-terminal-006", "success", 237, 4_120, 0, None, None),
    (2, "pos-terminal-007", "failed", 236, 5_000, 1, "E_CONFIG_REJECTED",
     "configuration refused: terminal busy printing end-of-shift report"),
    (2, "pos-terminal-008", "success", 236, 3_870, 0, None, None),
    (3, "pos-terminal-010", "failed", 170, 300_000, 2, "E_DEVICE_UNREACHABLE",
     "payment module did not come back after restart"),
    (4, "pos-terminal-004", "timeout", 69, 1_110_000, 2, "JOB_TIMEOUT",
     "pos-terminal-004 reported no result within 300 s (3 attempt(s))"),
    (4, "pos-terminal-010", "timeout", 69, 1_110_000, 2, "JOB_TIMEOUT",
     "pos-terminal-010 reported no result within 300 s (3 attempt(s))"),
    (7, "pos-terminal-004", "cancelled", 60, None, 0, None, None),
)
_OutcomeSpec = tuple[int, str, str, float, int | None, int, str | None, str | None]

# (minutes ago, user, action, resource type, resource id, details)
_AUDIT_LOGS: Final = (
    (360, "admin", "user.login", "user", "admin", None),
    (355, "admin", "user.create", "user", "operator", {"role": "operator"}),
    (300, "admin", "job.create", "job", "sample-job-001",
     {"job_type": "firmware_update", "target": "site-001"}),
    (241, "operator", "user.login", "user", "operator", None),
    (240, "operator", "job.create", "job", "sample-job-002",
     {"job_type": "config_update", "target": "site-002"}),
    (120, "admin", "site_schedule.update", "site", "site-003",
     {"day_of_week": 6, "is_closed": True}),
    (60, "admin", "job.cancel", "job", "sample-job-007", {"reason": "device offline"}),
    (50, "operator", "device.update", "device", "pos-terminal-007",
     {"status": {"old": "online", "new": "maintenance"}}),
)

# (method, endpoint, route, status, user, request bytes, response bytes, error message)
_DEVICE_ROUTE: Final = "/api/v1/devices/{device_id}"
_API_CALLS: Final = (
    ("POST", "/api/v1/auth/token", None, 200, "admin", 61, 312, None),
    ("GET", "/api/v1/sites", None, 200, "admin", 0, 1480, None),
    ("GET", "/api/v1/devices", None, 200, "admin", 0, 5230, None),
    ("GET", "/api/v1/devices/pos-terminal-003", _DEVICE_ROUTE, 200, "admin", 0, 512, None),
    ("POST", "/api/v1/jobs", None, 201, "admin", 188, 604, None),
    ("POST", "/api/v1/auth/token", None, 401, None, 58, 43, "incorrect e-mail or password"),
    ("POST", "/api/v1/auth/token", None, 200, "operator", 64, 312, None),
    ("GET", "/api/v1/devices", None, 200, "operator", 0, 5230, None),
    ("PUT", "/api/v1/devices/pos-terminal-007", _DEVICE_ROUTE, 200, "operator", 96, 530, None),
    ("GET", "/api/v1/devices/pos-terminal-999", _DEVICE_ROUTE, 404, "operator", 0, 52,
     "device 'pos-terminal-999' does not exist"),
    ("GET", "/api/v1/analytics/device-metrics", None, 200, "admin", 0, 18250, None),
    ("GET", "/api/v1/analytics/requests", None, 422, "admin", 0, 164,
     "start_date: expected a date (2025-12-01) or an ISO 8601 datetime"),
    ("GET", "/api/v1/analytics/errors", None, 403, "viewer", 0, 41, "this needs the admin role"),
    ("POST", "/api/v1/analytics/user-activities", None, 202, "viewer", 740, 29, None),
    ("GET", "/api/v1/jobs", None, 500, "operator", 0, 88, "OperationalError: database is locked"),
    ("GET", "/api/v1/jobs", None, 200, "operator", 0, 2210, None),
)
_BROWSER: Final = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15"
)
# user -> (ip address, user agent)
_CLIENTS: Final = {
    "admin": ("192.0.2.10", _BROWSER),
    "operator": ("198.51.100.23", "python-httpx/0.28.1"),
    "viewer": ("203.0.113.5", _BROWSER),
    None: ("203.0.113.77", "curl/8.5.0"),
}

# (minutes ago, device, previous state, new state, changed by, reason)
_STATE_CHANGES: Final = (
    (420, "pos-terminal-006", "offline", "online", "system", "Store opened; terminal powered on"),
    (360, "pos-terminal-009", "online", "offline", "system", "No heartbeat for 90 s"),
    (330, "pos-terminal-009", "offline", "online", "system", "Auto-recovery"),
    (298, "pos-terminal-001", "online", "updating", "system", "Firmware update 2.6.0 started"),
    (297, "pos-terminal-002", "online", "updating", "system", "Firmware update 2.6.0 started"),
    (296, "pos-terminal-003", "online", "updating", "system", "Firmware update 2.6.0 started"),
    (290, "pos-terminal-001", "updating", "online", "system", "Firmware update 2.6.0 completed"),
    (289, "pos-terminal-002", "updating", "online", "system", "Firmware update 2.6.0 completed"),
    (288, "pos-terminal-003", "updating", "online", "system", "Firmware update 2.6.0 completed"),
)
# The firmware-update job behind each terminal's "updating" state.
_UPDATE_JOBS: Final = {
    "pos-terminal-001": "sample-job-001",
    "pos-terminal-002": "sample-job-001",
    "pos-terminal-003": "sample-job-001",
    "pos-terminal-012": "sample-job-005",
}

_TRACEBACK: Final = (
    "Traceback (most recent call last):\n"
    '  File "/srv/homepot/fleet/agent.py", line 214, in charge\n'
    "    await gateway.authorise(payment)\n"
    "TimeoutError: payment gateway did not answer within 30 s\n"
)
# (minutes ago, category, severity, code, message, endpoint, user, device, context,
#  resolved after minutes)
_ERRORS: Final = (
    (400, "external_service", "critical", "EXT_SERVICE_TIMEOUT", "Payment gateway timeout",
     None, None, "pos-terminal-001", {"gateway": "acquirer-eu", "timeout_s": 30}, 25),
    (352, "database", "error", "DB_CONN_001", "Database connection failed",
     None, None, None, {"exception_type": "ConnectionRefusedError"}, 2),
    (300, "api", "warning", "API_VALIDATION_001", "Invalid parameter in request",
     "/api/v1/analytics/requests", "admin", None, {"parameter": "start_date"}, None),
    (280, "validation", "info", "CONFIG_VAL_001",
     "Configuration validation warning: receipt_footer longer than 40 characters",
     None, None, "pos-terminal-006", None, None),
    (236, "validation", "warning", "CONFIG_VAL_002",
     "Configuration refused while the terminal printed its end-of-shift report",
     None, "operator", "pos-terminal-007", {"job_id": "sample-job-002"}, None),
    (178, "external_service", "error", "AGENT_UNREACHABLE",
     "Device agent did not answer the restart command",
     None, None, "pos-terminal-010", {"job_id": "sample-job-003"}, None),
    (125, "api", "error", "API_INTERNAL_500", "Unhandled OperationalError: database is locked",
     "/api/v1/jobs", "operator", None, {"exception_type": "OperationalError"}, None),
    (90, "database", "critical", "DB_POOL_EXHAUSTED", "Connection pool exhausted (30 of 30 in use)",
     None, None, None, None, 5),
    (70, "external_service", "warning", "PUSH_DELIVERY_DELAYED",
     "Push notification to pos-terminal-004 not delivered after 60 s",
     None, None, "pos-terminal-004", None, None),
    (15, "api", "info", "API_DEPRECATED_PARAM", "Parameter 'page' is deprecated; use 'cursor'",
     "/api/v1/devices", "viewer", None, None, None),
)

# (minutes ago, user, activity, page, element id, search query, duration ms)
_ACTIVITIES: Final = (
    (359, "admin", "page_view", "/dashboard", None, None, 42_000),
    (358, "admin", "click", "/dashboard", "refresh-button", None, None),
    (357, "admin", "page_view", "/devices", None, None, 95_000),
    (356, "admin", "search", "/devices", "device-search", "pos-terminal-01", None),
    (355, "admin", "click", "/devices", "device-row-pos-terminal-010", None, None),
    (301, "admin", "page_view", "/jobs/new", None, None, 61_000),
    (300, "admin", "form_submit", "/jobs/new", "job-form", None, None),
    (240, "operator", "page_view", "/sites/site-002", None, None, 33_000),
    (239, "operator", "form_submit", "/sites/site-002", "job-form", None, None),
    (176, "operator", "page_view", "/devices/pos-terminal-010", None, None, 28_000),
    (175, "operator", "click", "/devices/pos-terminal-010", "restart-device-button", None, None),
    (51, "operator", "page_view", "/devices/pos-terminal-007", None, None, 14_000),
    (50, "operator", "form_submit", "/devices/pos-terminal-007", "device-form", None, None),
    (16, "viewer", "page_view", "/devices", None, None, 120_000),
    (15, "viewer", "search", "/devices", "device-search", "Camden", None),
    (14, "viewer", "click", "/devices", "device-row-pos-terminal-002", None, None),
)

# (minutes ago, entity type, entity id, parameter, old value, new value, changed by,
#  change type, reason, performance before, performance after, successful, rollback reason)
_CONFIG_CHANGES: Final = (
    (1440, "system", "homepot", "retention_days", {"value": 30}, {"value": 90}, "admin",
     "manual", "Keep 90 days of analytics for model training", None, None, True, None),
    (240, "site", "site-002", "config_update_job", None,
     {"job_id": "sample-job-002", "action": "update_config", **_CONFIG}, "operator",
     "manual", "Midtown: new receipt layout", None, None, None, None),
    (237.0, "device", "pos-terminal-005", "config_version", {"version": "1.0.0"}, _CONFIG,
     "system", "automated", "Push notification config update",
     {"status": "healthy", "response_time_ms": 40}, {"status": "healthy", "response_time_ms": 35},
     True, None),
    (236.7, "device", "pos-terminal-006", "config_version", {"version": "1.0.0"}, _CONFIG,
     "system", "automated", "Push notification config update",
     {"status": "healthy", "response_time_ms": 46}, {"status": "healthy", "response_time_ms": 40},
     True, None),
    (236.4, "device", "pos-terminal-008", "config_version", {"version": "1.0.0"}, _CONFIG,
     "system", "automated", "Push notification config update",
     {"status": "healthy", "response_time_ms": 52}, {"status": "healthy", "response_time_ms": 45},
     True, None),
    (200, "device", "pos-terminal-001", "max_connections", {"value": 10}, {"value": 15}, "admin",
     "manual", "Increased load during peak hours", {"avg_response_time": 145, "error_rate": 1.2},
     {"avg_response_time": 98, "error_rate": 0.3}, True, None),
    (150, "device", "pos-terminal-009", "printer_timeout_ms", {"value": 3000}, {"value": 1500},
     "system", "ai_recommended", "Model suggests a shorter printer timeout to cut queue time",
     {"avg_response_time": 120, "error_rate": 0.4}, {"avg_response_time": 118, "error_rate": 2.9},
     False, "Receipt print failures rose to 2.9%"),
)
# fmt: on


def _site_of(device_id: str) -> _SiteSpec:
    return _SITES[(int(device_id[-3:]) - 1) // TERMINALS_PER_SITE]


def _condition(device_id: str) -> tuple[DeviceStatus, int, str, str]:
    """(status, since minutes ago, changed by, reason) of a sample terminal."""
    return _NOT_ONLINE.get(device_id, _ONLINE)


def _timeout_seconds(job_type: str) -> int:
    return 600 if job_type == "firmware_update" else 300


def _target_devices(target_type: str, target_id: str) -> list[str]:
    if target_type == "device":
        return [target_id]
    if target_type == "site":
        return [d for d in DEVICE_IDS if _site_of(d).site_id == target_id]
    return list(DEVICE_IDS)


def _opening_hours(site: _SiteSpec, day_of_week: int) -> tuple[time, time] | None:
    """Local opening hours of a site on a weekday (0 = Monday); None when closed."""
    if day_of_week == 6:
        return None if site.closed_on_sunday else (time(10), time(18))
    if day_of_week == 5:
        return time(9), time(22)
    return (time(7), time(23)) if site.site_id == "site-002" else (time(8), time(22))


def _peak_hours(day_of_week: int) -> tuple[time, time]:
    return {5: (time(13), time(16)), 6: (time(13), time(15))}.get(day_of_week, (time(12), time(14)))


def _with_event_ids(table: str, rows: list[Row]) -> list[Row]:
    """Fixed event ids, oldest first: the set is recognisable and a repeat insert a no-op."""
    rows = sorted(rows, key=lambda row: row["timestamp"])
    return [{"event_id": f"sample-{table}-{n:04d}", **row} for n, row in enumerate(rows, 1)]


class _SampleBuilder:
    """Every table's rows from one clock and one seeded random generator."""

    def __init__(self, now: datetime, users: dict[Role, str]) -> None:
        self.now = now
        self.users = {role.value: user_id for role, user_id in users.items()}
        self.random = random.Random(SAMPLE_SET)
        self.outcomes = self._outcome_specs()

    def ago(self, minutes: float) -> datetime:
        return self.now - timedelta(minutes=minutes)

    def who(self, name: str | None) -> str | None:
        """A sample user's id for "admin", "operator" or "viewer"; other names as they are."""
        return self.users.get(name, name) if name is not None else None

    def tables(self) -> list[tuple[type[Base], list[Row]]]:
        """Parents before children: devices need sites, health checks need devices."""
        return [
            (Site, self.sites()),
            (Device, self.devices()),
            (Job, self.jobs()),
            (JobExecution, self.job_executions()),
            (HealthCheck, self.health_checks()),
            (AuditLog, self.audit_logs()),
            (APIRequestLog, _with_event_ids("api_request_logs", self.api_request_logs())),
            (DeviceStateHistory, _with_event_ids("device_state_history", self.state_history())),
            (JobOutcome, _with_event_ids("job_outcomes", self.job_outcomes())),
            (ErrorLog, _with_event_ids("error_logs", self.error_logs())),
            (UserActivity, _with_event_ids("user_activities", self.user_activities())),
            (DeviceMetrics, _with_event_ids("device_metrics", self.device_metrics())),
            (ConfigurationHistory, _with_event_ids("configuration_history", self.config())),
            (SiteOperatingSchedule, self.schedules()),
            (Anomaly, self.anomalies()),
        ]

    # -- core tables -----------------------------------------------------------------------

    def sites(self) -> list[Row]:
        opened = self.ago(60 * 24 * 30)
        return [
            {
                "site_id": site.site_id,
                "name": site.name,
                "timezone": site.timezone,
                "address": site.address,
                "config": {"currency": site.currency, "receipt_footer": "Thank you!"},
                "created_at": opened,
                "updated_at": opened,
            }
            for site in _SITES
        ]

    def devices(self) -> list[Row]:
        rows = []
        for device_id in DEVICE_IDS:
            site = _site_of(device_id)
            status, since, _by, _reason = _condition(device_id)
            firmware = "2.5.1" if device_id in _OUTDATED else "2.6.0"
            till = (int(device_id[-3:]) - 1) % TERMINALS_PER_SITE + 1
            rows.append(
                {
                    "device_id": device_id,
                    "site_id": site.site_id,
                    "name": f"{site.name.removeprefix('HOMEPOT ')} till {till}",
                    "device_type": "pos_terminal",
                    "status": status,
                    "config": {
                        "config_version": firmware,
                        "max_connections": 15 if device_id == "pos-terminal-001" else 10,
                        "receipt_printer": True,
                    },
                    "firmware_version": firmware,
                    "ip_address": f"10.{int(site.site_id[-3:])}.0.{10 + till}",
                    "last_seen_at": self.ago(since if status is DeviceStatus.offline else 0.5),
                    "created_at": self.ago(60 * 24 * 30),
                    "updated_at": self.ago(since or 60 * 5),
                }
            )
        return rows

    def jobs(self) -> list[Row]:
        rows = []
        for number, job_type, target_type, target_id, status, created, ran, by, text in _JOBS:
            scheduled_for = None
            if status == "scheduled":
                scheduled_for = self.maintenance_window(target_id)
                status = "scheduled" if scheduled_for > self.now else "pending"
            started = None if status in ("pending", "scheduled", "cancelled") else created - 1
            completed = started - ran if started is not None and ran is not None else None
            payload = _FIRMWARE if job_type == "firmware_update" else {}
            if job_type == "config_update":
                payload = {"config_version": _CONFIG["version"], "config_url": _CONFIG["url"]}
            rows.append(
                {
                    "job_id": f"sample-job-{number:03d}",
                    "job_type": job_type,
                    "target_type": JobTargetType(target_type),
                    "target_id": target_id,
                    "payload": payload,
                    "status": JobStatus(status),
                    "schedule": JobSchedule.maintenance_window
                    if scheduled_for is not None
                    else JobSchedule.now,
                    "scheduled_for": scheduled_for,
                    "priority": 5,
                    "timeout_seconds": _timeout_seconds(job_type),
                    "max_retries": 2,
                    "description": text,
                    "created_by": self.who(by),
                    "created_at": self.ago(created),
                    "started_at": self.ago(started) if started is not None else None,
                    "completed_at": self.ago(completed) if completed is not None else None,
                }
            )
        return rows

    def maintenance_window(self, site_id: str) -> datetime:
        """The site's next maintenance window (from its sample schedule), in UTC."""
        site = next(site for site in _SITES if site.site_id == site_id)
        schedules = [SiteOperatingSchedule(**row) for row in self._site_schedules(site)]
        return next_maintenance_window(schedules, site.timezone, self.now)

    def job_executions(self) -> list[Row]:
        """One row per job and target device, agreeing with the job and its outcomes."""
        outcomes = {(spec[0], spec[1]): spec for spec in self.outcomes}
        rows = []
        for number, job_type, target_type, target_id, job_status, created, *_ in _JOBS:
            timeout = timedelta(seconds=_timeout_seconds(job_type))
            job_id = f"sample-job-{number:03d}"
            for device_id in _target_devices(target_type, target_id):
                row: Row = {
                    "job_id": job_id,
                    "device_id": device_id,
                    "status": ExecutionStatus.pending,
                    "attempt": 0,
                    "not_before": self.ago(created),
                    "created_at": self.ago(created),
                    "updated_at": self.ago(created),
                    **self._dispatch(None, None, timeout, acked=False),
                    "finished_at": None,
                    "result": None,
                    "error_code": None,
                    "error_message": None,
                }
                spec = outcomes.get((number, device_id))
                if spec is not None:
                    _, _, status, minutes, duration, retries, code, message = spec
                    finished = self.ago(minutes)
                    row |= {
                        "status": ExecutionStatus(status),
                        "attempt": retries,
                        "finished_at": finished,
                        "updated_at": finished,
                        "error_code": code,
                        "error_message": message,
                    }
                    if duration is not None:
                        first = finished - timedelta(milliseconds=duration)
                        # The last attempt's share of the time since the first dispatch.
                        last = finished - (finished - first) / (retries + 1)
                        row |= self._dispatch(first, last, timeout, acked=status != "timeout")
                elif job_status == "running":  # on its second attempt, acknowledged
                    row |= {"status": ExecutionStatus.running, "attempt": 1}
                    row |= self._dispatch(self.ago(created - 1), self.ago(4), timeout, acked=True)
                elif job_status == "scheduled":  # waits for its site's maintenance window
                    row["not_before"] = self.maintenance_window(_site_of(device_id).site_id)
                rows.append(row)
        return rows

    @staticmethod
    def _dispatch(
        first: datetime | None, last: datetime | None, timeout: timedelta, *, acked: bool
    ) -> Row:
        """The dispatch columns (all None for an execution never dispatched)."""
        if first is None or last is None:
            return dict.fromkeys(
                ("first_dispatched_at", "dispatched_at", "acked_at", "deadline_at", "delivery",
                 "claimed_by")
            )  # fmt: skip
        return {
            "first_dispatched_at": first,
            "dispatched_at": last,
            "acked_at": last + timedelta(seconds=2) if acked else None,
            "deadline_at": last + timeout,
            "delivery": "push",
            "claimed_by": "sample-data",
        }

    def health_checks(self) -> list[Row]:
        """Every terminal every 15 minutes over the last hour."""
        rows = []
        for device_id in DEVICE_IDS:
            status, since, _by, _reason = _condition(device_id)
            for minutes_ago in (60, 45, 30, 15, 0):
                affected = minutes_ago < since
                health = _HEALTH_BY_STATUS[status] if affected else "healthy"
                reachable = health != "unreachable"
                details: dict[str, Any] = {"error": "no answer within 10 s"}
                if reachable:
                    details = {
                        "cpu_percent": round(self.random.uniform(15, 65), 1),
                        "memory_percent": round(self.random.uniform(40, 75), 1),
                        "app_version": "2.5.1" if device_id in _OUTDATED else "2.6.0",
                    }
                rows.append(
                    {
                        "device_id": device_id,
                        "timestamp": self.ago(minutes_ago + 0.2),
                        "status": health,
                        "response_time_ms": round(self.random.uniform(18, 90), 1)
                        if reachable
                        else None,
                        "details": details,
                    }
                )
        return rows

    def audit_logs(self) -> list[Row]:
        rows = [
            {
                "timestamp": self.ago(minutes),
                "user_id": self.who(user),
                "action": action,
                "resource_type": resource_type,
                "resource_id": self.who(resource_id),
                "ip_address": _CLIENTS[user][0],
                "details": details,
            }
            for minutes, user, action, resource_type, resource_id, details in _AUDIT_LOGS
        ]
        # The marker of the sample set (see the module docstring), written with the rows.
        rows.append(
            {
                "timestamp": self.now,
                "user_id": None,
                "action": "sample_data.load",
                "resource_type": "sample_data",
                "resource_id": SAMPLE_SET,
                "ip_address": None,
                "details": {"sites": len(_SITES), "devices": len(DEVICE_IDS)},
            }
        )
        return rows

    # -- analytics tables ------------------------------------------------------------------

    def api_request_logs(self) -> list[Row]:
        """The same working session three times over the last six hours."""
        rows = []
        total = 3 * len(_API_CALLS)
        for index in range(total):
            method, endpoint, route, status, user, request_size, response_size, error = _API_CALLS[
                index % len(_API_CALLS)
            ]
            ip_address, user_agent = _CLIENTS[user]
            rows.append(
                {
                    "timestamp": self.ago((total - index) * 7 + self.random.uniform(0, 5)),
                    "request_id": f"{self.random.getrandbits(64):016x}",
                    "endpoint": endpoint,
                    "route": route or endpoint,
                    "method": method,
                    "status_code": status,
                    "response_time_ms": round(
                        self.random.uniform(8, 95) * (3 if status >= 500 else 1), 2
                    ),
                    "user_id": self.who(user),
                    "ip_address": ip_address,
                    "user_agent": user_agent,
                    "error_message": error,
                    "request_size_bytes": request_size,
                    "response_size_bytes": response_size,
                    "query_params": {"limit": "50"} if method == "GET" else None,
                }
            )
        return rows

    def state_history(self) -> list[Row]:
        changes = list(_STATE_CHANGES)
        for device_id, (status, since, by, reason) in _NOT_ONLINE.items():
            changes.append((since, device_id, "online", status.value, by, reason))
        return [
            {
                "timestamp": self.ago(minutes),
                "device_id": device_id,
                "previous_state": previous,
                "new_state": new,
                "changed_by": self.who(by),
                "reason": reason,
                "extra_data": {"job_id": _UPDATE_JOBS[device_id]} if "Firmware" in reason else None,
            }
            for minutes, device_id, previous, new, by, reason in changes
        ]

    def _outcome_specs(self) -> list[_OutcomeSpec]:
        outcomes: list[_OutcomeSpec] = list(_JOB_OUTCOMES)
        # The fleet-wide health check reached every terminal but the two in trouble.
        for index, device_id in enumerate(DEVICE_IDS):
            if device_id not in ("pos-terminal-004", "pos-terminal-010"):
                duration = self.random.randint(900, 1600)
                outcomes.append(
                    (4, device_id, "success", 89 - index * 0.05, duration, 0, None, None)
                )
        return outcomes

    def job_outcomes(self) -> list[Row]:
        jobs = {job[0]: job for job in _JOBS}
        rows = []
        for number, device_id, status, minutes, duration, retries, code, message in self.outcomes:
            job = jobs[number]
            dispatched = duration is not None
            rows.append(
                {
                    "timestamp": self.ago(minutes),
                    "job_id": f"sample-job-{number:03d}",
                    "job_type": job[1],
                    "device_id": device_id,
                    "status": status,
                    "duration_ms": duration,
                    "error_code": code,
                    "error_message": message,
                    "retry_count": retries,
                    "initiated_by": self.who(job[7]),
                    "extra_data": {
                        "site_id": _site_of(device_id).site_id,
                        "delivery": "push" if dispatched else None,
                        "attempts": retries + 1 if dispatched else 0,
                    },
                }
            )
        return rows

    def error_logs(self) -> list[Row]:
        rows = []
        for entry in _ERRORS:
            minutes, category, severity, code, message, endpoint, user, device, context, fixed = (
                entry
            )
            rows.append(
                {
                    "timestamp": self.ago(minutes),
                    "category": category,
                    "severity": severity,
                    "error_code": code,
                    "error_message": message,
                    "stack_trace": _TRACEBACK if code == "EXT_SERVICE_TIMEOUT" else None,
                    "endpoint": endpoint,
                    "user_id": self.who(user),
                    "device_id": device,
                    "context": context,
                    "resolved": fixed is not None,
                    "resolved_at": self.ago(minutes - fixed) if fixed is not None else None,
                }
            )
        return rows

    def user_activities(self) -> list[Row]:
        sessions = {name: f"{self.random.getrandbits(128):032x}" for name in self.users}
        return [
            {
                "timestamp": self.ago(minutes),
                "user_id": self.who(user),
                "session_id": sessions[user],
                "activity_type": activity,
                "page_url": page,
                "element_id": element,
                "search_query": query,
                "extra_data": {"viewport": "1440x900"} if activity == "page_view" else None,
                "duration_ms": duration,
            }
            for minutes, user, activity, page, element, query, duration in _ACTIVITIES
        ]

    def anomalies(self) -> list[Row]:
        """The episodes the insights scanner finds in the sample metrics: the offline terminal
        went silent, the failing one's latency is far above its usual."""
        silent_since = self.ago(70)
        slow_since = self.ago(120)
        common = {"status": "active", "expected_maintenance": False, "ended_at": None}
        return [
            {
                **common,
                "subject": "pos-terminal-004",
                "device_id": "pos-terminal-004",
                "site_id": _site_of("pos-terminal-004").site_id,
                "metric": "reporting",
                "detector": "silence",
                "started_at": silent_since,
                "last_seen_at": self.ago(0),
                "score": 60,
                "severity": "warning",
                "observed": 0.0,
                "expected": None,
                "explanation": "pos-terminal-004 sent no metrics for 1 h 10 min "
                f"(since {silent_since:%Y-%m-%d %H:%M} UTC) while the site is open",
                "created_at": self.ago(55),
                "updated_at": self.ago(0),
            },
            {
                **common,
                "subject": "pos-terminal-010",
                "device_id": "pos-terminal-010",
                "site_id": _site_of("pos-terminal-010").site_id,
                "metric": "network_latency",
                "detector": "level",
                "started_at": slow_since,
                "last_seen_at": self.ago(0),
                "score": 92,
                "severity": "critical",
                "observed": 312.0,
                "expected": 34.0,
                "explanation": "network latency 312 ms vs a usual 34 ms ± 9.0 ms "
                "over its previous 12 h",
                "created_at": self.ago(105),
                "updated_at": self.ago(0),
            },
        ]

    def device_metrics(self) -> list[Row]:
        """Every terminal every 5 minutes over the last 2 hours, following its site's hours.

        Transactions happen only while the site is open (in its own time zone) and the
        terminal works; an offline terminal reports nothing.
        """
        interval_minutes = 5
        rows = []
        for device_id in DEVICE_IDS:
            site = _site_of(device_id)
            zone = ZoneInfo(site.timezone)
            status, since, _by, _reason = _condition(device_id)
            for step in range(24):
                minutes_ago = (23 - step) * interval_minutes
                affected = minutes_ago < since
                if affected and status is DeviceStatus.offline:
                    continue
                moment = self.ago(minutes_ago + 0.5)
                local = moment.astimezone(zone)
                hours = _opening_hours(site, local.weekday())
                is_open = hours is not None and hours[0] <= local.time() < hours[1]
                failing = affected and status is DeviceStatus.error
                selling = is_open and not (affected and status is DeviceStatus.maintenance)
                selling = selling and not failing
                transactions = self.random.randint(6, 30) if selling else 0
                updating = affected and status is DeviceStatus.updating
                rows.append(
                    {
                        "timestamp": moment,
                        "device_id": device_id,
                        "cpu_percent": round(
                            self.random.uniform(8, 20) + transactions * 1.4 + 35 * updating, 1
                        ),
                        "memory_percent": round(self.random.uniform(45, 70), 1),
                        "disk_percent": round(38 + int(device_id[-3:]) * 0.9, 1),
                        "network_latency_ms": round(
                            self.random.uniform(180, 450)
                            if failing
                            else self.random.uniform(12, 60),
                            1,
                        ),
                        "transaction_count": transactions,
                        "transaction_volume": round(transactions * self.random.uniform(9, 42), 2),
                        "error_rate": round(
                            self.random.uniform(8, 20)
                            if failing
                            else self.random.uniform(0.1, 1.2),
                            2,
                        ),
                        "active_connections": self.random.randint(1, 4) if selling else 1,
                        "queue_depth": self.random.randint(0, 3) if selling else 0,
                        "extra_metrics": {
                            "temperature_c": round(self.random.uniform(36, 48), 1),
                            "printer_paper_low": device_id == "pos-terminal-006",
                        },
                        "collection_interval_seconds": float(interval_minutes * 60),
                    }
                )
        return rows

    def config(self) -> list[Row]:
        rows = []
        for entry in _CONFIG_CHANGES:
            (minutes, entity_type, entity_id, parameter, old, new, by, change_type, reason,
             before, after, successful, rollback_reason) = entry  # fmt: skip
            rows.append(
                {
                    "timestamp": self.ago(minutes),
                    "entity_type": entity_type,
                    "entity_id": entity_id,
                    "parameter_name": parameter,
                    "old_value": old,
                    "new_value": new,
                    "changed_by": self.who(by),
                    "change_reason": reason,
                    "change_type": change_type,
                    "performance_before": before,
                    "performance_after": after,
                    "was_successful": successful,
                    "was_rolled_back": rollback_reason is not None,
                    "rollback_reason": rollback_reason,
                }
            )
        return rows

    def schedules(self) -> list[Row]:
        """A week per site; Sunday is the maintenance window (Sydney is closed then)."""
        return [row for site in _SITES for row in self._site_schedules(site)]

    def _site_schedules(self, site: _SiteSpec) -> list[Row]:
        rows = []
        configured = self.ago(60 * 24 * 30)
        for day in range(7):
            hours = _opening_hours(site, day)
            peak = _peak_hours(day) if hours else (None, None)
            volume = round({5: 650, 6: 200}.get(day, 500) * site.volume_factor)
            if hours is None:
                note = "Closed on Sundays; maintenance at any time"
            elif day == 6:
                note = "Preferred maintenance window: 06:00-09:00"
            else:
                note = "Busy Saturday trade" if day == 5 else "Regular business day"
            rows.append(
                {
                    "site_id": site.site_id,
                    "day_of_week": day,
                    "open_time": hours[0] if hours else None,
                    "close_time": hours[1] if hours else None,
                    "is_closed": hours is None,
                    "is_maintenance_window": day == 6,
                    "expected_transaction_volume": volume if hours else 0,
                    "peak_hours_start": peak[0],
                    "peak_hours_end": peak[1],
                    "notes": note,
                    "special_considerations": {"maintenance_window": "06:00-09:00"}
                    if day == 6
                    else None,
                    "created_at": configured,
                    # Sydney closed its Sundays two hours ago (see the audit log).
                    "updated_at": self.ago(120) if hours is None else configured,
                }
            )
        return rows
