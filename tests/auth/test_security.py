"""Tokens fail closed: no published secret, revocation on logout and disabling, hashing off
the event loop."""

from __future__ import annotations

import stat
import threading
from datetime import timedelta
from pathlib import Path
from typing import Literal

import jwt
import pytest
from argon2 import PasswordHasher
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from pydantic import SecretStr, ValidationError

from homepot.audit.models import AuditLog
from homepot.auth import service
from homepot.auth.models import Role
from homepot.auth.secret import SecretFileUnsafe, load_or_create_secret, secret_path
from homepot.config import PUBLISHED_SECRET_KEYS, AuthSettings, Settings
from homepot.db import utcnow
from homepot.main import create_app
from tests.helpers import auth_headers, create_user, db_rows, login

ME = "/api/v1/users/me"


def _forged(user_id: str, secret: str, **claims: object) -> dict[str, str]:
    now = utcnow()
    body = {"sub": user_id, "gen": 0, "iat": now, "exp": now + timedelta(hours=1)} | claims
    return {"Authorization": f"Bearer {jwt.encode(body, secret, 'HS256')}"}


async def _client(app: FastAPI) -> AsyncClient:
    return AsyncClient(transport=ASGITransport(app=app), base_url="http://testserver")


async def test_without_a_configured_secret_one_is_generated_kept_private_and_reused(
    settings: Settings, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    unset = settings.model_copy(
        update={"data_dir": data_dir, "auth": AuthSettings(secret_key=None)}
    )
    first = create_app(unset)
    async with LifespanManager(first), await _client(first) as http:
        user = await create_user(first, role=Role.admin)
        headers = await login(http, user["email"], user["password"])
    kept = secret_path(data_dir)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert kept.read_text().strip() not in PUBLISHED_SECRET_KEYS

    # A restarted server reads the same secret: the token still works.
    second = create_app(unset)
    async with LifespanManager(second), await _client(second) as http:
        assert (await http.get(ME, headers=headers)).status_code == 200

    # Another data directory means another secret: the token is worthless there.
    elsewhere = create_app(unset.model_copy(update={"data_dir": tmp_path / "other"}))
    async with LifespanManager(elsewhere), await _client(elsewhere) as http:
        assert (await http.get(ME, headers=headers)).status_code == 401


async def test_a_token_signed_with_a_published_secret_is_refused(
    app: FastAPI, client: AsyncClient
) -> None:
    user = await create_user(app, role=Role.admin)
    for published in PUBLISHED_SECRET_KEYS:
        response = await client.get(ME, headers=_forged(user["id"], published))
        assert response.status_code == 401
        assert "invalid or expired token" in response.json()["detail"]


@pytest.mark.parametrize("environment", ["development", "production"])
def test_a_published_secret_cannot_be_configured(environment: str) -> None:
    for published in PUBLISHED_SECRET_KEYS:
        with pytest.raises(ValidationError, match="published value"):
            Settings(
                environment=environment,  # type: ignore[arg-type]
                auth=AuthSettings(secret_key=SecretStr(published)),
            )


def test_production_refuses_a_short_secret_and_accepts_a_long_one() -> None:
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(environment="production", auth=AuthSettings(secret_key=SecretStr("x")))
    long_enough = Settings(
        environment="production", auth=AuthSettings(secret_key=SecretStr("k" * 32))
    )
    assert long_enough.auth.secret_key is not None


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path)
    assert load_or_create_secret(tmp_path) == secret
    secret_path(tmp_path).chmod(0o644)
    with pytest.raises(SecretFileUnsafe, match="chmod 600"):
        load_or_create_secret(tmp_path)


async def test_an_expired_token_is_refused(app: FastAPI, client: AsyncClient) -> None:
    user = await create_user(app)
    secret = app.state.settings.auth.secret_key.get_secret_value()
    expired = _forged(user["id"], secret, exp=utcnow() - timedelta(seconds=5))
    assert (await client.get(ME, headers=expired)).status_code == 401
    assert (await client.get(ME, headers=_forged(user["id"], secret))).status_code == 200


async def test_logout_revokes_the_token_at_once(app: FastAPI, client: AsyncClient) -> None:
    user = await create_user(app)
    headers = await login(client, user["email"], user["password"])
    assert (await client.get(ME, headers=headers)).status_code == 200

    logout = await client.post("/api/v1/auth/logout", headers=headers)

    assert logout.status_code == 204
    refused = await client.get(ME, headers=headers)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]
    assert (await client.post("/api/v1/auth/logout", headers=headers)).status_code == 401
    # Logging in again gives a token that works.
    again = await login(client, user["email"], user["password"])
    assert (await client.get(ME, headers=again)).status_code == 200
    assert [a.action for a in await db_rows(app, AuditLog, resource_id=user["id"])] == [
        "auth.logout"
    ]


async def test_a_disabled_users_tokens_stop_working_at_once(
    app: FastAPI, client: AsyncClient
) -> None:
    admin = await auth_headers(app, client, Role.admin)
    user = await create_user(app, role=Role.operator)
    headers = await login(client, user["email"], user["password"])
    assert (await client.get(ME, headers=headers)).status_code == 200

    disabled = await client.patch(
        f"/api/v1/users/{user['id']}", json={"is_active": False}, headers=admin
    )

    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["is_active"] is False
    assert (await client.get(ME, headers=headers)).status_code == 401
    relogin = await client.post(
        "/api/v1/auth/token", data={"username": user["email"], "password": user["password"]}
    )
    assert relogin.status_code == 401
    # Enabled again, the old token stays revoked; a new login works.
    enabled = await client.patch(
        f"/api/v1/users/{user['id']}", json={"is_active": True}, headers=admin
    )
    assert enabled.status_code == 200
    assert (await client.get(ME, headers=headers)).status_code == 401
    assert (await login(client, user["email"], user["password"]))["Authorization"]
    (audit, _) = sorted(
        await db_rows(app, AuditLog, resource_id=user["id"], action="user.update"),
        key=lambda row: row.id,
    )
    assert audit.details == {"is_active": {"old": True, "new": False}}


async def test_a_role_change_revokes_tokens_and_admins_cannot_lock_themselves_out(
    app: FastAPI, client: AsyncClient
) -> None:
    admin_user = await create_user(app, role=Role.admin)
    admin = await login(client, admin_user["email"], admin_user["password"])
    user = await create_user(app, role=Role.operator)
    headers = await login(client, user["email"], user["password"])

    demoted = await client.patch(
        f"/api/v1/users/{user['id']}", json={"role": "viewer"}, headers=admin
    )
    assert demoted.status_code == 200
    assert (await client.get(ME, headers=headers)).status_code == 401

    for change in ({"is_active": False}, {"role": "viewer"}):
        own = await client.patch(f"/api/v1/users/{admin_user['id']}", json=change, headers=admin)
        assert own.status_code == 409
    assert (await client.get(ME, headers=admin)).json()["role"] == "admin"
    viewer = await login(client, user["email"], user["password"])
    forbidden = await client.patch(
        f"/api/v1/users/{admin_user['id']}", json={"is_active": False}, headers=viewer
    )
    assert forbidden.status_code == 403
    missing = await client.patch("/api/v1/users/nobody", json={"is_active": False}, headers=admin)
    assert missing.status_code == 404


async def test_password_hashing_runs_off_the_event_loop(
    app: FastAPI, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await create_user(app)
    loop_thread = threading.current_thread()
    seen: list[threading.Thread] = []

    class RecordingHasher(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            seen.append(threading.current_thread())
            return super().verify(hash, password)

    monkeypatch.setattr(
        service, "_hasher", RecordingHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    await login(client, user["email"], user["password"])
    wrong = await client.post(
        "/api/v1/auth/token", data={"username": "nobody@example.com", "password": "x"}
    )

    assert wrong.status_code == 401
    assert len(seen) == 2
    assert all(thread is not loop_thread for thread in seen)
    assert {thread.name.split("_")[0] for thread in seen} == {"homepot-password"}
