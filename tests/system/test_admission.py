"""Requests queue in arrival order for a bounded number of places, and an overlong wait is
503 with Retry-After (homepot.system.admission)."""

from __future__ import annotations

import asyncio

import pytest
from httpx import ASGITransport, AsyncClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from homepot.config import LimitsSettings, Settings
from homepot.system.admission import (
    SQLITE_CONCURRENT_REQUESTS,
    AdmissionGate,
    FifoGate,
    concurrent_request_limit,
)


async def test_a_freed_place_goes_to_the_longest_waiter_not_to_a_newcomer() -> None:
    gate = FifoGate(1)
    assert await gate.enter(1)
    order: list[str] = []

    async def request(name: str) -> None:
        assert await gate.enter(5)
        order.append(name)
        await asyncio.sleep(0)
        gate.leave()

    first = asyncio.create_task(request("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(request("second"))
    await asyncio.sleep(0)
    gate.leave()
    # A newcomer arriving just as the place frees up queues behind the two waiting.
    newcomer = asyncio.create_task(request("newcomer"))
    await asyncio.gather(first, second, newcomer)
    assert order == ["first", "second", "newcomer"]
    assert gate.busy == 0
    assert gate.waiting == 0


async def test_a_wait_that_times_out_or_is_cancelled_gives_up_its_place_in_the_queue() -> None:
    gate = FifoGate(1)
    assert await gate.enter(1)
    assert not await gate.enter(0.01)
    waiter = asyncio.create_task(gate.enter(5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting == 0
    gate.leave()
    assert gate.busy == 0
    assert await gate.enter(0.01)


def _app(release: asyncio.Event, limit: int, wait_seconds: float) -> AdmissionGate:
    async def slow(_request: Request) -> PlainTextResponse:
        await release.wait()
        return PlainTextResponse("done")

    async def health(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            Route("/slow", slow),
            Route("/api/v1/health", health),
            Route("/api/v1/auth/token", health, methods=["POST"]),
        ]
    )
    return AdmissionGate(app, limit=limit, timeout_seconds=wait_seconds)


async def test_requests_beyond_the_limit_wait_their_turn_and_an_overlong_wait_is_503() -> None:
    release = asyncio.Event()
    app = _app(release, limit=2, wait_seconds=0.3)
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        held = [asyncio.create_task(client.get("/slow")) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert app.gate.busy == 2
        # The health check never queues, nor does a login (it waits for its own threads).
        assert (await client.get("/api/v1/health")).text == "ok"
        assert (await client.post("/api/v1/auth/token")).text == "ok"
        refused = await client.get("/slow")
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "5"
        assert "overloaded" in refused.json()["detail"]
        # A request that waits less than the limit is served once a place frees up.
        queued = asyncio.create_task(client.get("/slow"))
        await asyncio.sleep(0.05)
        assert app.gate.waiting == 1
        release.set()
        answers = await asyncio.gather(*held, queued)
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert app.gate.busy == 0


def test_the_limit_follows_the_database_unless_set() -> None:
    postgres = Settings(database_url="postgresql+asyncpg://u@h/db")
    assert concurrent_request_limit(postgres) == postgres.database.pool_size
    sqlite = Settings(database_url="sqlite+aiosqlite:///x.db")
    assert concurrent_request_limit(sqlite) == SQLITE_CONCURRENT_REQUESTS
    chosen = sqlite.model_copy(update={"limits": LimitsSettings(max_concurrent_requests=7)})
    assert concurrent_request_limit(chosen) == 7
    # Every admitted request finds a connection, with room left for the background tasks.
    assert postgres.database.pool_max_overflow > 0
