"""Rate limits: 429 with Retry-After on logins, registration and event ingestion."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from homepot.config import RateLimitSettings, Settings
from tests.helpers import (
    auth_headers,
    create_bootstrap_key,
    create_registered_device,
    create_site,
    create_user,
    db_rows,
)

TOKEN = "/api/v1/auth/token"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Small limits, so that a test reaches them in a few requests."""
    limits = RateLimitSettings(
        login_failures_per_address=6,
        login_failures_per_account=3,
        registration_failures_per_minute=3,
        ingest_requests_per_minute=2,
    )
    return settings.model_copy(update={"rate_limits": limits})


def _retry_after(response: object) -> int:
    value = response.headers["retry-after"]  # type: ignore[attr-defined]
    assert value.isdigit(), value
    return int(value)


async def _log_in(client: AsyncClient, email: str, password: str) -> int:
    response = await client.post(TOKEN, data={"username": email, "password": password})
    return response.status_code


async def test_an_account_is_locked_after_repeated_failures_and_audited(
    app: FastAPI, client: AsyncClient
) -> None:
    user = await create_user(app)

    failures = [await _log_in(client, user["email"], "wrong-password") for _ in range(3)]
    locked = await client.post(TOKEN, data={"username": user["email"], "password": "wrong"})
    # While locked, even the right password is not checked.
    right = await client.post(TOKEN, data={"username": user["email"], "password": user["password"]})

    assert failures == [401, 401, 401]
    assert locked.status_code == 429
    assert 1 <= _retry_after(locked) <= 300
    assert "too many failed logins" in locked.json()["detail"]
    assert right.status_code == 429
    # Another account from the same address still logs in.
    other = await create_user(app)
    assert await _log_in(client, other["email"], other["password"]) == 200
    audits = await db_rows(app, AuditLog, resource_id=user["id"])
    actions = sorted(a.action for a in audits)
    assert actions == ["auth.login.failed"] * 3 + ["auth.login.throttled"]
    assert {a.ip_address for a in audits} == {"203.0.113.7"}
    assert {a.user_id for a in audits} == {user["id"]}


async def test_a_concurrent_burst_cannot_slip_past_the_limit(
    app: FastAPI, client: AsyncClient
) -> None:
    user = await create_user(app)

    answers = await asyncio.gather(
        *(_log_in(client, user["email"], f"guess-{n}") for n in range(8))
    )

    # Attempts are counted before the password is checked: only the first three are.
    assert sorted(answers) == [401] * 3 + [429] * 5


async def test_an_address_is_limited_across_accounts(app: FastAPI, client: AsyncClient) -> None:
    user = await create_user(app)
    # Unknown accounts, two failures each: the account limit (3) is never reached.
    statuses = [await _log_in(client, f"nobody-{n // 2}@example.com", "guess") for n in range(6)]
    blocked = await client.post(
        TOKEN, data={"username": user["email"], "password": user["password"]}
    )

    assert statuses == [401] * 6
    assert blocked.status_code == 429
    assert _retry_after(blocked) >= 1
    anonymous = await db_rows(app, AuditLog, action="auth.login.failed", user_id="anonymous")
    assert len(anonymous) == 6


async def test_a_successful_login_clears_the_accounts_failures(
    app: FastAPI, client: AsyncClient
) -> None:
    user = await create_user(app)
    for _ in range(2):
        assert await _log_in(client, user["email"], "typo") == 401
    assert await _log_in(client, user["email"], user["password"]) == 200
    for _ in range(2):
        assert await _log_in(client, user["email"], "typo") == 401
    assert await _log_in(client, user["email"], user["password"]) == 200


async def test_failed_registrations_are_limited_per_address(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    key = await create_bootstrap_key(app, site_id)
    wrong = {"site_id": site_id, "device_id": "pos-guess", "bootstrap_key": "hpb_" + "g" * 40}

    statuses = [
        (await client.post("/api/v1/agent/register", json=wrong)).status_code for _ in range(3)
    ]
    blocked = await client.post("/api/v1/agent/register", json=wrong | {"bootstrap_key": key})

    assert statuses == [401, 401, 401]
    assert blocked.status_code == 429
    assert _retry_after(blocked) <= 60


async def test_dashboard_ingestion_is_limited_per_user(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    other = await auth_headers(app, client, Role.viewer)
    activity = {"events": [{"activity_type": "page_view", "page_url": "/devices"}]}

    first = await client.post("/api/v1/analytics/user-activities", json=activity, headers=viewer)
    second = await client.post("/api/v1/analytics/errors", json={"message": "boom"}, headers=viewer)
    third = await client.post("/api/v1/analytics/errors", json={"message": "boom"}, headers=viewer)
    others = await client.post("/api/v1/analytics/errors", json={"message": "x"}, headers=other)

    assert (first.status_code, second.status_code) == (202, 202)
    assert third.status_code == 429
    assert 1 <= _retry_after(third) <= 60
    assert others.status_code == 202


async def test_device_error_reports_are_limited_per_device(
    app: FastAPI, client: AsyncClient
) -> None:
    _, device = await create_registered_device(app, client)
    report = {"severity": "error", "error_code": "EXT_SERVICE_TIMEOUT", "message": "timeout"}

    statuses = [
        (await client.post("/api/v1/agent/errors", json=report, headers=device)).status_code
        for _ in range(3)
    ]

    assert statuses == [202, 202, 429]
