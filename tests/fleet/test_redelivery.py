"""A heartbeat or a device's error report delivered again, arriving later (so stamped with
another time by the server), is stored once: its receipt (homepot.fleet.receipts) keeps
it out, since the tables' unique keys hold the timestamp (they are partitioned by it on
PostgreSQL). Both databases."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import select

from homepot.analytics.models import ErrorLog
from homepot.device.models import Device, HealthCheck, MessageReceipt
from homepot.fleet import service
from homepot.protocol.messages import (
    _DEVICE_EVENT_NAMESPACE,
    DeviceErrorReport,
    ErrorSeverity,
    Heartbeat,
    device_event_id,
)
from tests.helpers import create_registered_device, db_rows, flush


def test_a_stored_event_id_is_the_uuid5_of_the_device_and_its_own_id() -> None:
    # Stored ids must never change between versions: a sample sent again after an upgrade
    # has to meet the id it was stored under.
    for n in range(2000):
        device_id, client_id = f"pos-{n:04d}", uuid.uuid4()
        expected = uuid.uuid5(_DEVICE_EVENT_NAMESPACE, f"{device_id}/{client_id}").hex
        assert device_event_id(device_id, client_id) == expected
    fixed = uuid.UUID("00000000-0000-4000-8000-000000000000")
    assert device_event_id("pos-0001", fixed) == "0708111cbca4573e8c234b4bef08ca11"


async def test_a_heartbeat_and_an_error_sent_again_over_http_are_stored_once(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, headers = await create_registered_device(app, client)
    heartbeat = {"message_id": str(uuid.uuid4()), "status": "ok", "uptime_seconds": 5}
    error = {
        "message_id": str(uuid.uuid4()),
        "severity": "error",
        "error_code": "PRINTER_JAM",
        "message": "paper jam",
    }
    answers = []
    for _ in range(2):  # the answer was lost: the agent sends the same messages again
        beat = await client.post("/api/v1/agent/heartbeat", json=heartbeat, headers=headers)
        assert beat.status_code == 200, beat.text
        sent = await client.post("/api/v1/agent/errors", json=error, headers=headers)
        assert sent.status_code == 202, sent.text
        answers.append(sent.json()["event_id"])
    await flush(app)

    assert len(await db_rows(app, HealthCheck, device_id=device_id)) == 1
    assert len(await db_rows(app, ErrorLog, device_id=device_id, error_code="PRINTER_JAM")) == 1
    assert answers[0] == answers[1] is not None


async def test_a_redelivery_arriving_minutes_later_is_stored_once(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, _ = await create_registered_device(app, client)
    heartbeat = Heartbeat(status="ok")
    report = DeviceErrorReport(severity=ErrorSeverity.warning, error_code="LOW_PAPER", message="m")
    first = datetime.now(UTC) - timedelta(minutes=10)
    recorder = app.state.recorder
    for arrival in (first, first + timedelta(minutes=7)):
        async with app.state.session_factory() as session:
            device = await session.get(Device, device_id)
            assert device is not None
            await service.record_heartbeat(session, recorder, device, heartbeat, now=arrival)
            await service.record_device_error(session, recorder, device, report)
            await session.commit()
    # Another heartbeat (its own message id) is stored as well.
    async with app.state.session_factory() as session:
        device = await session.get(Device, device_id)
        assert device is not None
        await service.record_heartbeat(session, recorder, device, Heartbeat(status="ok"))
        await session.commit()
    await flush(app)

    checks = await db_rows(app, HealthCheck, device_id=device_id)
    assert sorted(check.timestamp for check in checks)[0] == first
    assert len(checks) == 2
    assert len(await db_rows(app, ErrorLog, device_id=device_id, error_code="LOW_PAPER")) == 1


async def test_a_receipt_is_taken_only_with_the_row_it_guards(
    app: FastAPI, client: AsyncClient
) -> None:
    """A delivery whose transaction rolled back (the row not stored) leaves no receipt, so
    the next delivery of the same message is stored."""
    device_id, _ = await create_registered_device(app, client)
    heartbeat = Heartbeat(status="ok")
    report = DeviceErrorReport(severity=ErrorSeverity.error, error_code="DRAWER", message="m")
    recorder = app.state.recorder
    async with app.state.session_factory() as session:
        device = await session.get(Device, device_id)
        assert device is not None
        await service.record_heartbeat(session, recorder, device, heartbeat)
        await service.record_device_error(session, recorder, device, report)
        await session.rollback()
    await flush(app)
    assert await db_rows(app, HealthCheck, device_id=device_id) == []
    assert await db_rows(app, ErrorLog, device_id=device_id, error_code="DRAWER") == []
    async with app.state.session_factory() as session:
        assert list(await session.scalars(select(MessageReceipt))) == []

    async with app.state.session_factory() as session:
        device = await session.get(Device, device_id)
        assert device is not None
        await service.record_heartbeat(session, recorder, device, heartbeat)
        await service.record_device_error(session, recorder, device, report)
        await session.commit()
    await flush(app)

    assert len(await db_rows(app, HealthCheck, device_id=device_id)) == 1
    assert len(await db_rows(app, ErrorLog, device_id=device_id, error_code="DRAWER")) == 1


@pytest.mark.parametrize("field", ["heartbeat", "errors"])
async def test_a_report_sent_again_stores_its_heartbeat_and_errors_once(
    app: FastAPI, client: AsyncClient, field: str
) -> None:
    """The same report twice, with another report in between (so that it is not the
    device's previous report, which the report path recognises by itself)."""
    device_id, headers = await create_registered_device(app, client)

    def report() -> dict[str, object]:
        return {
            "report_id": str(uuid.uuid4()),
            "heartbeat": {"message_id": str(uuid.uuid4()), "status": "ok"},
            "errors": [{"severity": "error", "error_code": "JAM", "message": "jam"}],
            "jobs_limit": 0,
        }

    first, other = report(), report()
    for body in (first, other, first):
        answer = await client.post("/api/v1/agent/report", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
    await flush(app)

    if field == "heartbeat":
        assert len(await db_rows(app, HealthCheck, device_id=device_id)) == 2
    else:
        assert len(await db_rows(app, ErrorLog, device_id=device_id, error_code="JAM")) == 2
