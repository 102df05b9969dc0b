"""The access record: analytics reads, error resolutions and schedule changes leave audit
rows, and admins (only admins) read them through GET /api/v1/audit-logs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.analytics.models import ErrorLog
from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from tests.helpers import auth_headers, create_site, create_user, db_rows, flush, login, rows

AUDIT = "/api/v1/audit-logs"
ANALYTICS = "/api/v1/analytics"
CLIENT_IP = "203.0.113.7"


@pytest.fixture
async def admin_user(app: FastAPI) -> dict[str, str]:
    return await create_user(app, role=Role.admin)


@pytest.fixture
async def admin(client: AsyncClient, admin_user: dict[str, str]) -> dict[str, str]:
    return await login(client, admin_user["email"], admin_user["password"])


async def audit_rows(app: FastAPI, **filters: Any) -> list[AuditLog]:
    return sorted(await db_rows(app, AuditLog, **filters), key=lambda row: row.id)


async def add_audit_rows(app: FastAPI, entries: list[dict[str, Any]]) -> None:
    async with app.state.session_factory() as session:
        session.add_all(AuditLog(**entry) for entry in entries)
        await session.commit()


# --- what is audited -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "table"),
    [
        ("requests", "api_request_logs"),
        ("device-states", "device_state_history"),
        ("jobs", "job_outcomes"),
        ("errors", "error_logs"),
        ("user-activities", "user_activities"),
        ("device-metrics", "device_metrics"),
        ("config-history", "configuration_history"),
        ("site-schedules", "site_operating_schedules"),
    ],
)
async def test_every_analytics_read_is_audited_with_its_parameters(
    app: FastAPI,
    client: AsyncClient,
    admin: dict[str, str],
    admin_user: dict[str, str],
    path: str,
    table: str,
) -> None:
    response = await client.get(
        f"{ANALYTICS}/{path}",
        params={"start_date": "2026-01-01", "limit": 5},
        headers=admin,
    )
    assert response.status_code == 200, response.text

    [entry] = await audit_rows(app, action="analytics.query")
    assert entry.user_id == admin_user["id"]
    assert entry.ip_address == CLIENT_IP
    assert entry.resource_type == "analytics"
    assert entry.resource_id == table
    assert entry.details == {"start_date": "2026-01-01", "limit": 5}
    assert entry.timestamp > datetime.now(UTC) - timedelta(minutes=1)


async def test_audited_filters_are_stored_as_parsed_and_without_secrets(
    app: FastAPI, client: AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.get(
        f"{ANALYTICS}/device-metrics",
        params=[("device_id", "pos-1"), ("device_id", "pos-2")],
        headers=admin,
    )
    assert response.status_code == 200, response.text
    secret = "s3cr3t-value-123"
    response = await client.get(
        f"{ANALYTICS}/requests",
        params={"endpoint": f"/api/v1/sites?token={secret}&page=2", "method": "get"},
        headers=admin,
    )
    assert response.status_code == 200, response.text

    metrics, requests = await audit_rows(app, action="analytics.query")
    assert metrics.details == {"device_id": ["pos-1", "pos-2"], "limit": 100}
    assert requests.details is not None
    assert secret not in str(requests.details)
    assert requests.details["endpoint"] == "/api/v1/sites?token=[REDACTED]&page=2"
    assert requests.details["method"] == "GET"


async def test_refused_and_unauthorised_reads_leave_no_audit_row(
    app: FastAPI, client: AsyncClient, admin: dict[str, str]
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    unknown = await client.get(f"{ANALYTICS}/requests", params={"token": "abc"}, headers=admin)
    assert unknown.status_code == 422
    assert (await client.get(f"{ANALYTICS}/requests", headers=viewer)).status_code == 403
    assert (await client.get(f"{ANALYTICS}/requests")).status_code == 401
    assert await audit_rows(app, action="analytics.query") == []


async def test_resolving_and_reopening_an_error_is_audited(
    app: FastAPI, client: AsyncClient, admin: dict[str, str], admin_user: dict[str, str]
) -> None:
    app.state.recorder.record(
        ErrorLog,
        category="database",
        severity="error",
        error_code="DB_CONN_001",
        error_message="connection refused",
    )
    await flush(app)
    [error] = await db_rows(app, ErrorLog)
    url = f"{ANALYTICS}/errors/{error.id}"

    assert (await client.patch(url, json={"resolved": True}, headers=admin)).status_code == 200
    assert (await client.patch(url, json={"resolved": False}, headers=admin)).status_code == 200
    missing = await client.patch(
        f"{ANALYTICS}/errors/999999", json={"resolved": True}, headers=admin
    )
    assert missing.status_code == 404

    resolved, reopened = await audit_rows(app, resource_type="error_log")
    assert (resolved.action, reopened.action) == ("error.resolve", "error.reopen")
    assert resolved.resource_id == str(error.id)
    assert resolved.user_id == admin_user["id"]
    assert resolved.ip_address == CLIENT_IP
    assert resolved.details == {"resolved": True, "error_code": "DB_CONN_001"}
    assert reopened.details == {"resolved": False, "error_code": "DB_CONN_001"}


async def test_schedule_changes_are_audited(
    app: FastAPI, client: AsyncClient, admin: dict[str, str], admin_user: dict[str, str]
) -> None:
    site_id = await create_site(app)
    url = f"/api/v1/sites/{site_id}/schedules/0"
    day = {"open_time": "08:00", "close_time": "20:00"}

    assert (await client.put(url, json=day, headers=admin)).status_code == 201
    later = {**day, "close_time": "22:00"}
    assert (await client.put(url, json=later, headers=admin)).status_code == 200
    assert (await client.delete(url, headers=admin)).status_code == 204

    entries = await audit_rows(app, resource_type="site_schedule")
    assert [e.action for e in entries] == ["schedule.create", "schedule.update", "schedule.delete"]
    assert {e.resource_id for e in entries} == {f"{site_id}/0"}
    assert {e.user_id for e in entries} == {admin_user["id"]}
    assert entries[1].details == {"close_time": {"old": "20:00:00", "new": "22:00:00"}}


# --- GET /api/v1/audit-logs ----------------------------------------------------------------


async def test_admins_list_audit_logs_newest_first_with_filters(
    app: FastAPI, client: AsyncClient, admin: dict[str, str]
) -> None:
    base = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    await add_audit_rows(
        app,
        [
            {
                "timestamp": base + timedelta(days=i),
                "user_id": "u-ann" if i % 2 == 0 else "u-bob",
                "action": "site.update" if i < 3 else "retention.run",
                "resource_type": "site" if i < 3 else "retention",
                "resource_id": f"store-{i}" if i < 3 else "database",
                "ip_address": "198.51.100.1",
                "details": {"n": i},
            }
            for i in range(6)
        ],
    )

    def query(**params: Any) -> Any:
        return client.get(AUDIT, params={"end_date": "2026-03-31", **params}, headers=admin)

    everything = rows(await query())
    assert [item["details"]["n"] for item in everything] == [5, 4, 3, 2, 1, 0]
    assert everything[0] == {
        "id": everything[0]["id"],
        "timestamp": "2026-03-06T12:00:00Z",
        "user_id": "u-bob",
        "action": "retention.run",
        "resource_type": "retention",
        "resource_id": "database",
        "ip_address": "198.51.100.1",
        "details": {"n": 5},
    }
    assert [r["details"]["n"] for r in rows(await query(user_id="u-ann"))] == [4, 2, 0]
    assert [r["details"]["n"] for r in rows(await query(action="site.update"))] == [2, 1, 0]
    assert [r["details"]["n"] for r in rows(await query(resource_type="retention"))] == [5, 4, 3]
    assert [r["details"]["n"] for r in rows(await query(resource_id="store-1"))] == [1]
    window = await query(start_date="2026-03-02", end_date="2026-03-03")
    assert [r["details"]["n"] for r in rows(window)] == [2, 1]

    first = await query(limit=4)
    assert [r["details"]["n"] for r in rows(first)] == [5, 4, 3, 2]
    cursor = first.json()["next_cursor"]
    assert cursor
    second = await query(limit=4, cursor=cursor)
    assert [r["details"]["n"] for r in rows(second)] == [1, 0]
    assert second.json()["next_cursor"] is None


async def test_only_admins_read_audit_logs(app: FastAPI, client: AsyncClient) -> None:
    assert (await client.get(AUDIT)).status_code == 401
    for role in (Role.operator, Role.viewer):
        response = await client.get(AUDIT, headers=await auth_headers(app, client, role))
        assert response.status_code == 403, role
        assert "admin" in response.json()["detail"]


async def test_unknown_or_malformed_audit_parameters_are_refused(
    client: AsyncClient, admin: dict[str, str]
) -> None:
    for params, name in [
        ({"actor": "u-ann"}, "actor"),
        ({"limit": 0}, "limit"),
        ({"start_date": "soon"}, "start_date"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ]:
        response = await client.get(AUDIT, params=params, headers=admin)
        assert response.status_code == 422, params
        assert name in response.text
    reversed_range = await client.get(
        AUDIT, params={"start_date": "2026-03-05", "end_date": "2026-03-01"}, headers=admin
    )
    assert reversed_range.status_code == 422
    assert "after end_date" in reversed_range.text
