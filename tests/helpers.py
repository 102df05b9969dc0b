"""Small create_* helpers: each test makes its own data."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient
from starlette.routing import BaseRoute

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


async def create_site(
    app: FastAPI,
    *,
    site_id: str | None = None,
    name: str = "Test store",
    timezone: str = "UTC",
    config: dict[str, Any] | None = None,
) -> str:
    """A site in the database; returns its site_id."""
    from homepot.site.models import Site

    site_id = site_id or f"site-{uuid.uuid4().hex[:8]}"
    async with app.state.session_factory() as session:
        session.add(Site(site_id=site_id, name=name, timezone=timezone, config=config or {}))
        await session.commit()
    return site_id


async def create_device(
    app: FastAPI,
    *,
    site_id: str | None = None,
    device_id: str | None = None,
    name: str = "Test terminal",
    device_type: str = "pos_terminal",
    status: str = "offline",
    config: dict[str, Any] | None = None,
) -> str:
    """A device in the database (and its site, unless given); returns its device_id."""
    from homepot.device.models import Device, DeviceStatus

    site_id = site_id or await create_site(app)
    device_id = device_id or f"pos-terminal-{uuid.uuid4().hex[:8]}"
    async with app.state.session_factory() as session:
        session.add(
            Device(
                device_id=device_id,
                site_id=site_id,
                name=name,
                device_type=device_type,
                status=DeviceStatus(status),
                config=config or {},
            )
        )
        await session.commit()
    return device_id


async def db_rows(app: FastAPI, model: type[Any], **filters: Any) -> list[Any]:
    """Rows of ``model`` as stored (flush the recorder first for analytics tables)."""
    from sqlalchemy import select

    async with app.state.session_factory() as session:
        return list(await session.scalars(select(model).filter_by(**filters)))


async def create_bootstrap_key(
    app: FastAPI, site_id: str, *, hours: float = 24, replaces_devices: bool = False
) -> str:
    """Give an existing site a bootstrap key valid for ``hours`` (stored hashed, as the API
    does); returns it. ``replaces_devices``: as if an admin issued it to re-register devices.
    """
    from datetime import timedelta

    from homepot.db import utcnow
    from homepot.kit.keys import hash_key, new_bootstrap_key
    from homepot.site.models import Site

    key = new_bootstrap_key()
    async with app.state.session_factory() as session:
        site = await session.get(Site, site_id)
        assert site is not None, f"no site {site_id}"
        site.bootstrap_key_hash = hash_key(key)
        site.bootstrap_key_expires_at = utcnow() + timedelta(hours=hours)
        site.bootstrap_key_replaces_devices = replaces_devices
        await session.commit()
    return key


async def create_registered_device(
    app: FastAPI,
    client: AsyncClient,
    *,
    site_id: str | None = None,
    device_id: str | None = None,
    **register_fields: Any,
) -> tuple[str, dict[str, str]]:
    """A device registered through POST /api/v1/agent/register (its site made unless given).

    Returns the device_id and the headers that authenticate as it. The device is offline
    until its first heartbeat. Extra keyword arguments go into the RegisterRequest body.
    """
    site_id = site_id or await create_site(app)
    device_id = device_id or f"pos-terminal-{uuid.uuid4().hex[:8]}"
    response = await client.post(
        "/api/v1/agent/register",
        json={
            "site_id": site_id,
            "device_id": device_id,
            "bootstrap_key": await create_bootstrap_key(app, site_id),
            **register_fields,
        },
    )
    assert response.status_code == 200, response.text
    return device_id, {"Authorization": f"Bearer {response.json()['api_key']}"}


def all_routes(app: FastAPI) -> Iterator[BaseRoute]:
    """Every route of ``app``, those of included routers too (FastAPI keeps them there)."""

    def walk(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
        for route in routes:
            included = getattr(route, "original_router", None)
            if included is not None:
                yield from walk(included.routes)
            else:
                yield route

    return walk(app.routes)
