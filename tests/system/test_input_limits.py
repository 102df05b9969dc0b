"""Bad input is refused at the door: body sizes, free-form JSON, lone surrogates, dates, params.

Each test sends what a careless or hostile client could send and checks the answer a person
gets (a 413 or a 422 naming the problem, in the documented shape) and that nothing was stored.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.analytics.models import DeviceMetrics, ErrorLog
from homepot.auth.models import Role
from homepot.config import LimitsSettings
from homepot.kit.jsonlimits import MAX_DEPTH
from homepot.site.models import Site
from tests.helpers import (
    auth_headers,
    create_device,
    create_registered_device,
    create_site,
    db_rows,
    flush,
)

API = "/api/v1"
LIMITS = LimitsSettings()


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def sample(**fields: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(),
        "collection_interval_seconds": 30,
        "cpu_percent": 12.5,
    } | fields


def assert_422_list(response: Any) -> list[dict[str, Any]]:
    """A 422 in the documented shape: detail is a list of {loc, msg, type}."""
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list)
    for error in detail:
        assert isinstance(error["loc"], list)
        assert isinstance(error["msg"], str)
        assert isinstance(error["type"], str)
    return list(detail)


# -- body size ------------------------------------------------------------------------------


async def test_a_28_mb_telemetry_body_is_413_and_nothing_is_stored(
    app: FastAPI, client: AsyncClient
) -> None:
    _, device = await create_registered_device(app, client)
    padding = "x" * 14_000
    samples = [sample(extra_metrics={"note": padding}) for _ in range(2000)]
    body = json.dumps({"samples": samples})
    assert len(body) > 28_000_000
    response = await client.post(
        f"{API}/agent/telemetry",
        content=body,
        headers=device | {"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert f"at most {LIMITS.max_telemetry_body_bytes} are accepted" in response.json()["detail"]
    await flush(app)
    assert await db_rows(app, DeviceMetrics) == []


async def test_a_30_mb_site_config_is_413_and_the_site_is_not_created(
    app: FastAPI, client: AsyncClient
) -> None:
    admin = await auth_headers(app, client, Role.admin)
    config = {f"key{i}": "v" * 30_000 for i in range(1000)}
    response = await client.post(
        f"{API}/sites",
        json={"site_id": "site-huge", "name": "Huge", "config": config},
        headers=admin,
    )
    assert response.status_code == 413
    assert f"at most {LIMITS.max_body_bytes} are accepted" in response.json()["detail"]
    assert await db_rows(app, Site, site_id="site-huge") == []


async def test_a_chunked_body_without_a_length_is_cut_off_at_the_limit(
    app: FastAPI, client: AsyncClient
) -> None:
    admin = await auth_headers(app, client, Role.admin)
    chunk = b" " * 65_536

    async def stream() -> Any:
        yield b'{"site_id": "site-chunked", "name": "Chunked"'
        for _ in range(LIMITS.max_body_bytes // len(chunk) + 2):
            yield chunk
        yield b"}"

    response = await client.post(
        f"{API}/sites", content=stream(), headers=admin | {"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert "at most" in response.json()["detail"]
    assert await db_rows(app, Site, site_id="site-chunked") == []


async def test_a_telemetry_batch_may_be_larger_than_other_bodies(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, device = await create_registered_device(app, client)
    samples = [sample(extra_metrics={"note": "y" * 8000}) for _ in range(200)]
    body = json.dumps({"samples": samples})
    assert LIMITS.max_body_bytes < len(body) < LIMITS.max_telemetry_body_bytes
    response = await client.post(
        f"{API}/agent/telemetry",
        content=body,
        headers=device | {"Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text
    await flush(app)
    assert len(await db_rows(app, DeviceMetrics, device_id=device_id)) == 200


# -- free-form JSON -------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 260, 800])
async def test_deep_extra_metrics_are_refused_naming_the_field(
    app: FastAPI, client: AsyncClient, depth: int
) -> None:
    _, device = await create_registered_device(app, client)
    response = await client.post(
        f"{API}/agent/telemetry",
        json={"samples": [sample(), sample(extra_metrics=nested(depth))]},
        headers=device,
    )
    [error] = assert_422_list(response)
    assert error["loc"] == ["body", "samples", 1, "extra_metrics"]
    assert f"nested deeper than {MAX_DEPTH} levels" in error["msg"]
    await flush(app)
    assert await db_rows(app, DeviceMetrics) == []


async def test_nan_and_infinity_in_free_form_json_are_refused_not_dropped(
    app: FastAPI, client: AsyncClient
) -> None:
    _, device = await create_registered_device(app, client)
    for bad in ("NaN", "Infinity", "-Infinity"):
        body = '{"severity": "error", "error_code": "PAY_TIMEOUT", "message": "m", '
        body += f'"context": {{"latency": [1, {bad}]}}}}'
        response = await client.post(
            f"{API}/agent/errors",
            content=body,
            headers=device | {"Content-Type": "application/json"},
        )
        [error] = assert_422_list(response)
        assert error["loc"] == ["body", "context"]
        assert "context.latency[1]" in error["msg"]
        assert "finite" in error["msg"]
    await flush(app)
    assert await db_rows(app, ErrorLog, error_code="PAY_TIMEOUT") == []


@pytest.mark.parametrize(
    ("path", "field", "body"),
    [
        ("/sites", "config", {"site_id": "site-deep", "name": "Deep", "config": nested(40)}),
        ("/jobs", "payload", {"job_type": "restart", "target_type": "device", "payload": {}}),
        ("/analytics/errors", "context", {"message": "boom", "context": nested(40)}),
    ],
)
async def test_every_free_form_field_has_the_same_limits(
    app: FastAPI, client: AsyncClient, path: str, field: str, body: dict[str, Any]
) -> None:
    admin = await auth_headers(app, client, Role.admin)
    if path == "/jobs":
        body = body | {"target_id": await create_device(app), "payload": nested(40)}
    [error] = assert_422_list(await client.post(f"{API}{path}", json=body, headers=admin))
    assert error["loc"] == ["body", field]
    assert f"{field}.a.a" in error["msg"]


# -- lone surrogates ------------------------------------------------------------------------

SURROGATE = '"bad \\ud800 text"'


async def test_a_lone_surrogate_in_unauthenticated_registration_is_422_not_500(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    body = (
        f'{{"site_id": "{site_id}", "device_id": "pos-1", '
        f'"bootstrap_key": "hpb_0123456789abcdef", "name": {SURROGATE}}}'
    )
    response = await client.post(
        f"{API}/agent/register", content=body, headers={"Content-Type": "application/json"}
    )
    [error] = assert_422_list(response)
    assert error["loc"] == ["body", "name"]
    assert "lone UTF-16 surrogate" in error["msg"]


@pytest.mark.parametrize(
    ("method", "path", "template", "loc"),
    [
        ("POST", "/sites", '{{"site_id": "site-s", "name": {s}}}', ["body", "name"]),
        (
            "POST",
            "/sites",
            '{{"site_id": "site-s", "name": "n", "config": {{"k": [{s}]}}}}',
            ["body", "config", "k", 0],
        ),
        (
            "POST",
            "/devices",
            '{{"site_id": {s}, "device_id": "pos-s", "name": "n"}}',
            ["body", "site_id"],
        ),
        ("POST", "/analytics/errors", '{{"message": {s}}}', ["body", "message"]),
        (
            "POST",
            "/analytics/user-activities",
            '{{"events": [{{"activity_type": {s}}}]}}',
            ["body", "events", 0, "activity_type"],
        ),
        ("PUT", "/users/me/preferences", '{{"analytics_opt_out": {s}}}', None),
        ("POST", "/analytics/exports", '{{"tables": [{s}]}}', ["body", "tables", 0]),
        ("POST", "/jobs", '{{"job_type": "restart", "payload": {{{s}: 1}}}}', ["body", "payload"]),
    ],
)
async def test_a_lone_surrogate_anywhere_in_a_body_is_422_naming_where(
    app: FastAPI,
    client: AsyncClient,
    method: str,
    path: str,
    template: str,
    loc: list[Any] | None,
) -> None:
    admin = await auth_headers(app, client, Role.admin)
    response = await client.request(
        method,
        f"{API}{path}",
        content=template.format(s=SURROGATE),
        headers=admin | {"Content-Type": "application/json"},
    )
    [error] = assert_422_list(response)
    assert "lone UTF-16 surrogate" in error["msg"]
    assert error["loc"] == (loc or ["body", "analytics_opt_out"])


async def test_raw_surrogate_bytes_are_refused_like_escaped_ones(
    app: FastAPI, client: AsyncClient
) -> None:
    admin = await auth_headers(app, client, Role.admin)
    body = b'{"site_id": "site-raw", "name": "bad \xed\xa0\x80"}'
    response = await client.post(
        f"{API}/sites", content=body, headers=admin | {"Content-Type": "application/json"}
    )
    [error] = assert_422_list(response)
    assert error["loc"] == ["body", "name"]


async def test_a_surrogate_pair_is_ordinary_text(app: FastAPI, client: AsyncClient) -> None:
    admin = await auth_headers(app, client, Role.admin)
    body = '{"site_id": "site-emoji", "name": "Store \\ud83d\\ude00"}'
    response = await client.post(
        f"{API}/sites", content=body, headers=admin | {"Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "Store \U0001f600"


# -- dates ----------------------------------------------------------------------------------

OUT_OF_RANGE = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T01:00:00+05:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:00:00-05:00",
]


@pytest.mark.parametrize("moment", OUT_OF_RANGE)
async def test_device_metrics_bounds_outside_the_supported_range_are_422(
    app: FastAPI, client: AsyncClient, moment: str
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    device = await create_device(app)
    for name in ("since", "until"):
        response = await client.get(
            f"{API}/devices/{device}/metrics", params={name: moment}, headers=viewer
        )
        [error] = assert_422_list(response)
        assert error["loc"] == ["query", name]
        assert "outside the supported range" in error["msg"]


@pytest.mark.parametrize("moment", OUT_OF_RANGE)
async def test_agent_error_timestamps_outside_the_supported_range_are_422(
    app: FastAPI, client: AsyncClient, moment: str
) -> None:
    _, device = await create_registered_device(app, client)
    response = await client.post(
        f"{API}/agent/errors",
        json={"severity": "error", "error_code": "E_OLD", "message": "m", "occurred_at": moment},
        headers=device,
    )
    [error] = assert_422_list(response)
    assert error["loc"] == ["body", "occurred_at"]
    response = await client.post(
        f"{API}/agent/telemetry", json={"samples": [sample(timestamp=moment)]}, headers=device
    )
    assert_422_list(response)


@pytest.mark.parametrize("moment", [*OUT_OF_RANGE, "0001-01-01", "9999-12-31"])
async def test_analytics_bounds_outside_the_supported_range_are_422(
    app: FastAPI, client: AsyncClient, moment: str
) -> None:
    admin = await auth_headers(app, client, Role.admin)
    for name in ("start_date", "end_date"):
        response = await client.get(f"{API}/analytics/errors", params={name: moment}, headers=admin)
        [error] = assert_422_list(response)
        assert error["loc"] == ["query", name]


async def test_dates_at_the_edges_of_the_supported_range_are_answered(
    app: FastAPI, client: AsyncClient
) -> None:
    admin = await auth_headers(app, client, Role.admin)
    device = await create_device(app)
    edge = await client.get(
        f"{API}/analytics/device-metrics",
        params={"start_date": "0002-01-01", "end_date": "9998-12-31"},
        headers=admin,
    )
    assert edge.status_code == 200, edge.text
    early = await client.get(
        f"{API}/devices/{device}/metrics",
        params={"since": "0002-01-01T00:00:00Z", "until": "0002-01-01T06:00:00Z"},
        headers=admin,
    )
    assert early.status_code == 200, early.text
    now = datetime.now(UTC)
    recent = await client.get(
        f"{API}/devices/{device}/metrics",
        params={"since": (now - timedelta(hours=1)).isoformat()},
        headers=admin,
    )
    assert recent.status_code == 200, recent.text


# -- unknown query parameters ---------------------------------------------------------------

LIST_ENDPOINTS = [
    "/sites",
    "/devices",
    "/jobs",
    "/devices/{device}/states",
    "/devices/{device}/config-history",
    "/devices/{device}/metrics",
    "/audit-logs",
    "/analytics/quality",
    "/analytics/errors",
    "/errors",
    "/users",
]


@pytest.mark.parametrize("path", LIST_ENDPOINTS)
async def test_an_unknown_query_parameter_is_422_on_every_list_endpoint(
    app: FastAPI, client: AsyncClient, path: str
) -> None:
    admin = await auth_headers(app, client, Role.admin)
    url = API + path.format(device=await create_device(app))
    assert (await client.get(url, headers=admin)).status_code == 200
    response = await client.get(url, params={"stauts": "failed"}, headers=admin)
    [error] = assert_422_list(response)
    assert error["loc"] == ["query", "stauts"]
    assert "unknown query parameter 'stauts'" in error["msg"]
    assert "this endpoint accepts:" in error["msg"]


async def test_known_filters_still_filter(app: FastAPI, client: AsyncClient) -> None:
    admin = await auth_headers(app, client, Role.admin)
    site = await create_site(app)
    device = await create_device(app, site_id=site, status="online")
    await create_device(app, status="offline")
    response = await client.get(
        f"{API}/devices", params={"site_id": site, "status": "online", "limit": 5}, headers=admin
    )
    assert response.status_code == 200, response.text
    assert [d["device_id"] for d in response.json()["items"]] == [device]
    assert response.json()["limit"] == 5


async def test_an_unknown_parameter_on_the_agent_job_poll_is_422(
    app: FastAPI, client: AsyncClient
) -> None:
    _, device = await create_registered_device(app, client)
    assert (await client.get(f"{API}/agent/jobs", headers=device)).status_code == 200
    response = await client.get(f"{API}/agent/jobs", params={"limt": 5}, headers=device)
    [error] = assert_422_list(response)
    assert error["loc"] == ["query", "limt"]
