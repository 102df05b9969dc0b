"""Statements run on asyncpg's connection (homepot.dbdriver) stay in the session's
transaction and fail the way SQLAlchemy's own statements fail; a report's writes go that way
on PostgreSQL."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import bindparam, event, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from homepot.db import Failure, classify_failure, create_engine, utcnow
from homepot.dbdriver import DriverStatement
from homepot.device.models import Device, HealthCheck, MessageReceipt
from tests.helpers import create_registered_device, db_rows

RECEIPTS = MessageReceipt.__table__
INSERT_RECEIPT = DriverStatement(
    insert(RECEIPTS)
    .values(event_id=bindparam("event_id"), received_at=bindparam("received_at"))
    .returning(RECEIPTS.c.event_id)
)


@pytest.fixture
async def pg_engine(backend: str, database_url: str) -> AsyncIterator[AsyncEngine]:
    if backend != "postgresql":
        pytest.skip("the driver's connection is asyncpg's: PostgreSQL only")
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


def _receipt() -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "received_at": utcnow()}


async def _stored(engine: AsyncEngine, event_id: str) -> bool:
    async with engine.connect() as connection:
        found = await connection.scalar(
            select(RECEIPTS.c.event_id).where(RECEIPTS.c.event_id == event_id)
        )
    return found is not None


async def test_a_statement_on_the_driver_is_rolled_back_with_the_session(
    pg_engine: AsyncEngine,
) -> None:
    sessions = async_sessionmaker(pg_engine)
    for read_first in (True, False):  # the driver's path, and the fallback before a BEGIN
        receipt = _receipt()
        async with sessions() as session:
            if read_first:
                await session.execute(text("SELECT 1"))
            assert await INSERT_RECEIPT.fetchval(session, receipt) == receipt["event_id"]
            await session.rollback()
        assert not await _stored(pg_engine, receipt["event_id"])
        async with sessions() as session:
            if read_first:
                await session.execute(text("SELECT 1"))
            await INSERT_RECEIPT.fetchval(session, receipt)
            await session.commit()
        assert await _stored(pg_engine, receipt["event_id"])


async def test_values_the_statement_carries_itself_are_bound_with_their_type(
    pg_engine: AsyncEngine,
) -> None:
    receipt = _receipt()
    later = receipt["received_at"] + timedelta(minutes=5)
    touch = DriverStatement(
        update(RECEIPTS)
        .where(
            RECEIPTS.c.event_id == bindparam("event_id"),
            RECEIPTS.c.received_at > datetime(2000, 1, 1, tzinfo=UTC),  # a literal, typed
        )
        .values(received_at=bindparam("later"))
        .returning(RECEIPTS.c.received_at)
    )
    sessions = async_sessionmaker(pg_engine)
    async with sessions() as session:
        await INSERT_RECEIPT.fetchval(session, receipt)
        await session.execute(text("SELECT 1"))
        assert (
            await touch.fetchval(session, {"event_id": receipt["event_id"], "later": later})
            == later
        )
        await session.commit()


async def test_a_constraint_violation_on_the_driver_is_sqlalchemys_integrity_error(
    pg_engine: AsyncEngine,
) -> None:
    receipt = _receipt()
    sessions = async_sessionmaker(pg_engine)
    async with sessions() as session:
        await INSERT_RECEIPT.fetchval(session, receipt)
        await session.commit()
    async with sessions() as session:
        await session.execute(text("SELECT 1"))
        with pytest.raises(IntegrityError) as raised:
            await INSERT_RECEIPT.fetchval(session, receipt)
        await session.rollback()
    assert classify_failure(raised.value) is Failure.DATA
    assert receipt["event_id"] not in str(raised.value)  # parameters are not shown


async def test_a_connection_lost_under_the_driver_is_an_outage_and_is_not_reused(
    pg_engine: AsyncEngine,
) -> None:
    sessions = async_sessionmaker(pg_engine)
    async with sessions() as session:
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
        async with pg_engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as raised:
            await INSERT_RECEIPT.fetchval(session, _receipt())
        assert raised.value.connection_invalidated
        assert classify_failure(raised.value) is Failure.OUTAGE
        await session.rollback()
    async with sessions() as session:  # the pool hands out a working connection
        receipt = _receipt()
        await session.execute(text("SELECT 1"))
        await INSERT_RECEIPT.fetchval(session, receipt)
        await session.commit()
    assert await _stored(pg_engine, receipt["event_id"])


@contextlib.contextmanager
def statements_through_sqlalchemy(app: FastAPI) -> Iterator[list[str]]:
    """The SQL that SQLAlchemy sends while the block runs (the driver's own does not show)."""
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", seen)


async def test_a_steady_report_writes_its_device_row_and_heartbeat(
    app: FastAPI, client: AsyncClient, backend: str
) -> None:
    device_id, headers = await create_registered_device(app, client)
    heartbeat = {"status": "ok", "firmware_version": "4.3.0", "uptime_seconds": 1.0}
    first = {"report_id": str(uuid.uuid4()), "heartbeat": heartbeat}
    assert (await client.post("/api/v1/agent/report", json=first, headers=headers)).is_success

    later = {
        "report_id": str(uuid.uuid4()),
        "heartbeat": {**heartbeat, "firmware_version": "4.4.0"},
    }
    with statements_through_sqlalchemy(app) as statements:
        answer = await client.post("/api/v1/agent/report", json=later, headers=headers)

    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "online"
    (device,) = await db_rows(app, Device, device_id=device_id)
    assert (device.last_report_id, device.firmware_version) == (later["report_id"], "4.4.0")
    assert device.updated_at >= device.last_seen_at
    assert len(await db_rows(app, HealthCheck, device_id=device_id)) == 2
    written_by_sqlalchemy = [
        s for s in statements if s.startswith(("UPDATE devices", "WITH receipt AS"))
    ]
    if backend == "postgresql":
        assert written_by_sqlalchemy == []  # both on the driver's connection
    else:
        assert any(s.startswith("UPDATE devices") for s in statements)


async def test_a_telemetry_batch_writes_its_device_row_on_the_driver(
    app: FastAPI, client: AsyncClient, backend: str
) -> None:
    device_id, headers = await create_registered_device(app, client)
    sample = {
        "event_id": str(uuid.uuid4()),
        "timestamp": utcnow().isoformat(),
        "collection_interval_seconds": 30,
        "cpu_percent": 12.5,
    }
    with statements_through_sqlalchemy(app) as statements:
        answer = await client.post(
            "/api/v1/agent/telemetry", json={"samples": [sample]}, headers=headers
        )

    assert answer.status_code == 202, answer.text
    (device,) = await db_rows(app, Device, device_id=device_id)
    assert device.last_seen_at is not None
    assert device.updated_at >= device.last_seen_at
    by_sqlalchemy = any(s.startswith("UPDATE devices") for s in statements)
    assert by_sqlalchemy == (backend == "sqlite")


async def test_a_steady_heartbeat_writes_its_device_row_on_the_driver(
    app: FastAPI, client: AsyncClient, backend: str
) -> None:
    device_id, headers = await create_registered_device(app, client)
    heartbeat = {"status": "ok", "firmware_version": "4.3.0"}
    first = await client.post("/api/v1/agent/heartbeat", json=heartbeat, headers=headers)
    assert first.json()["status"] == "online"  # a state change: the ORM's flush

    with statements_through_sqlalchemy(app) as statements:
        answer = await client.post(
            "/api/v1/agent/heartbeat",
            json={**heartbeat, "firmware_version": "4.4.0"},
            headers=headers,
        )

    assert answer.status_code == 200, answer.text
    (device,) = await db_rows(app, Device, device_id=device_id)
    assert (device.status, device.firmware_version) == ("online", "4.4.0")
    assert len(await db_rows(app, HealthCheck, device_id=device_id)) == 2
    by_sqlalchemy = any(s.startswith("UPDATE devices") for s in statements)
    assert by_sqlalchemy == (backend == "sqlite")
