"""Who sees what of the error log, and what the dashboard may claim when it reports one."""

from __future__ import annotations

from fastapi import FastAPI
from httpx import AsyncClient

from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from tests.helpers import auth_headers, create_user, db_rows, flush, login, rows
from tests.overview.test_router import add_rows, error

TRACE = 'Traceback (most recent call last):\n  File "/srv/homepot/src/homepot/db.py", line 9'


async def test_non_admins_see_the_error_log_without_traces_user_ids_or_context(
    app: FastAPI, client: AsyncClient
) -> None:
    someone = await create_user(app)
    await add_rows(
        app,
        error(
            1,
            error_message="pool exhausted",
            stack_trace=TRACE,
            user_id=someone["id"],
            context={"customer": "Jane Roe", "exception_type": "TimeoutError"},
        ),
    )
    admin = await auth_headers(app, client, Role.admin)

    for role in (Role.viewer, Role.operator):
        (shown,) = rows(
            await client.get("/api/v1/errors", headers=await auth_headers(app, client, role))
        )
        assert shown["error_message"] == "pool exhausted"
        assert (shown["stack_trace"], shown["user_id"], shown["context"]) == (None, None, None)
    (full,) = rows(await client.get("/api/v1/errors", headers=admin))
    assert full["stack_trace"] == TRACE
    assert full["user_id"] == someone["id"]
    assert full["context"]["customer"] == "Jane Roe"


async def test_reading_the_error_log_is_audited_like_the_analytics_streams(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await create_user(app, role=Role.viewer)
    headers = await login(client, viewer["email"], viewer["password"])
    await client.get("/api/v1/errors", params={"severity": "critical"}, headers=headers)
    admin = await create_user(app, role=Role.admin)
    admin_headers = await login(client, admin["email"], admin["password"])
    await client.get("/api/v1/analytics/errors", headers=admin_headers)

    (viewer_read,) = await db_rows(app, AuditLog, user_id=viewer["id"])
    (admin_read,) = await db_rows(app, AuditLog, user_id=admin["id"])
    for read in (viewer_read, admin_read):
        assert (read.action, read.resource_type, read.resource_id) == (
            "analytics.query",
            "analytics",
            "error_logs",
        )
        assert read.ip_address == "203.0.113.7"
    assert viewer_read.details["severity"] == "critical"


async def test_a_dashboard_error_cannot_pose_as_a_server_side_alarm(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    admin = await auth_headers(app, client, Role.admin)

    forged = await client.post(
        "/api/v1/analytics/errors",
        json={
            "message": "gateway down",
            "severity": "critical",
            "error_code": "EXT_SERVICE_TIMEOUT",
        },
        headers=viewer,
    )
    critical = await client.post(
        "/api/v1/analytics/errors", json={"message": "x", "severity": "critical"}, headers=viewer
    )
    server_code = await client.post(
        "/api/v1/analytics/errors",
        json={"message": "x", "error_code": "DB_UNAVAILABLE"},
        headers=viewer,
    )
    allowed = await client.post(
        "/api/v1/analytics/errors",
        json={"message": "chart failed", "error_code": "FRONTEND_CHART_FAILED"},
        headers=viewer,
    )

    assert forged.status_code == 422
    fields = {tuple(e["loc"]) for e in forged.json()["detail"]}
    assert fields == {("body", "severity"), ("body", "error_code")}
    assert critical.status_code == 422
    assert server_code.status_code == 422
    assert "FRONTEND_" in server_code.text
    assert allowed.status_code == 202, allowed.text
    await flush(app)
    (stored,) = rows(await client.get("/api/v1/analytics/errors", headers=admin))
    assert stored["error_code"] == "FRONTEND_CHART_FAILED"
    assert stored["context"]["client_reported"] is True
    assert stored["context"]["source"] == "frontend"
