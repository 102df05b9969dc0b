"""Request-log rows built by the writer: the same rows as before, unbuilt events kept safe.

The middleware queues what a request saw (a tuple) and the recorder's writer builds the row
(homepot.analytics.request_log). These tests hold the fast builder to the reference
(``Recorder.record``'s completion of the fields the middleware used to pass), check that the
request path still records streaming answers, failures and redacted query strings, and that
an unbuilt event keeps its event id when its batch is written again.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from httpx import AsyncClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from homepot.analytics.models import APIRequestLog
from homepot.analytics.recorder import _SHAPES, Recorder
from homepot.analytics.request_log import TABLE, build_request_rows, request_fields
from homepot.config import AnalyticsSettings
from homepot.db import create_engine
from tests.analytics.test_middleware import request_logs

CANARY = "canary-77c1e0"
CARD = "4111 1111 1111 1111"


def entry(**changes: Any) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "at": time.time(),
        "request_id": "0123456789abcdef0123456789abcdef",
        "path": "/api/v1/devices/d-1",
        "route": "/api/v1/devices/{device_id}",
        "method": "GET",
        "status": 200,
        "elapsed": 0.001234567,
        "user_id": "a" * 32,
        "client_ip": "203.0.113.7",
        "headers": [(b"host", b"t"), (b"user-agent", b"curl/8.0"), (b"accept", b"*/*")],
        "error": None,
        "error_body": None,
        "received": 0,
        "sent": 60,
        "source": "device",
        "query_string": b"",
    }
    values.update(changes)
    return tuple(values.values())


ENTRIES = {
    "ordinary": entry(),
    "anonymous, unmatched, no agent": entry(
        user_id=None, route=None, client_ip=None, headers=[(b"host", b"t")]
    ),
    "NUL and a huge path": entry(path="/api/v1/x\x00y" + "z" * 3000, status=422),
    "a method longer than its column": entry(method="PROPPATCHLONGER"),
    "a user id longer than its column": entry(user_id="u" * 100),
    "secrets in the user agent": entry(
        headers=[(b"user-agent", f"bot password={CANARY} card {CARD}".encode())]
    ),
    "a huge user agent with a NUL": entry(
        headers=[(b"user-agent", b"agent\x00" + b"x" * 600 + f" token={CANARY}".encode())]
    ),
    "an unread body": entry(method="POST", headers=[(b"content-length", b"1234")]),
    "a read body": entry(method="POST", received=77, headers=[(b"content-length", b"77")]),
    "an exception": entry(status=500, error=f"RuntimeError: melted; password={CANARY}"),
    "a JSON error": entry(status=404, error_body=f'{{"detail": "no token={CANARY}"}}'.encode()),
    "a validation error": entry(
        status=422,
        error_body=b'{"detail": [{"loc": ["body", "count"], "msg": "Field required"}]}',
    ),
    "a text error": entry(status=502, error_body=b"bad gateway"),
    "a query string": entry(
        query_string=f"page=2&token={CANARY}&api_key={CANARY}&note=card+{CARD.replace(' ', '+')}"
        "&tag=a&tag=b&empty=".encode()
    ),
    "a simulated request": entry(source="simulated"),
}


@pytest.mark.parametrize("name", list(ENTRIES))
def test_built_rows_equal_what_record_made_of_the_same_request(name: str) -> None:
    raw = ENTRIES[name]
    (row,) = build_request_rows([raw])
    reference = _SHAPES[TABLE].complete({**request_fields(raw), "event_id": row["event_id"]})
    assert row == reference
    assert list(row) == list(reference)  # every column, in the table's order
    assert CANARY not in repr(row)
    assert "4111111111111111" not in repr(row).replace(" ", "").replace("+", "")


def test_each_built_row_gets_its_own_event_id() -> None:
    rows = build_request_rows([entry() for _ in range(300)])
    ids = [row["event_id"] for row in rows]
    assert len(set(ids)) == 300
    assert all(len(i) == 32 and i[12] == "4" and i[16] in "89ab" for i in ids)


def test_the_query_string_is_stored_redacted() -> None:
    (row,) = build_request_rows([ENTRIES["a query string"]])
    assert row["query_params"] == {
        "page": "2",
        "token": "[REDACTED]",
        "api_key": "[REDACTED]",
        "note": "card ************1111",
        "tag": ["a", "b"],
        "empty": "",
    }


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url)
    yield eng
    await eng.dispose()


def _settings(tmp_path: Path, **overrides: object) -> AnalyticsSettings:
    return AnalyticsSettings.model_validate(
        {"spool_dir": tmp_path / "spool", "retry_attempts": 0, "retry_backoff_seconds": 0.01}
        | overrides
    )


async def _stored_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        result = await connection.execute(select(APIRequestLog.event_id).order_by(APIRequestLog.id))
        return [row[0] for row in result]


async def test_an_unbuilt_event_keeps_its_event_id_through_the_spool(
    engine: AsyncEngine, backend: str, tmp_path: Path
) -> None:
    unreachable = (
        "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
        if backend == "postgresql"
        else f"sqlite+aiosqlite:///{tmp_path}/missing-dir/homepot.db"
    )
    broken = create_engine(unreachable)
    recorder = Recorder(broken, _settings(tmp_path, batch_size=4))
    for number in range(10):
        assert recorder.record_unbuilt(TABLE, entry(path=f"/api/v1/n/{number}"))
    await recorder.flush()  # nowhere to write: built, then spooled
    assert recorder.snapshot()["spilled"] == 10
    assert len(list((tmp_path / "spool").glob("*.jsonl"))) == 3
    recorder.engine = engine
    await recorder.flush()  # replayed: the ids the rows got when they were built
    stored = await _stored_ids(engine)
    assert len(stored) == len(set(stored)) == 10
    assert recorder.snapshot()["replayed"] == 10
    await broken.dispose()


async def test_an_event_its_builder_cannot_build_is_rejected_alone(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path, batch_size=3))
    good = [entry(path=f"/api/v1/ok/{n}") for n in range(5)]
    bad = entry(path=None)  # a path that is no text: a bug in a producer
    for raw in (good[0], good[1], bad, good[2], good[3], good[4]):
        assert recorder.record_unbuilt(TABLE, raw)
    await recorder.flush()
    snapshot = recorder.snapshot()
    assert (snapshot["rejected"], snapshot["written"], snapshot["queued"]) == (1, 5, 0)
    async with engine.connect() as connection:
        endpoints = (await connection.execute(select(APIRequestLog.endpoint))).scalars().all()
    assert sorted(endpoints) == [f"/api/v1/ok/{n}" for n in range(5)]


async def test_unbuilt_events_count_against_the_memory_bound(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path, queue_max_events=10))
    kept = [recorder.record_unbuilt(TABLE, entry()) for _ in range(12)]
    assert kept == [True] * 10 + [False] * 2
    assert recorder.snapshot()["dropped"] == 2
    await recorder.flush()
    async with engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(APIRequestLog)) == 10


def test_a_table_without_a_row_builder_is_refused(tmp_path: Path) -> None:
    recorder = Recorder(create_engine("sqlite+aiosqlite://"), _settings(tmp_path))
    with pytest.raises(ValueError, match="no row builder"):
        recorder.record_unbuilt("device_metrics", ())


# -- through the app ---------------------------------------------------------------------


def add_routes(app: FastAPI) -> None:
    @app.get("/api/v1/test/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"x" * 1000

        return StreamingResponse(chunks(), status_code=206, media_type="text/plain")

    @app.get("/api/v1/test/stream-fails")
    async def stream_fails() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"partial"
            raise RuntimeError(f"the stream broke; token={CANARY}")

        return StreamingResponse(chunks(), media_type="text/plain")


async def test_a_streaming_answer_is_recorded_with_its_status_and_size(
    app: FastAPI, client: AsyncClient
) -> None:
    add_routes(app)
    response = await client.get("/api/v1/test/stream?page=3&password=" + CANARY)
    assert response.status_code == 206
    (log,) = [log for log in await request_logs(app) if log.endpoint == "/api/v1/test/stream"]
    assert (log.status_code, log.route, log.response_size_bytes) == (
        206,
        "/api/v1/test/stream",
        3000,
    )
    assert log.query_params == {"page": "3", "password": "[REDACTED]"}
    assert log.request_id == response.headers["x-request-id"]
    assert log.response_time_ms > 0


async def test_a_stream_that_fails_after_it_started_is_still_recorded(
    app: FastAPI, client: AsyncClient
) -> None:
    add_routes(app)
    with pytest.raises(RuntimeError):
        await client.get("/api/v1/test/stream-fails")
    (log,) = [log for log in await request_logs(app) if log.endpoint.endswith("stream-fails")]
    assert log.status_code == 500
    assert log.error_message is not None
    assert log.error_message.startswith("RuntimeError: the stream broke")
    assert CANARY not in log.error_message
