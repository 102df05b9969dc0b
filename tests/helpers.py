"""Small create_* helpers: each test makes its own data."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from homepot.auth.models import Role
from homepot.auth.service import create_user as create_user_row


async def create_user(
    app: FastAPI,
    *,
    role: Role = Role.viewer,
    email: str | None = None,
    password: str = "s3cret-pass!",
) -> dict[str, str]:
    """A user in the database; returns id, email and password."""
    email = email or f"{role.value}-{uuid.uuid4().hex[:8]}@example.com"
    async with app.state.session_factory() as session:
        user = await create_user_row(session, email=email, password=password, role=role)
        await session.commit()
        return {"id": user.id, "email": email, "password": password}


async def login(client: AsyncClient, email: str, password: str) -> dict[str, str]:
    response = await client.post(
        "/api/v1/auth/token", data={"username": email, "password": password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def auth_headers(app: FastAPI, client: AsyncClient, role: Role) -> dict[str, str]:
    user = await create_user(app, role=role)
    return await login(client, user["email"], user["password"])


async def flush(app: FastAPI) -> None:
    """Wait until every queued analytics event is in the database."""
    await app.state.recorder.flush()


def rows(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return list(response.json()["items"])
