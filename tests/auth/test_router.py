from __future__ import annotations

from fastapi import FastAPI
from httpx import AsyncClient

from homepot.auth.models import Role
from tests.helpers import auth_headers, create_user, login


async def test_login_returns_bearer_token_that_identifies_the_user(
    app: FastAPI, client: AsyncClient
) -> None:
    user = await create_user(app, role=Role.operator)
    headers = await login(client, user["email"].upper(), user["password"])
    me = await client.get("/api/v1/users/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["id"] == user["id"]
    assert me.json()["role"] == "operator"


async def test_wrong_password_and_unknown_email_are_401(app: FastAPI, client: AsyncClient) -> None:
    user = await create_user(app)
    for username, password in [(user["email"], "wrong-password"), ("nobody@example.com", "x")]:
        response = await client.post(
            "/api/v1/auth/token", data={"username": username, "password": password}
        )
        assert response.status_code == 401
        assert response.json()["detail"] == "incorrect e-mail or password"


async def test_missing_and_garbage_tokens_are_401(client: AsyncClient) -> None:
    assert (await client.get("/api/v1/users/me")).status_code == 401
    response = await client.get("/api/v1/users/me", headers={"Authorization": "Bearer nonsense"})
    assert response.status_code == 401
    assert "invalid or expired token" in response.json()["detail"]


async def test_only_admins_create_users(app: FastAPI, client: AsyncClient) -> None:
    body = {"email": "new@example.com", "password": "long-enough-pw", "role": "operator"}
    viewer = await auth_headers(app, client, Role.viewer)
    response = await client.post("/api/v1/users", json=body, headers=viewer)
    assert response.status_code == 403
    admin = await auth_headers(app, client, Role.admin)
    created = await client.post("/api/v1/users", json=body, headers=admin)
    assert created.status_code == 201
    assert created.json()["role"] == "operator"
    assert "password" not in created.text
    again = await client.post("/api/v1/users", json=body, headers=admin)
    assert again.status_code == 409
    assert (await login(client, "new@example.com", "long-enough-pw"))["Authorization"]
