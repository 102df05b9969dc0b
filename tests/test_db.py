"""Outage or bad data: one classifier decides, and a database outage is a 503, never 4xx/500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy.exc import DBAPIError

from homepot.config import DatabaseSettings, Settings
from homepot.db import Failure, classify_failure
from homepot.main import create_app
from tests.faults.servers import free_port
from tests.helpers import create_registered_device

TELEMETRY = "/api/v1/agent/telemetry"


class DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "failure"),
    [
        ("57P03", Failure.OUTAGE),  # the database system is starting up
        ("57P01", Failure.OUTAGE),  # terminating connection due to administrator command
        ("08006", Failure.OUTAGE),  # connection failure
        ("53300", Failure.OUTAGE),  # too many connections
        ("40001", Failure.OUTAGE),  # serialization failure: try again
        ("23505", Failure.DATA),  # unique violation
        ("22P05", Failure.DATA),  # untranslatable character (NUL)
        ("42P01", Failure.SCHEMA),  # undefined table: migrations not run
    ],
)
def test_postgresql_failures_are_told_apart_by_their_sqlstate(
    sqlstate: str, failure: Failure
) -> None:
    wrapped = DBAPIError("INSERT ...", None, DriverError(sqlstate))
    assert classify_failure(wrapped) is failure


def test_a_file_error_outside_the_database_is_not_an_outage(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as raised:
        (tmp_path / "missing" / "file").read_text()
    assert classify_failure(raised.value) is None


def _unreachable(backend: str, tmp_path: Path) -> str:
    if backend == "postgresql":  # nothing listens there: the connection is refused
        return f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/homepot"
    return f"sqlite+aiosqlite:///{tmp_path}/missing-dir/homepot.db"


@pytest.fixture
async def unreachable_client(
    backend: str, settings: Settings, tmp_path: Path
) -> AsyncIterator[AsyncClient]:
    app = create_app(settings.model_copy(update={"database_url": _unreachable(backend, tmp_path)}))
    async with LifespanManager(app, shutdown_timeout=30):
        transport = ASGITransport(app=app, client=("203.0.113.9", 50000))
        async with AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def test_a_database_that_cannot_be_reached_is_a_503_with_retry_after(
    unreachable_client: AsyncClient,
) -> None:
    response = await unreachable_client.post(
        TELEMETRY,
        json={"samples": []},
        headers={"Authorization": "Bearer hpd_0123456789abcdef0123456789abcdef"},
    )
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert "cannot be reached" in response.json()["detail"]
    assert "send the same request again" in response.json()["detail"]


@pytest.fixture
def small_pool(backend: str, settings: Settings) -> Settings:
    if backend != "postgresql":
        pytest.skip("SQLite's engine opens connections as asked; the pool bound is PostgreSQL's")
    settings.database = DatabaseSettings(pool_size=1, pool_max_overflow=0, pool_timeout_seconds=0.5)
    return settings


@pytest.mark.usefixtures("small_pool")
async def test_no_free_connection_in_the_pool_is_a_503_not_a_500(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, device = await create_registered_device(app, client)
    async with app.state.engine.connect():  # the only connection, held elsewhere
        response = await client.post(
            "/api/v1/agent/heartbeat", json={"status": "ok"}, headers=device
        )
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"]
    assert "no database connection became free" in response.json()["detail"]
    response = await client.post("/api/v1/agent/heartbeat", json={"status": "ok"}, headers=device)
    assert response.status_code == 200, response.text
