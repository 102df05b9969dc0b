"""``homepot validate``: is analytics collection working on a running server?

The spec's "Testing the System" flow, against any HOMEPOT server reachable over HTTP:

1. check that the backend is up (``GET /api/v1/health``) and log in as an admin;
2. generate test API calls: list sites and devices, ask for a device that does not exist (a
   404), send a batch of dashboard activity and a front-end error;
3. query every analytics endpoint, waiting (up to ``wait_seconds``) for the streams a running
   fleet fills: device states, job outcomes, device metrics, configuration history;
4. summarise what each of the eight streams collected.

Event streams are counted over a recent window (``window``, an hour by default), or only
from the moment the validation started (``since_start``); site schedules are configuration
and are counted whatever their age. A stream with no rows fails the validation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

from homepot.db import utcnow

API = "/api/v1"


@dataclass(frozen=True)
class StreamEndpoint:
    name: str  # what the summary calls it
    path: str  # under /api/v1/analytics
    table: str
    time_field: str = "timestamp"
    windowed: bool = True  # configuration (site schedules) is counted whatever its age


STREAMS: tuple[StreamEndpoint, ...] = (
    StreamEndpoint("API requests", "requests", "api_request_logs"),
    StreamEndpoint("Device states", "device-states", "device_state_history"),
    StreamEndpoint("Job outcomes", "jobs", "job_outcomes"),
    StreamEndpoint("Errors", "errors", "error_logs"),
    StreamEndpoint("User activities", "user-activities", "user_activities"),
    StreamEndpoint("Device metrics", "device-metrics", "device_metrics"),
    StreamEndpoint("Configuration history", "config-history", "configuration_history"),
    StreamEndpoint(
        "Site schedules", "site-schedules", "site_operating_schedules", "updated_at", False
    ),
)
PAGE_LIMIT = 1000
# Rows counted per stream at most; a busy stream shows "5,000+".
MAX_PAGES = 5


class ValidationFailed(Exception):
    """The server cannot be validated (down, wrong credentials); the message says why."""


@dataclass
class ValidationConfig:
    url: str
    token: str | None = None
    email: str | None = None
    password: str | None = None
    wait_seconds: float = 60.0
    window: timedelta = timedelta(hours=1)
    # Count only rows written after the validation started (older rows, sample data
    # included, do not count): proves the streams are collecting now.
    since_start: bool = False
    poll_seconds: float = 2.0


@dataclass
class StreamCount:
    stream: StreamEndpoint
    rows: int = 0
    more: bool = False  # more rows than were counted
    newest: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.rows > 0

    @property
    def shown_rows(self) -> str:
        return f"{self.rows:,}+" if self.more else f"{self.rows:,}"


@dataclass
class TestCall:
    method: str
    path: str
    status_code: int
    expected: int

    @property
    def ok(self) -> bool:
        return self.status_code == self.expected


@dataclass
class ValidationResult:
    url: str
    version: str
    since: datetime
    calls: list[TestCall] = field(default_factory=list)
    streams: list[StreamCount] = field(default_factory=list)
    waited_seconds: float = 0.0

    @property
    def missing(self) -> list[str]:
        return [count.stream.name for count in self.streams if not count.ok]

    @property
    def passed(self) -> bool:
        return not self.missing


Progress = Callable[[str], None]


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail if detail is not None else body)[:200]


async def _check_backend(http: httpx.AsyncClient) -> str:
    try:
        response = await http.get(f"{API}/health")
    except httpx.HTTPError as exc:
        raise ValidationFailed(
            f"the backend at {http.base_url} is not reachable: {type(exc).__name__} {exc}"
        ) from None
    if response.status_code != 200:
        raise ValidationFailed(
            f"GET {API}/health answered {response.status_code}: {_detail(response)}"
        )
    health = response.json()
    if health.get("status") != "ok":
        raise ValidationFailed(
            f"the backend is up but {health.get('status')}: database {health.get('database')}"
        )
    return str(health.get("version", "?"))


async def _log_in(http: httpx.AsyncClient, config: ValidationConfig) -> dict[str, str]:
    token = config.token
    if token is None:
        if not config.email or not config.password:
            raise ValidationFailed(
                "no credentials: pass --token, or --email and --password of an admin "
                "(or set HOMEPOT_VALIDATE_EMAIL and HOMEPOT_VALIDATE_PASSWORD)"
            )
        response = await http.post(
            f"{API}/auth/token", data={"username": config.email, "password": config.password}
        )
        if response.status_code != 200:
            raise ValidationFailed(f"login as {config.email} failed: {_detail(response)}")
        token = str(response.json()["access_token"])
    headers = {"Authorization": f"Bearer {token}"}
    me = await http.get(f"{API}/users/me", headers=headers)
    if me.status_code != 200:
        raise ValidationFailed(f"the token was refused: {_detail(me)}")
    if me.json().get("role") != "admin":
        raise ValidationFailed(
            f"{me.json().get('email')} is {me.json().get('role')}; the analytics "
            "endpoints need an admin"
        )
    return headers


async def _test_calls(http: httpx.AsyncClient, headers: dict[str, str]) -> list[TestCall]:
    """Calls every server answers the same way; they feed requests, activities and errors."""
    run = uuid.uuid4().hex[:12]
    session_id = f"validate-{run}"
    activities = {
        "events": [
            {"activity_type": "page_view", "page_url": "/validate", "session_id": session_id},
            {
                "activity_type": "search",
                "page_url": "/devices",
                "element_id": "device-search",
                "search_query": "validation",
                "session_id": session_id,
            },
        ]
    }
    client_error = {
        "message": f"homepot validate: a test error ({run})",
        "page_url": "/validate",
        "severity": "info",
        "error_code": "FRONTEND_VALIDATION_TEST",
        "context": {"source_run": run},
    }
    plan: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", f"{API}/sites", {}, 200),
        ("GET", f"{API}/devices", {}, 200),
        ("GET", f"{API}/devices/validate-missing-{run}", {}, 404),
        ("POST", f"{API}/analytics/user-activities", {"json": activities}, 202),
        ("POST", f"{API}/analytics/errors", {"json": client_error}, 202),
    ]
    calls = []
    for method, path, extra, expected in plan:
        response = await http.request(method, path, headers=headers, **extra)
        calls.append(TestCall(method, path, response.status_code, expected))
    return calls


async def _count(
    http: httpx.AsyncClient, headers: dict[str, str], stream: StreamEndpoint, since: datetime
) -> StreamCount:
    count = StreamCount(stream)
    params: dict[str, Any] = {"limit": PAGE_LIMIT}
    if stream.windowed:
        params["start_date"] = since.isoformat()
    for _ in range(MAX_PAGES):
        response = await http.get(f"{API}/analytics/{stream.path}", params=params, headers=headers)
        if response.status_code != 200:
            raise ValidationFailed(
                f"GET {API}/analytics/{stream.path} answered {response.status_code}: "
                f"{_detail(response)}"
            )
        page = response.json()
        items = page["items"]
        if items and count.newest is None:
            count.newest = datetime.fromisoformat(items[0][stream.time_field])
        count.rows += len(items)
        if page.get("next_cursor") is None:
            return count
        params["cursor"] = page["next_cursor"]
    count.more = True
    return count


async def count_streams(
    http: httpx.AsyncClient, headers: dict[str, str], since: datetime
) -> list[StreamCount]:
    return [await _count(http, headers, stream, since) for stream in STREAMS]


async def validate(
    http: httpx.AsyncClient, config: ValidationConfig, progress: Progress | None = None
) -> ValidationResult:
    """Run the validation against the server ``http`` talks to; raises ValidationFailed."""
    say = progress or (lambda message: None)
    version = await _check_backend(http)
    headers = await _log_in(http, config)
    # Health shows the version to admins only: ask again with the admin's token.
    with contextlib.suppress(httpx.HTTPError, ValueError):
        version = (await http.get(f"{API}/health", headers=headers)).json().get("version", version)
    say(f"Backend {config.url} is up (HOMEPOT {version}).")
    since = utcnow() if config.since_start else utcnow() - config.window
    result = ValidationResult(url=config.url, version=version, since=since)
    result.calls = await _test_calls(http, headers)
    good = sum(call.ok for call in result.calls)
    say(f"Made {len(result.calls)} test API calls ({good} answered as expected).")
    started = time.monotonic()
    deadline = started + config.wait_seconds
    while True:
        result.streams = await count_streams(http, headers, since)
        if result.passed or time.monotonic() >= deadline:
            break
        say(f"Waiting for: {', '.join(result.missing)} ...")
        await asyncio.sleep(min(config.poll_seconds, max(deadline - time.monotonic(), 0)))
    result.waited_seconds = round(time.monotonic() - started, 1)
    return result
