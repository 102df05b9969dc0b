"""Every route of the app × every kind of caller, against one declared table.

The routes come from the application's own route table: a route added without an entry in
ACCESS fails ``test_every_route_has_an_expected_answer``. Each route is then called by a
caller without a token, with a malformed token, an expired token, a viewer's, an operator's
and an admin's token and a device's API key. A caller the route admits gets an answer that
is neither 401 nor 403 (often 422: the matrix sends no body) and never a 5xx; a caller it
does not admit gets exactly 401 (not authenticated as what the route needs) or 403
(authenticated, but the role is too low).
"""

from __future__ import annotations

import enum
from datetime import timedelta

import jwt
from fastapi import FastAPI
from fastapi.routing import APIRoute
from httpx import AsyncClient
from starlette.routing import Mount, Route

from homepot.auth.models import Role
from homepot.db import utcnow
from tests.helpers import all_routes, create_registered_device, create_site, create_user, login


class Access(enum.Enum):
    PUBLIC = "anyone"
    DEVICE = "a device's API key"
    VIEWER = "any signed-in user"
    OPERATOR = "an operator or admin"
    ADMIN = "an admin"


PUBLIC, DEVICE, VIEWER, OPERATOR, ADMIN = Access

# Who may call what. One entry per (method, path) of the route table; the static files'
# mount is listed as ("GET", "/static").
ACCESS: dict[tuple[str, str], Access] = {
    # System and documentation
    ("GET", "/api/v1/health"): PUBLIC,  # details only for admins (tests/system/test_health.py)
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/static"): PUBLIC,
    # Users and tokens
    ("POST", "/api/v1/auth/token"): PUBLIC,
    ("POST", "/api/v1/auth/logout"): VIEWER,
    ("GET", "/api/v1/users/me"): VIEWER,
    ("GET", "/api/v1/users/me/preferences"): VIEWER,
    ("PUT", "/api/v1/users/me/preferences"): VIEWER,
    ("POST", "/api/v1/users"): ADMIN,
    ("GET", "/api/v1/users"): ADMIN,
    ("PATCH", "/api/v1/users/{user_id}"): ADMIN,
    # Analytics: reads are admin-only, the dashboard's ingestion any signed-in user
    ("GET", "/api/v1/analytics/quality"): ADMIN,
    ("GET", "/api/v1/analytics/requests"): ADMIN,
    ("GET", "/api/v1/analytics/requests/routes"): ADMIN,
    ("GET", "/api/v1/analytics/device-states"): ADMIN,
    ("GET", "/api/v1/analytics/jobs"): ADMIN,
    ("GET", "/api/v1/analytics/errors"): ADMIN,
    ("GET", "/api/v1/analytics/user-activities"): ADMIN,
    ("GET", "/api/v1/analytics/device-metrics"): ADMIN,
    ("GET", "/api/v1/analytics/config-history"): ADMIN,
    ("GET", "/api/v1/analytics/site-schedules"): ADMIN,
    ("POST", "/api/v1/analytics/user-activities"): VIEWER,
    ("POST", "/api/v1/analytics/errors"): VIEWER,
    ("PATCH", "/api/v1/analytics/errors/{id}"): ADMIN,
    ("POST", "/api/v1/analytics/exports"): ADMIN,
    ("GET", "/api/v1/audit-logs"): ADMIN,
    # Sites
    ("POST", "/api/v1/sites"): OPERATOR,
    ("GET", "/api/v1/sites"): VIEWER,
    ("GET", "/api/v1/sites/{site_id}"): VIEWER,
    ("PATCH", "/api/v1/sites/{site_id}"): OPERATOR,
    ("DELETE", "/api/v1/sites/{site_id}"): OPERATOR,
    ("POST", "/api/v1/sites/{site_id}/bootstrap-key"): OPERATOR,
    ("GET", "/api/v1/sites/{site_id}/schedules"): ADMIN,
    ("GET", "/api/v1/sites/{site_id}/hours"): VIEWER,
    ("PUT", "/api/v1/sites/{site_id}/schedules"): ADMIN,
    ("GET", "/api/v1/sites/{site_id}/schedules/{day_of_week}"): ADMIN,
    ("PUT", "/api/v1/sites/{site_id}/schedules/{day_of_week}"): ADMIN,
    ("DELETE", "/api/v1/sites/{site_id}/schedules/{day_of_week}"): ADMIN,
    # Devices, as people see them
    ("POST", "/api/v1/devices"): OPERATOR,
    ("GET", "/api/v1/devices"): VIEWER,
    ("GET", "/api/v1/devices/{device_id}"): VIEWER,
    ("PATCH", "/api/v1/devices/{device_id}"): OPERATOR,
    ("DELETE", "/api/v1/devices/{device_id}"): OPERATOR,
    ("GET", "/api/v1/devices/{device_id}/metrics"): VIEWER,
    ("GET", "/api/v1/devices/{device_id}/states"): VIEWER,
    ("GET", "/api/v1/devices/{device_id}/config-history"): VIEWER,
    ("POST", "/api/v1/devices/{device_id}/key"): ADMIN,
    ("DELETE", "/api/v1/devices/{device_id}/key"): ADMIN,
    # The device protocol; registration proves itself with the site's bootstrap key
    ("POST", "/api/v1/agent/register"): PUBLIC,
    ("POST", "/api/v1/agent/heartbeat"): DEVICE,
    ("POST", "/api/v1/agent/telemetry"): DEVICE,
    ("POST", "/api/v1/agent/errors"): DEVICE,
    ("POST", "/api/v1/agent/report"): DEVICE,
    ("GET", "/api/v1/agent/jobs"): DEVICE,
    ("POST", "/api/v1/agent/jobs/{execution_id}/ack"): DEVICE,
    ("POST", "/api/v1/agent/jobs/{execution_id}/result"): DEVICE,
    # Jobs
    ("POST", "/api/v1/jobs"): OPERATOR,
    ("GET", "/api/v1/jobs"): VIEWER,
    ("GET", "/api/v1/jobs/{job_id}"): VIEWER,
    ("POST", "/api/v1/jobs/{job_id}/cancel"): OPERATOR,
    # The fleet overview and the error log (details for admins: tests/overview)
    ("GET", "/api/v1/overview"): VIEWER,
    ("GET", "/api/v1/errors"): VIEWER,
    # Insights: every signed-in user reads, operators handle anomalies
    ("GET", "/api/v1/insights/anomalies"): VIEWER,
    ("PATCH", "/api/v1/insights/anomalies/{id}"): OPERATOR,
    ("GET", "/api/v1/insights/fleet"): VIEWER,
    ("GET", "/api/v1/insights/devices/{device_id}"): VIEWER,
    ("GET", "/api/v1/insights/maintenance-windows"): VIEWER,
    ("GET", "/api/v1/insights/job-success"): VIEWER,
    ("GET", "/api/v1/insights/config-impact"): VIEWER,
    ("POST", "/api/v1/insights/config-impact/{id}/apply"): OPERATOR,
    # Dashboard pages: static shells; their data comes from the API above, with a token
    ("GET", "/login"): PUBLIC,
    ("GET", "/"): PUBLIC,
    ("GET", "/sites"): PUBLIC,
    ("GET", "/sites/{site_id}"): PUBLIC,
    ("GET", "/devices"): PUBLIC,
    ("GET", "/devices/{device_id}"): PUBLIC,
    ("GET", "/jobs"): PUBLIC,
    ("GET", "/jobs/{job_id}"): PUBLIC,
    ("GET", "/errors"): PUBLIC,
    ("GET", "/insights"): PUBLIC,
    ("GET", "/analytics"): PUBLIC,
}

# Called last for each caller, in this order: they remove what later calls use, or log
# the caller out.
CHANGES_THE_CALLER = [
    ("POST", "/api/v1/devices/{device_id}/key"),
    ("DELETE", "/api/v1/devices/{device_id}/key"),
    ("DELETE", "/api/v1/devices/{device_id}"),
    ("DELETE", "/api/v1/sites/{site_id}"),
    ("POST", "/api/v1/auth/logout"),
]

CALLERS = ("no token", "bad token", "expired token", "device key", "viewer", "operator", "admin")
ROLE_OF = {"viewer": Role.viewer, "operator": Role.operator, "admin": Role.admin}


def expected_status(access: Access, caller: str) -> int | None:
    """401 or 403 when ``caller`` is refused; None when it is admitted."""
    if access is PUBLIC:
        return None
    if access is DEVICE:
        return None if caller == "device key" else 401
    if caller not in ROLE_OF:
        return 401
    admitted = {
        VIEWER: {"viewer", "operator", "admin"},
        OPERATOR: {"operator", "admin"},
        ADMIN: {"admin"},
    }[access]
    return None if caller in admitted else 403


def route_table(app: FastAPI) -> set[tuple[str, str]]:
    table: set[tuple[str, str]] = set()
    for route in all_routes(app):
        if isinstance(route, APIRoute | Route):
            table |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
        elif isinstance(route, Mount):
            table.add(("GET", route.path))
        else:
            raise AssertionError(f"a route of an unknown kind: {route!r}")
    return table


def test_every_route_has_an_expected_answer(app: FastAPI) -> None:
    table = route_table(app)
    missing = sorted(table - ACCESS.keys())
    stale = sorted(ACCESS.keys() - table)
    assert not missing, f"routes without an entry in ACCESS (declare who may call them): {missing}"
    assert not stale, f"entries in ACCESS for routes that no longer exist: {stale}"


async def test_every_route_answers_every_caller_as_declared(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app, site_id="site-matrix")
    device_id, device_headers = await create_registered_device(
        app, client, site_id=site_id, device_id="pos-matrix"
    )
    users = {name: await create_user(app, role=role) for name, role in ROLE_OF.items()}
    headers: dict[str, dict[str, str]] = {
        "no token": {},
        "bad token": {"Authorization": "Bearer not-a-token"},
        "device key": device_headers,
    }
    for name, user in users.items():
        headers[name] = await login(client, user["email"], user["password"])
    secret = app.state.settings.auth.secret_key.get_secret_value()
    expired = jwt.encode(
        {"sub": users["admin"]["id"], "gen": 0, "exp": utcnow() - timedelta(minutes=1)},
        secret,
        app.state.settings.auth.algorithm,
    )
    headers["expired token"] = {"Authorization": f"Bearer {expired}"}
    values = {
        "site_id": site_id,
        "device_id": device_id,
        "user_id": users["viewer"]["id"],
        "day_of_week": "1",
        "job_id": "job-matrix",
        "execution_id": "1",
        "id": "1",
    }
    ordered = [route for route in ACCESS if route not in CHANGES_THE_CALLER] + CHANGES_THE_CALLER

    wrong: list[str] = []
    for caller in CALLERS:
        for method, path in ordered:
            url = "/static/style.css" if path == "/static" else path.format(**values)
            response = await client.request(method, url, headers=headers[caller])
            expected = expected_status(ACCESS[method, path], caller)
            status = response.status_code
            if expected is None:
                passed = status not in (401, 403) and status < 500
                want = "admitted (not 401/403/5xx)"
            else:
                passed = status == expected
                want = str(expected)
            if not passed:
                wrong.append(f"{method} {path} as {caller}: {status}, expected {want}")
    assert not wrong, "\n".join(wrong)
