"""A device message's row is stored on its first delivery only, with its receipt."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Table, event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from homepot.db import create_engine, create_session_factory, utcnow
from homepot.device.models import Device, HealthCheck, MessageReceipt
from homepot.fleet.receipts import FirstDeliveryInsert
from homepot.site.models import Site

HEALTH_CHECKS = HealthCheck.__table__
assert isinstance(HEALTH_CHECKS, Table)
COLUMNS = ("device_id", "timestamp", "status", "response_time_ms", "details", "event_id")


async def _with_device(database_url: str) -> AsyncEngine:
    engine = create_engine(database_url)
    async with create_session_factory(engine)() as session:
        session.add(Site(site_id="site-r", name="Receipts"))
        await session.flush()
        session.add(Device(device_id="pos-r", site_id="site-r", name="Till"))
        await session.commit()
    return engine


async def test_a_row_is_stored_on_the_first_delivery_only(database_url: str, backend: str) -> None:
    engine = await _with_device(database_url)
    statements: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    store = FirstDeliveryInsert(HEALTH_CHECKS, COLUMNS)
    event_id = uuid.uuid4().hex
    row = {
        "device_id": "pos-r",
        "timestamp": utcnow(),
        "status": "ok",
        "response_time_ms": 12.5,
        "details": {"uptime_seconds": 60},
        "event_id": event_id,
    }
    factory = create_session_factory(engine)
    outcomes = []
    for delivery in range(3):
        async with factory() as session:
            statements.clear()
            outcomes.append(await store.execute(session, row, now=utcnow()))
            # PostgreSQL: the receipt and the row in one statement (one round trip).
            assert len(statements) == (1 if backend == "postgresql" else 2 - (delivery > 0))
            await session.commit()
    assert outcomes == [True, False, False]
    async with factory() as session:
        stored = (await session.execute(select(HealthCheck))).scalars().all()
        receipts = await session.scalar(select(func.count()).select_from(MessageReceipt))
    assert [(r.event_id, r.status, r.details) for r in stored] == [
        (event_id, "ok", {"uptime_seconds": 60})
    ]
    assert receipts == 1
    await engine.dispose()


async def test_a_rolled_back_first_delivery_leaves_no_receipt(database_url: str) -> None:
    engine = await _with_device(database_url)
    store = FirstDeliveryInsert(HEALTH_CHECKS, COLUMNS)
    row = {
        "device_id": "pos-r",
        "timestamp": utcnow(),
        "status": "ok",
        "response_time_ms": None,
        "details": None,
        "event_id": uuid.uuid4().hex,
    }
    factory = create_session_factory(engine)
    async with factory() as session:
        assert await store.execute(session, row, now=utcnow())
        await session.rollback()  # e.g. the report's commit failed: the device sends it again
    async with factory() as session:
        assert await store.execute(session, row, now=utcnow())
        await session.commit()
    async with factory() as session:
        assert await session.scalar(select(func.count()).select_from(HealthCheck)) == 1
    await engine.dispose()
