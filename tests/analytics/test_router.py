"""The analytics API as an admin, a dashboard user and an intruder see it, on both backends."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

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
from homepot.auth.models import Role
from homepot.db import Base
from tests.helpers import auth_headers, create_user, flush, login, rows

API = "/api/v1/analytics"
Row = dict[str, Any]


@dataclass(frozen=True)
class FilterCase:
    """``?param=value`` must return a row made with ``match`` and not one made with ``other``."""

    param: str
    value: str
    match: Row
    other: Row


@dataclass(frozen=True)
class Stream:
    path: str
    model: type[Base]
    base: Callable[[int], Row]  # the fields of a valid row, unique by index
    filters: list[FilterCase]
    malformed: list[tuple[str, str]] = field(default_factory=list)
    time_field: str = "timestamp"

    def __str__(self) -> str:
        return self.path


def _same(param: str, match: Any, other: Any, value: str | None = None) -> FilterCase:
    return FilterCase(param, str(match) if value is None else value, {param: match}, {param: other})


STREAMS = [
    Stream(
        "requests",
        APIRequestLog,
        lambda i: {
            "endpoint": f"/probe/{i}",
            "route": "/probe/{n}",
            "method": "GET",
            "status_code": 200,
            "response_time_ms": 10.0,
            "user_id": "probe-user",
            "request_size_bytes": 12,
            "response_size_bytes": 34,
        },
        [
            _same("endpoint", "/probe/a", "/probe/b"),
            _same("route", "/probe-a/{n}", "/probe-b/{n}"),
            _same("method", "POST", "DELETE", value="post"),
            _same("status_code", 418, 503),
            _same("user_id", "alice", "bob"),
            FilterCase(
                "min_response_time_ms",
                "500",
                {"response_time_ms": 750.5},
                {"response_time_ms": 499.9},
            ),
        ],
        [
            ("method", "FETCH"),
            ("status_code", "99"),
            ("status_code", "600"),
            ("status_code", "ok"),
            ("min_response_time_ms", "-1"),
        ],
    ),
    Stream(
        "device-states",
        DeviceStateHistory,
        lambda i: {
            "device_id": f"pos-terminal-{i:03d}",
            "previous_state": "online",
            "new_state": "offline",
            "changed_by": "system",
            "reason": "probe",
        },
        [
            _same("device_id", "pos-terminal-a", "pos-terminal-b"),
            _same("previous_state", "maintenance", "error"),
            _same("new_state", "updating", "online"),
            _same("changed_by", "user-a", "system"),
        ],
        [("device_id", ""), ("new_state", "x" * 33)],
    ),
    Stream(
        "jobs",
        JobOutcome,
        lambda i: {
            "job_id": f"job-{i}",
            "job_type": "restart",
            "device_id": f"pos-terminal-{i:03d}",
            "status": "success",
            "duration_ms": 1200,
        },
        [
            _same("job_id", "job-a", "job-b"),
            _same("job_type", "firmware_update", "config_change"),
            _same("device_id", "pos-terminal-a", "pos-terminal-b"),
            _same("status", "timeout", "failed"),
        ],
        [("status", "done"), ("status", "SUCCESS")],
    ),
    Stream(
        "errors",
        ErrorLog,
        lambda i: {
            "category": "database",
            "severity": "error",
            "error_code": "DB_CONN_001",
            "error_message": f"probe error {i}",
        },
        [
            _same("category", "external_service", "validation"),
            _same("severity", "critical", "info"),
            _same("error_code", "EXT_SERVICE_TIMEOUT", "API_VALIDATION_001"),
            _same("device_id", "pos-terminal-a", "pos-terminal-b"),
            FilterCase(
                "resolved",
                "true",
                {"resolved": True, "resolved_at": datetime(2024, 3, 2, tzinfo=UTC)},
                {"resolved": False},
            ),
            FilterCase(
                "resolved",
                "false",
                {"resolved": False},
                {"resolved": True, "resolved_at": datetime(2024, 3, 2, tzinfo=UTC)},
            ),
        ],
        [
            ("category", "network"),
            ("severity", "fatal"),
            ("resolved", "maybe"),
            ("error_code", "has space"),
        ],
    ),
    Stream(
        "user-activities",
        UserActivity,
        lambda i: {
            "user_id": "probe-user",
            "session_id": f"session-{i}",
            "activity_type": "click",
            "page_url": "/devices",
            "element_id": "add-device-button",
        },
        [
            _same("user_id", "alice", "bob"),
            _same("session_id", "session-a", "session-b"),
            _same("activity_type", "form_submit", "page_view"),
            _same("page_url", "/sites", "/jobs"),
        ],
        [("activity_type", "Page View"), ("activity_type", "x" * 33)],
    ),
    Stream(
        "device-metrics",
        DeviceMetrics,
        lambda i: {
            "device_id": f"pos-terminal-{i:03d}",
            "cpu_percent": 45.2,
            "memory_percent": 62.8,
        },
        [_same("device_id", "pos-terminal-a", "pos-terminal-b")],
        [("device_id", ""), ("device_id", "x" * 65)],
    ),
    Stream(
        "config-history",
        ConfigurationHistory,
        lambda i: {
            "entity_type": "device",
            "entity_id": f"pos-terminal-{i:03d}",
            "parameter_name": "config_version",
            "old_value": {"version": "1.0.0"},
            "new_value": {"version": "2.6.0"},
            "changed_by": "system",
            "change_type": "automated",
        },
        [
            _same("entity_type", "site", "system"),
            _same("entity_id", "site-a", "site-b"),
            _same("parameter_name", "max_connections", "config_url"),
            _same("change_type", "ai_recommended", "manual"),
        ],
        [("entity_type", "planet"), ("change_type", "magic")],
    ),
    Stream(
        "site-schedules",
        SiteOperatingSchedule,
        lambda i: {
            "site_id": f"site-{i:03d}",
            "day_of_week": i % 7,
            "open_time": time(8, 0),
            "close_time": time(22, 0),
        },
        [_same("site_id", "site-a", "site-b"), _same("day_of_week", 2, 5)],
        [("day_of_week", "7"), ("day_of_week", "-1"), ("day_of_week", "monday")],
        time_field="updated_at",
    ),
]
# Every stream filters on provenance, both ways, and refuses any other source.
PROVENANCE = [_same("source", "simulated", "device"), _same("source", "device", "simulated")]
STREAMS = [
    replace(
        stream,
        filters=[*stream.filters, *PROVENANCE],
        malformed=[*stream.malformed, ("source", "real")],
    )
    for stream in STREAMS
]
COMMON_MALFORMED = [
    ("start_date", "yesterday"),
    ("end_date", "2025-13-01"),
    ("start_date", "2025-12-01T25:00:00Z"),
    ("cursor", "not-a-cursor"),
    ("cursor", "WzEsMl0"),  # base64url of [1,2]: decodes, but is no position
    ("limit", "ten"),
    ("limit", "0"),
    ("limit", "1001"),
]
by_stream = pytest.mark.parametrize("stream", STREAMS, ids=str)
_counter = iter(range(10**9))


async def create_rows(app: FastAPI, stream: Stream, *variants: Row) -> list[str]:
    """One row per variant (base fields, then the variant's); returns their keys."""
    keys: list[str] = []
    if stream.model is SiteOperatingSchedule:
        async with app.state.session_factory() as session:
            for variant in variants:
                fields = stream.base(next(_counter)) | variant
                session.add(SiteOperatingSchedule(**fields))
                keys.append(f"{fields['site_id']}/{fields['day_of_week']}")
            await session.commit()
        return keys
    for variant in variants:
        fields = stream.base(next(_counter)) | variant
        event_id = app.state.recorder.record(stream.model, **fields)
        assert event_id is not None
        keys.append(event_id)
    await flush(app)
    return keys


def key_of(stream: Stream, item: Row) -> str:
    if stream.model is SiteOperatingSchedule:
        return f"{item['site_id']}/{item['day_of_week']}"
    return str(item["event_id"])


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def timed(stream: Stream, moment: datetime) -> Row:
    return {stream.time_field: moment}


@pytest.fixture
async def admin(app: FastAPI, client: AsyncClient) -> dict[str, str]:
    return await auth_headers(app, client, Role.admin)


def error_locs(response: Any) -> list[list[Any]]:
    assert response.status_code == 422, response.text
    return [item["loc"] for item in response.json()["detail"]]


# -- reading ------------------------------------------------------------------------------


@by_stream
async def test_each_filter_selects_only_matching_rows(
    app: FastAPI, client: AsyncClient, admin: dict[str, str], stream: Stream
) -> None:
    for case in stream.filters:
        match, other = await create_rows(app, stream, case.match, case.other)
        response = await client.get(
            f"{API}/{stream.path}", params={case.param: case.value}, headers=admin
        )
        keys = {key_of(stream, item) for item in rows(response)}
        assert match in keys, f"?{case.param}={case.value} lost a matching row"
        assert other not in keys, f"?{case.param}={case.value} returned a row it excludes"


async def test_device_metrics_take_several_device_ids(
    app: FastAPI, client: AsyncClient, admin: dict[str, str]
) -> None:
    metrics = STREAMS[5]
    a, b, c = await create_rows(
        app,
        metrics,
        {"device_id": "pos-terminal-a"},
        {"device_id": "pos-terminal-b"},
        {"device_id": "pos-terminal-c"},
    )
    response = await client.get(
        f"{API}/device-metrics",
        params=[("device_id", "pos-terminal-a"), ("device_id", "pos-terminal-b")],
        headers=admin,
    )
    assert {item["event_id"] for item in rows(response)} == {a, b}


@by_stream
async def test_items_carry_the_spec_columns_with_offset_timestamps(
    app: FastAPI, client: AsyncClient, admin: dict[str, str], stream: Stream
) -> None:
    (key,) = await create_rows(app, stream, timed(stream, at("2024-03-01T12:30:00+02:00")))
    items = rows(
        await client.get(f"{API}/{stream.path}", params={"end_date": "2024-12-31"}, headers=admin)
    )
    (item,) = [i for i in items if key_of(stream, i) == key]
    table = stream.model.__table__
    assert set(item) == {column.name for column in table.columns}
    assert {"id", stream.time_field} <= set(item)
    stamp = datetime.fromisoformat(item[stream.time_field])
    assert stamp.utcoffset() == timedelta(0)
    assert stamp == at("2024-03-01T10:30:00Z")


async def test_requests_lists_the_calls_just_made_with_route_and_sizes(
    app: FastAPI, client: AsyncClient, admin: dict[str, str]
) -> None:
    me = await client.get("/api/v1/users/me", headers=admin)
    assert me.status_code == 200
    await flush(app)
    response = await client.get(
        f"{API}/requests",
        params={"route": "/api/v1/users/me", "start_date": "2025-12-01", "end_date": "2030-12-05"},
        headers=admin,
    )
    (item,) = rows(response)
    assert item["endpoint"] == "/api/v1/users/me"
    assert item["method"] == "GET"
    assert item["status_code"] == 200
    assert item["response_size_bytes"] == len(me.content)
    assert item["user_id"] == me.json()["id"]


DATE_WINDOWS: list[tuple[dict[str, str], set[str]]] = [
    # A date end includes that whole day; a date start is 00:00 UTC.
    ({"start_date": "2024-03-01", "end_date": "2024-03-05"}, {"first", "last"}),
    ({"start_date": "2024-03-06", "end_date": "2024-03-06"}, {"after"}),
    ({"end_date": "2024-03-05"}, {"before", "first", "last"}),
    # Datetime bounds are inclusive and respect offsets; a naive datetime is UTC.
    (
        {"start_date": "2024-03-01T00:00:00Z", "end_date": "2024-03-05T23:59:59.5+00:00"},
        {"first", "last"},
    ),
    (
        {"start_date": "2024-03-01T01:00:00+01:00", "end_date": "2024-03-05T23:59:59"},
        {"first"},
    ),
    ({"start_date": "2024-03-05T23:59:59.5", "end_date": "2024-03-05T23:59:59.5Z"}, {"last"}),
    ({"start_date": "2024-02-29T23:59:59.999999", "end_date": "2024-03-01"}, {"before", "first"}),
]


@by_stream
async def test_date_and_datetime_bounds(
    app: FastAPI, client: AsyncClient, admin: dict[str, str], stream: Stream
) -> None:
    moments = {
        "before": at("2024-02-29T23:59:59.999999+00:00"),
        "first": at("2024-03-01T00:00:00+00:00"),
        "last": at("2024-03-05T23:59:59.500000+00:00"),
        "after": at("2024-03-06T00:00:00+00:00"),
    }
    keys = await create_rows(app, stream, *(timed(stream, m) for m in moments.values()))
    label_of = dict(zip(keys, moments, strict=True))
    for params, expected in DATE_WINDOWS:
        response = await client.get(f"{API}/{stream.path}", params=params, headers=admin)
        found = {label_of.get(key_of(stream, item), "other") for item in rows(response)}
        assert found == expected, params
    # An unencoded "+" arrives as a space; the offset is still understood.
    response = await client.get(
        f"{API}/{stream.path}?start_date=2024-03-06T01:00:00+01:00&end_date=2024-03-06",
        headers=admin,
    )
    assert {label_of.get(key_of(stream, i), "other") for i in rows(response)} == {"after"}


@by_stream
@pytest.mark.parametrize(
    ("start", "end"),
    [("2024-03-02", "2024-03-01"), ("2024-03-01T00:00:01Z", "2024-03-01T00:00:00Z")],
)
async def test_start_after_end_is_422_naming_both(
    client: AsyncClient, admin: dict[str, str], stream: Stream, start: str, end: str
) -> None:
    response = await client.get(
        f"{API}/{stream.path}", params={"start_date": start, "end_date": end}, headers=admin
    )
    assert response.status_code == 422
    message = " ".join(item["msg"] for item in response.json()["detail"])
    assert "start_date" in message
    assert "end_date" in message


@by_stream
async def test_pagination_walks_every_row_once_newest_first(
    app: FastAPI, client: AsyncClient, admin: dict[str, str], stream: Stream
) -> None:
    # Ties on the time column are broken by id, so no row is skipped or repeated.
    moments = ["2024-03-01T10:00:00Z"] * 3 + ["2024-03-02T10:00:00Z"] * 2
    moments += ["2024-03-03T10:00:00Z", "2024-02-01T10:00:00Z"]
    created = await create_rows(app, stream, *(timed(stream, at(m)) for m in moments))
    seen: list[Row] = []
    # Pages of 2 end inside both groups of equal times.
    params: dict[str, str] = {"limit": "2", "end_date": "2024-12-31"}
    pages = 0
    while True:
        body = (await client.get(f"{API}/{stream.path}", params=params, headers=admin)).json()
        seen.extend(body["items"])
        pages += 1
        assert len(body["items"]) <= 2
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
        assert pages < 10, "pagination does not end"
    keys = [key_of(stream, item) for item in seen]
    assert sorted(keys) == sorted(created)
    assert pages == 4
    order = [(at(item[stream.time_field]), item["id"]) for item in seen]
    assert order == sorted(order, reverse=True)


@by_stream
async def test_limit_defaults_to_100(
    app: FastAPI, client: AsyncClient, admin: dict[str, str], stream: Stream
) -> None:
    moment = timed(stream, at("2024-03-01T00:00:00Z"))
    await create_rows(app, stream, *([moment] * 101))
    body = (
        await client.get(f"{API}/{stream.path}", params={"end_date": "2024-12-31"}, headers=admin)
    ).json()
    assert len(body["items"]) == 100
    assert body["next_cursor"] is not None


@by_stream
async def test_unknown_parameter_is_422_naming_it_and_the_allowed_ones(
    client: AsyncClient, admin: dict[str, str], stream: Stream
) -> None:
    response = await client.get(
        f"{API}/{stream.path}", params={"devce_id": "pos-terminal-001"}, headers=admin
    )
    assert error_locs(response) == [["query", "devce_id"]]
    message = response.json()["detail"][0]["msg"]
    assert "devce_id" in message
    for allowed in [
        "start_date",
        "end_date",
        "limit",
        "cursor",
        *(c.param for c in stream.filters),
    ]:
        assert allowed in message


@by_stream
async def test_malformed_values_are_422_naming_the_parameter(
    client: AsyncClient, admin: dict[str, str], stream: Stream
) -> None:
    for param, value in COMMON_MALFORMED + stream.malformed:
        response = await client.get(f"{API}/{stream.path}", params={param: value}, headers=admin)
        assert response.status_code == 422, (param, value, response.text)
        # A repeatable parameter's loc ends with the index of the bad value.
        assert ["query", param] in [loc[:2] for loc in error_locs(response)], (param, value)


async def test_reading_needs_an_admin(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    operator = await auth_headers(app, client, Role.operator)
    admin = await auth_headers(app, client, Role.admin)
    for stream in STREAMS:
        url = f"{API}/{stream.path}"
        assert (await client.get(url)).status_code == 401, url
        bad_token = {"Authorization": "Bearer not-a-token"}
        assert (await client.get(url, headers=bad_token)).status_code == 401, url
        for headers in (viewer, operator):
            response = await client.get(url, headers=headers)
            assert response.status_code == 403, url
            assert "admin" in response.json()["detail"]
        # Refused before anything else is looked at: a bad parameter does not leak a 422.
        assert (await client.get(url, params={"devce_id": "x"})).status_code == 401
        assert (await client.get(url, headers=admin)).status_code == 200, url


# -- ingestion ----------------------------------------------------------------------------


async def user_activities(client: AsyncClient, admin: dict[str, str], **params: str) -> list[Row]:
    return rows(await client.get(f"{API}/user-activities", params=params, headers=admin))


async def test_activity_batch_is_stored_as_the_token_user(
    app: FastAPI, client: AsyncClient, admin: dict[str, str]
) -> None:
    viewer = await create_user(app, role=Role.viewer)
    headers = await login(client, viewer["email"], viewer["password"])
    searched_at = datetime.now(UTC) - timedelta(minutes=3)
    events = [
        {
            "activity_type": "page_view",
            "session_id": "sess-1",
            "page_url": "/devices",
            "duration_ms": 1500,
            "extra_data": {"theme": "dark"},
        },
        {
            "activity_type": "search",
            "session_id": "sess-1",
            "page_url": "/devices",
            "element_id": "device-search",
            "search_query": "temperature",
            "timestamp": searched_at.isoformat(),
        },
    ]
    response = await client.post(f"{API}/user-activities", json={"events": events}, headers=headers)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2}
    await flush(app)
    # Newest first: the search was sent with a timestamp three minutes ago.
    view, search = await user_activities(client, admin, session_id="sess-1")
    assert {search["user_id"], view["user_id"]} == {viewer["id"]}
    assert view["activity_type"] == "page_view"
    assert view["duration_ms"] == 1500
    assert view["extra_data"] == {"theme": "dark"}
    assert search["search_query"] == "temperature"
    assert search["element_id"] == "device-search"
    assert at(search["timestamp"]) == searched_at


async def test_an_event_naming_another_user_is_refused_and_not_stored(
    app: FastAPI, client: AsyncClient, admin: dict[str, str]
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    events = [
        {"activity_type": "click", "session_id": "sess-2"},
        {"activity_type": "click", "session_id": "sess-2", "user_id": "someone-else"},
    ]
    response = await client.post(f"{API}/user-activities", json={"events": events}, headers=viewer)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"][:3] == ["body", "events", 1]
    assert "user_id" in error["msg"]
    await flush(app)
    assert await user_activities(client, admin, session_id="sess-2") == []
    assert await user_activities(client, admin, user_id="someone-else") == []


async def test_an_oversized_batch_is_413_and_stores_nothing(
    app: FastAPI, client: AsyncClient, admin: dict[str, str]
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    too_many = [{"activity_type": "click", "session_id": "sess-big"}] * 101
    response = await client.post(
        f"{API}/user-activities", json={"events": too_many}, headers=viewer
    )
    assert response.status_code == 413
    assert "at most 100 events" in response.json()["detail"]
    await flush(app)
    assert await user_activities(client, admin, session_id="sess-big") == []
    response = await client.post(
        f"{API}/user-activities", json={"events": too_many[:100]}, headers=viewer
    )
    assert response.json() == {"accepted": 100}
    await flush(app)
    assert len(await user_activities(client, admin, session_id="sess-big", limit="1000")) == 100


async def test_a_resent_batch_is_stored_once(
    app: FastAPI, client: AsyncClient, admin: dict[str, str]
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    # An event is the same event by its id and its time (the key of a time-partitioned
    # table includes the time), as the dashboard's tracker sends them.
    at = datetime.now(UTC).isoformat()
    batch = {
        "events": [
            {
                "event_id": str(uuid.uuid4()),
                "timestamp": at,
                "activity_type": "click",
                "session_id": "sess-3",
            }
            for _ in range(3)
        ]
    }
    for _ in range(2):  # twice before the recorder writes, then once more after
        response = await client.post(f"{API}/user-activities", json=batch, headers=viewer)
        assert response.status_code == 202
    await flush(app)
    response = await client.post(f"{API}/user-activities", json=batch, headers=viewer)
    assert response.status_code == 202
    await flush(app)
    stored = await user_activities(client, admin, session_id="sess-3")
    assert len(stored) == 3
    assert {item["event_id"] for item in stored} == {
        uuid.UUID(e["event_id"]).hex for e in batch["events"]
    }


NOW = datetime.now(UTC)
BAD_EVENTS: list[tuple[Row, str, str]] = [
    ({"page_url": "/" + "x" * 2048}, "page_url", "at most 2048"),
    ({"search_query": "q" * 513}, "search_query", "at most 512"),
    ({"session_id": "s" * 65}, "session_id", "at most 64"),
    ({"extra_data": {"blob": "x" * 5000}}, "extra_data", "at most 4096"),
    ({"duration_ms": -1}, "duration_ms", "greater than or equal to 0"),
    ({"activity_type": "Page View!"}, "activity_type", "pattern"),
    ({"event_id": "not-a-uuid"}, "event_id", "UUID"),
    ({"timestamp": "2025-12-01T10:00:00"}, "timestamp", "timezone"),
    ({"timestamp": (NOW + timedelta(hours=1)).isoformat()}, "timestamp", "in the future"),
    ({"timestamp": (NOW - timedelta(days=8)).isoformat()}, "timestamp", "days old"),
    ({"colour": "blue"}, "colour", "Extra inputs"),
]


@pytest.mark.parametrize(("change", "field_name", "message"), BAD_EVENTS)
async def test_invalid_events_are_422_naming_the_field(
    app: FastAPI, client: AsyncClient, change: Row, field_name: str, message: str
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    event = {"activity_type": "click"} | change
    response = await client.post(f"{API}/user-activities", json={"events": [event]}, headers=viewer)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][:4] == ["body", "events", 0, field_name]
    assert message in error["msg"]


async def test_ingestion_needs_a_login(client: AsyncClient) -> None:
    body = {"events": [{"activity_type": "click"}]}
    assert (await client.post(f"{API}/user-activities", json=body)).status_code == 401
    assert (await client.post(f"{API}/errors", json={"message": "x"})).status_code == 401
    empty = await client.post(f"{API}/user-activities", json={"events": []})
    assert empty.status_code == 401


async def test_a_client_error_report_is_stored_as_a_frontend_api_error(
    app: FastAPI, client: AsyncClient, admin: dict[str, str]
) -> None:
    viewer = await create_user(app, role=Role.viewer)
    headers = await login(client, viewer["email"], viewer["password"])
    report = {
        "message": "TypeError: devices is undefined",
        "stack": "at renderTable (analytics.js:10:5)",
        "page_url": "/devices",
        "context": {"component": "DeviceTable"},
    }
    response = await client.post(
        f"{API}/errors", json=report, headers=headers | {"User-Agent": "Mozilla/5.0 probe"}
    )
    assert response.status_code == 202, response.text
    event_id = response.json()["event_id"]
    await flush(app)
    (error,) = rows(
        await client.get(f"{API}/errors", params={"error_code": "FRONTEND_ERROR"}, headers=admin)
    )
    assert error["event_id"] == event_id
    assert error["category"] == "api"
    assert error["severity"] == "error"
    assert error["error_message"] == report["message"]
    assert error["stack_trace"] == report["stack"]
    assert error["user_id"] == viewer["id"]
    assert error["resolved"] is False
    assert error["context"] == {
        "component": "DeviceTable",
        "source": "frontend",
        "client_reported": True,
        "page_url": "/devices",
        "user_agent": "Mozilla/5.0 probe",
    }


async def test_a_client_error_report_is_validated(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    for body, field_name in [
        ({}, "message"),
        ({"message": "x", "severity": "fatal"}, "severity"),
        ({"message": "x", "context": {"blob": "x" * 5000}}, "context"),
        ({"message": "x", "user_id": "someone-else"}, "user_id"),
    ]:
        response = await client.post(f"{API}/errors", json=body, headers=viewer)
        assert ["body", field_name] in error_locs(response), body


async def test_resolving_an_error_sets_and_clears_resolved_at(
    app: FastAPI, client: AsyncClient, admin: dict[str, str]
) -> None:
    event_id = app.state.recorder.record(
        ErrorLog, category="database", severity="error", error_message="connection refused"
    )
    await flush(app)
    (stored,) = rows(await client.get(f"{API}/errors", headers=admin))
    assert stored["event_id"] == event_id
    url = f"{API}/errors/{stored['id']}"

    before = datetime.now(UTC)
    resolved = await client.patch(url, json={"resolved": True}, headers=admin)
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["resolved"] is True
    resolved_at = at(resolved.json()["resolved_at"])
    assert before - timedelta(seconds=1) <= resolved_at <= datetime.now(UTC)
    (listed,) = rows(await client.get(f"{API}/errors", params={"resolved": "true"}, headers=admin))
    assert at(listed["resolved_at"]) == resolved_at
    again = await client.patch(url, json={"resolved": True}, headers=admin)
    assert at(again.json()["resolved_at"]) == resolved_at

    reopened = await client.patch(url, json={"resolved": False}, headers=admin)
    assert reopened.json()["resolved"] is False
    assert reopened.json()["resolved_at"] is None
    assert rows(await client.get(f"{API}/errors", params={"resolved": "true"}, headers=admin)) == []


async def test_resolving_needs_an_admin_a_known_id_and_a_boolean(
    app: FastAPI, client: AsyncClient, admin: dict[str, str]
) -> None:
    app.state.recorder.record(ErrorLog, category="api", severity="info", error_message="x")
    await flush(app)
    (stored,) = rows(await client.get(f"{API}/errors", headers=admin))
    url = f"{API}/errors/{stored['id']}"
    body = {"resolved": True}
    assert (await client.patch(url, json=body)).status_code == 401
    for role in (Role.viewer, Role.operator):
        headers = await auth_headers(app, client, role)
        assert (await client.patch(url, json=body, headers=headers)).status_code == 403
    missing = await client.patch(f"{API}/errors/987654", json=body, headers=admin)
    assert missing.status_code == 404
    assert "987654" in missing.json()["detail"]
    assert ["body", "resolved"] in error_locs(
        await client.patch(url, json={"resolved": "maybe"}, headers=admin)
    )
    assert ["path", "id"] in error_locs(
        await client.patch(f"{API}/errors/abc", json=body, headers=admin)
    )
    assert ["path", "id"] in error_locs(
        await client.patch(f"{API}/errors/{2**63}", json=body, headers=admin)
    )
    (unchanged,) = rows(await client.get(f"{API}/errors", headers=admin))
    assert unchanged["resolved"] is False


async def test_every_analytics_endpoint_is_described_in_the_docs(client: AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operations = {
        (method.upper(), path): operation
        for path, item in spec["paths"].items()
        if path.startswith(API)
        for method, operation in item.items()
    }
    expected = {("GET", f"{API}/{stream.path}") for stream in STREAMS} | {
        ("POST", f"{API}/user-activities"),
        ("POST", f"{API}/errors"),
        ("PATCH", f"{API}/errors/{{id}}"),
        ("GET", f"{API}/quality"),
        ("POST", f"{API}/exports"),
        ("GET", f"{API}/requests/routes"),
    }
    assert set(operations) == expected
    for key, operation in operations.items():
        assert operation.get("summary"), key
        assert operation.get("description"), key
        for parameter in operation.get("parameters", []):
            assert parameter.get("description"), (key, parameter["name"])
