"""What the fault tests share: a PostgreSQL of their own (one per test module), a TCP proxy
in front of it that a test can cut or stall, and a migrated database per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from homepot.db import run_migrations
from tests.faults.servers import OwnPostgres, TcpProxy


@pytest.fixture(scope="module")
def postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
async def proxy(postgres: OwnPostgres) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(postgres.port)
    await proxy.start()
    yield proxy
    proxy.flow()
    await proxy.cut()


@pytest.fixture
async def database(postgres: OwnPostgres) -> str:
    """A migrated database of this test's own on that server; returns its name."""
    name = f"faults_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(host="127.0.0.1", port=postgres.port, user="postgres")
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    await asyncio.to_thread(run_migrations, postgres.url(database=name))
    return name
