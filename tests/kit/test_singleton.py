"""Leadership of the background singletons and process slots (homepot.kit.singleton).

Two :class:`Leadership` objects on two engines stand for two server processes on one
database: one runs a singleton, the other skips it; when the holder's connection dies (the
database ended it, as a restart or a network cut does), the lock is gone at once, the holder
notices at its next check and the other takes over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from homepot.db import create_engine
from homepot.kit.singleton import APPLICATION_NAME, Leadership, single_run


@pytest.fixture
async def engines(database_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    first, second = create_engine(database_url), create_engine(database_url)
    yield first, second
    await first.dispose()
    await second.dispose()


async def test_one_process_runs_each_singleton_and_another_takes_over_when_it_stops(
    backend: str, engines: tuple[AsyncEngine, AsyncEngine]
) -> None:
    one, other = Leadership(engines[0]), Leadership(engines[1])
    try:
        if backend == "sqlite":
            # One server process by design: it runs everything.
            assert await one.holds("orchestrator")
            assert await other.holds("orchestrator")
            assert await one.slot() == 0
            return
        assert await one.holds("orchestrator")
        assert not await other.holds("orchestrator")
        # Singletons are independent: the other process may lead another one.
        assert await other.holds("watchdog")
        assert not await one.holds("watchdog")
        # Asking again keeps the answer (the holder's connection still answers).
        assert await one.holds("orchestrator")
        assert not await other.holds("orchestrator")
        await one.release()
        assert await other.holds("orchestrator")
        assert not await one.holds("orchestrator")
    finally:
        await one.release()
        await other.release()


async def test_a_holder_whose_connection_dies_stops_running_the_singleton(
    backend: str, engines: tuple[AsyncEngine, AsyncEngine]
) -> None:
    if backend != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's; SQLite runs a single process")
    one, other = Leadership(engines[0]), Leadership(engines[1])
    try:
        assert await one.holds("retention")
        assert not await other.holds("retention")
        # The database ends the holder's lock session (a restart, a cut network, an admin).
        async with engines[1].connect() as admin:
            pid = (await one._connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()  # type: ignore[union-attr]
            name = await admin.scalar(
                text("SELECT application_name FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            )
            assert name == APPLICATION_NAME
            await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            # pg_terminate_backend only signals: the backend, and its locks, go a moment later.
            # (Each look in a new transaction: pg_stat_activity is a snapshot per transaction.)
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                await admin.rollback()
                if not await admin.scalar(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                ):
                    break
                assert asyncio.get_running_loop().time() < deadline, "the backend did not end"
                await asyncio.sleep(0.05)
        # The lock went with the session: the other process takes over at its next check,
        # and the former holder, whose check fails, no longer runs the singleton.
        assert await other.holds("retention")
        assert not await one.holds("retention")
        assert not one.leads("retention")
    finally:
        await one.release()
        await other.release()


async def test_each_process_gets_a_slot_of_its_own_and_a_successor_reuses_a_freed_one(
    backend: str, engines: tuple[AsyncEngine, AsyncEngine]
) -> None:
    if backend != "postgresql":
        pytest.skip("slots are PostgreSQL advisory locks; SQLite runs a single process")
    one, other = Leadership(engines[0]), Leadership(engines[1])
    successor = Leadership(engines[0])
    try:
        assert await one.slot() == 0
        assert await other.slot() == 1
        assert await one.slot() == 0  # kept for the process's life
        await one.release()
        assert await successor.slot() == 0
    finally:
        for leadership in (one, other, successor):
            await leadership.release()


async def test_a_second_run_skips_while_the_first_holds_the_lock(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    async with single_run(engines[0], 4242) as first:
        assert first
        async with single_run(engines[1], 4242) as second:
            assert not second
    async with single_run(engines[1], 4242) as again:
        assert again
