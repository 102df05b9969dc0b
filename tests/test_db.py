"""Outage or bad data: one classifier decides, and a database outage is a 503, never 4xx/500."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from homepot.config import DatabaseSettings, Settings
from homepot.db import Failure, classify_failure, create_engine
from homepot.main import create_app
from tests.helpers import create_registered_device
from tests.ports import refused_port

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


def _unreachable(backend: str, port: int, tmp_path: Path) -> str:
    if backend == "postgresql":  # nothing listens there: the connection is refused
        return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/homepot"
    return f"sqlite+aiosqlite:///{tmp_path}/missing-dir/homepot.db"


@pytest.fixture
async def unreachable_client(
    backend: str, settings: Settings, tmp_path: Path
) -> AsyncIterator[AsyncClient]:
    with refused_port() as port:
        url = _unreachable(backend, port, tmp_path)
        app = create_app(settings.model_copy(update={"database_url": url}))
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


async def _backend_gone(admin: AsyncConnection, pid: int) -> None:
    """Wait until the backend ``pid`` has ended (pg_terminate_backend only signals it)."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        await admin.rollback()  # pg_stat_activity is a snapshot per transaction
        if not await admin.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        ):
            return
        assert asyncio.get_running_loop().time() < deadline, "the backend did not end"
        await asyncio.sleep(0.05)


async def test_a_pooled_connection_is_pinged_when_it_idled_and_a_dropped_one_is_replaced(
    backend: str, database_url: str
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite opens its file as asked; the pool and its ping are PostgreSQL's")
    engine = create_engine(
        database_url, settings=DatabaseSettings(pool_size=1, pool_ping_after_idle_seconds=0.5)
    )
    admin_engine = create_engine(database_url)
    pings: list[object] = []
    ping = engine.dialect.do_ping

    def counted_ping(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    engine.dialect.do_ping = counted_ping  # type: ignore[method-assign]
    backend_pid = text("SELECT pg_backend_pid()")
    try:
        async with engine.connect() as connection:  # a new connection: not pinged
            first = await connection.scalar(backend_pid)
        async with engine.connect() as connection:  # used a moment ago: trusted
            assert await connection.scalar(backend_pid) == first
        assert pings == []
        await asyncio.sleep(0.6)
        async with engine.connect() as connection:  # idled: pinged, and alive
            assert await connection.scalar(backend_pid) == first
        assert len(pings) == 1
        # The database drops the idle connection (a restart, a firewall's idle timeout).
        async with admin_engine.connect() as admin:
            await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
            await _backend_gone(admin, first)
        await asyncio.sleep(0.6)
        async with engine.connect() as connection:  # the ping finds it dead: replaced
            replacement = await connection.scalar(backend_pid)
        assert replacement != first
        assert len(pings) == 2
    finally:
        await engine.dispose()
        await admin_engine.dispose()


async def test_with_no_idle_allowance_every_checkout_is_pinged(
    backend: str, database_url: str
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite opens its file as asked; the pool and its ping are PostgreSQL's")
    engine = create_engine(database_url, settings=DatabaseSettings(pool_ping_after_idle_seconds=0))
    pings: list[object] = []
    ping = engine.dialect.do_ping

    def counted_ping(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    engine.dialect.do_ping = counted_ping  # type: ignore[method-assign]
    try:
        for _ in range(3):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        assert len(pings) == 2  # all but the first: a new connection is not pinged
    finally:
        await engine.dispose()
