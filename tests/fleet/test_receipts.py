"""A device message's row is stored on its first delivery only, with its receipt."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Table, event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from homepot.db import create_engine, create_session_factory, utcnow
from homepot.device.models import RECEIPT_DAYS, Device, HealthCheck, MessageReceipt
from homepot.fleet.receipts import FirstDeliveryInsert, filing_time, first_delivery
from homepot.kit.ids import uuid7
from homepot.protocol.messages import DeviceErrorReport, Heartbeat
from homepot.retention.partitions import maintain_partitions
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


def _heartbeat_row(event_id: str, at: datetime) -> dict[str, Any]:
    """A plain heartbeat's ``health_checks`` row (no response time, no details)."""
    return {
        "device_id": "pos-r",
        "timestamp": at,
        "status": "ok",
        "response_time_ms": None,
        "details": None,
        "event_id": event_id,
    }


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
            now = utcnow()
            outcomes.append(await store.execute(session, row, now=now, filed_at=now))
            # PostgreSQL: the receipt and the row in one statement (one round trip) when the
            # receipt is filed under the message's time, as the agent's messages are.
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
    row = _heartbeat_row(uuid.uuid4().hex, utcnow())
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


@pytest.mark.parametrize("filed", [True, False], ids=["filed-by-message-time", "searched"])
async def test_a_redelivery_days_later_is_recognised(
    database_url: str, backend: str, filed: bool
) -> None:
    """On PostgreSQL the receipts are daily partitions: a message delivered again on the
    next days is still recognised, by both ways of taking a receipt, whether the receipt is
    filed under the message's own time (a UUIDv7 id: every delivery goes to one partition)
    or under its first arrival (other ids: the partitions are searched)."""
    engine = await _with_device(database_url)
    first = datetime.now(UTC).replace(hour=23, minute=59, second=50, microsecond=0)
    await maintain_partitions(engine, first)
    store = FirstDeliveryInsert(HEALTH_CHECKS, COLUMNS)
    factory = create_session_factory(engine)
    heartbeat, error_report = uuid.uuid4().hex, uuid.uuid4().hex
    filed_at = first if filed else None
    outcomes = []
    for days in range(3):
        now = first + timedelta(days=days, seconds=20 * days)
        row = _heartbeat_row(heartbeat, now)
        async with factory() as session:
            outcomes.append(
                (
                    await store.execute(session, row, now=now, filed_at=filed_at),
                    await first_delivery(session, error_report, now=now, filed_at=filed_at),
                )
            )
            await session.commit()
    assert outcomes == [(True, True), (False, False), (False, False)]
    async with engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(HealthCheck)) == 1
        receipts = select(MessageReceipt.event_id, MessageReceipt.received_at)
        assert sorted(await connection.execute(receipts)) == sorted(
            [(heartbeat, first), (error_report, first)]
        )
        if backend == "postgresql":
            where = text("SELECT DISTINCT tableoid::regclass::text FROM message_receipts")
            assert list(await connection.scalars(where)) == [f"message_receipts_p{first:%Y%m%d}"]
    await engine.dispose()


async def test_a_receipt_filed_by_message_time_is_found_by_a_search(database_url: str) -> None:
    """A message whose id's time was in range on its first delivery and out of it on a later
    one (delivered again after RECEIPT_DAYS - 1 days) is still recognised by the search."""
    engine = await _with_device(database_url)
    factory = create_session_factory(engine)
    now = utcnow()
    message_id = uuid7(now - timedelta(hours=1))
    event_id = uuid.uuid4().hex
    filed_at = filing_time(message_id, now)
    assert filed_at is not None
    async with factory() as session:
        assert await first_delivery(session, event_id, now=now, filed_at=filed_at)
        await session.commit()
    later = now + timedelta(days=RECEIPT_DAYS - 1)
    assert filing_time(message_id, later) is None
    async with factory() as session:
        assert not await first_delivery(session, event_id, now=later, filed_at=None)
    await engine.dispose()


def test_a_receipt_is_filed_under_the_message_time_only_when_its_id_says_it_plausibly() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    made = now - timedelta(minutes=5)
    assert filing_time(uuid7(made), now) == made
    assert filing_time(uuid.uuid4(), now) is None  # an older client's id: no time in it
    assert filing_time(uuid7(now + timedelta(hours=23)), now) is not None
    assert filing_time(uuid7(now + timedelta(days=1, seconds=1)), now) is None  # clock ahead
    assert filing_time(uuid7(now - timedelta(days=RECEIPT_DAYS - 1)), now) is not None
    # Older: its receipt would be dropped before a redelivery could come; filed on arrival.
    assert filing_time(uuid7(now - timedelta(days=RECEIPT_DAYS - 1, seconds=1)), now) is None


@pytest.mark.parametrize("way", ["receipt", "receipt-and-row"])
async def test_deliveries_in_flight_across_midnight_store_the_message_once(
    database_url: str, backend: str, way: str
) -> None:
    """An id without a time of its own files its receipt under its arrival: two deliveries
    in flight at once on either side of midnight UTC go to two days' partitions, where no
    unique index sees both. The second waits for the first and is then refused."""
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time: the second delivery cannot start")
    engine = await _with_device(database_url)
    before = datetime.now(UTC).replace(hour=23, minute=59, second=59, microsecond=900_000)
    after = before + timedelta(milliseconds=200)
    await maintain_partitions(engine, before)
    factory = create_session_factory(engine)
    event_id = uuid.uuid4().hex
    store = FirstDeliveryInsert(HEALTH_CHECKS, COLUMNS)

    async def deliver(session: Any, now: datetime) -> bool:
        if way == "receipt":
            return await first_delivery(session, event_id, now=now)
        return await store.execute(session, _heartbeat_row(event_id, now), now=now)

    async with factory() as first, factory() as second:
        assert await deliver(first, before)
        again = asyncio.create_task(deliver(second, after))
        await asyncio.sleep(0.3)
        assert not again.done()  # waits for the first delivery's transaction
        await first.commit()
        assert await asyncio.wait_for(again, 10) is False
        await second.commit()
    async with engine.connect() as connection:
        receipts = select(MessageReceipt.event_id, MessageReceipt.received_at)
        assert list(await connection.execute(receipts)) == [(event_id, before)]
        stored = await connection.scalar(select(func.count()).select_from(HealthCheck))
        assert stored == (1 if way == "receipt-and-row" else 0)
    await engine.dispose()


def test_devices_send_time_ordered_message_ids_by_default() -> None:
    assert Heartbeat().message_id.version == 7
    report = DeviceErrorReport(severity="error", error_code="E", message="m")
    assert report.message_id.version == 7


@pytest.mark.parametrize("filed", [True, False], ids=["filed-by-message-time", "searched"])
async def test_a_delivery_waits_for_one_in_flight_and_is_then_refused(
    database_url: str, backend: str, filed: bool
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time: the second delivery cannot start")
    engine = await _with_device(database_url)
    factory = create_session_factory(engine)
    event_id = uuid.uuid4().hex
    filed_at = utcnow() if filed else None
    async with factory() as first, factory() as second:
        assert await first_delivery(first, event_id, filed_at=filed_at)
        again = asyncio.create_task(first_delivery(second, event_id, filed_at=filed_at))
        await asyncio.sleep(0.3)
        assert not again.done()  # waits on the first one's receipt in the partition's index
        await first.commit()
        assert await asyncio.wait_for(again, 10) is False
        await second.rollback()
    async with factory() as session:
        assert await session.scalar(select(func.count()).select_from(MessageReceipt)) == 1
    await engine.dispose()
