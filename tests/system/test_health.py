"""/api/v1/health: ok/degraded for anyone, details for admins, bounded when the DB hangs."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from homepot.analytics.error_logger import record_error
from homepot.auth.models import Role, User
from homepot.auth.service import create_access_token
from homepot.config import AnalyticsSettings, Settings
from homepot.db import create_engine, create_session_factory
from homepot.main import create_app
from tests.helpers import auth_headers, flush, rows
from tests.ports import free_port

HEALTH = "/api/v1/health"


async def test_without_an_admins_token_health_says_only_ok(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    operator = await auth_headers(app, client, Role.operator)

    for headers in ({}, viewer, operator, {"Authorization": "Bearer forged"}):
        response = await client.get(HEALTH, headers=headers)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


async def test_an_admin_sees_the_database_and_the_recorder(
    app: FastAPI, client: AsyncClient
) -> None:
    admin = await auth_headers(app, client, Role.admin)
    health = (await client.get(HEALTH, headers=admin)).json()
    assert health["status"] == "ok"
    assert health["database"] == "ok"
    assert {"queued", "written", "last_error"} <= set(health["recorder"])
    assert health["version"]


@pytest.fixture
async def black_hole() -> AsyncIterator[int]:
    """A port that accepts connections and never answers: a database that hangs."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_hanging_database_makes_health_degraded_not_hang(
    settings: Settings, black_hole: int
) -> None:
    hanging = settings.model_copy(
        update={
            "database_url": f"postgresql+asyncpg://homepot:pw@127.0.0.1:{black_hole}/homepot",
            "analytics": AnalyticsSettings(enabled=False, spool_dir=settings.analytics.spool_dir),
        }
    )
    app = create_app(hanging)
    # Only what health uses, without the lifespan: the background services would sit in
    # their own connection attempts to the black hole for a minute on shutdown.
    app.state.engine = create_engine(hanging.database_url)
    app.state.session_factory = create_session_factory(app.state.engine)
    admin_token = create_access_token(
        User(id="someone", role=Role.admin, token_generation=0), app.state.settings.auth
    )
    try:
        transport = ASGITransport(app=app)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            # A guard against a hang, far above the 1.5 s each probe is given.
            anonymous = await asyncio.wait_for(client.get(HEALTH), 20)
            # An admin's token cannot be checked against a hanging database either.
            with_token = await asyncio.wait_for(
                client.get(HEALTH, headers={"Authorization": f"Bearer {admin_token}"}), 20
            )
    finally:
        await app.state.engine.dispose()
    assert anonymous.status_code == 200
    assert anonymous.json() == {"status": "degraded"}
    assert with_token.json() == {"status": "degraded"}


async def test_recorded_errors_never_carry_a_database_urls_password(
    app: FastAPI, client: AsyncClient
) -> None:
    admin = await auth_headers(app, client, Role.admin)
    url = f"postgresql+asyncpg://homepot:hunter2-db-pass@127.0.0.1:{free_port()}/homepot"
    try:
        raise ConnectionRefusedError(f"could not connect to {url}")
    except ConnectionRefusedError as exc:
        record_error(
            category="database",
            severity="critical",
            error_code="DB_UNAVAILABLE",
            error_message=f"database unavailable: {exc}",
            exception=exc,
            recorder=app.state.recorder,
        )
    await flush(app)

    (stored,) = rows(await client.get("/api/v1/errors", headers=admin))
    assert "hunter2-db-pass" not in stored["error_message"]
    assert "hunter2-db-pass" not in stored["stack_trace"]
    # The user and host stay readable; the password is masked (by the URL masking or, before
    # storage, by redaction: either mark is fine, the secret is what must not be there).
    assert re.search(
        r"postgresql\+asyncpg://homepot:(\*\*\*|\[REDACTED\])@127\.0\.0\.1",
        stored["error_message"],
    ), stored["error_message"]
