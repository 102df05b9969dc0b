"""Test fixtures: every storage test runs against a real SQLite file AND a real PostgreSQL.

PostgreSQL is reached at HOMEPOT_TEST_PG_URL (default: the local server, user postgres); a
database of its own is created for the run and dropped afterwards. Set
HOMEPOT_TEST_BACKENDS=sqlite to run against SQLite only.

`make pytest` runs the tests in two processes (pytest-xdist, ``-n 2 --dist loadgroup``). Each
worker has its own databases (named per process below), its own ``tmp_path`` tree, and so its
own MQTT client ids and shared-subscription group on the shared Mosquitto (both derive from
the database URL, see homepot.fleet.mqtt); tests on the shared broker use random device ids,
so their topics never meet. What is kept in one worker is listed in
:func:`pytest_collection_modifyitems`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text

from homepot.config import AnalyticsSettings, AuthSettings, Settings
from homepot.db import create_engine, run_migrations
from homepot.main import create_app
from homepot.models import ALL_MODELS

PG_ADMIN_URL = os.environ.get(
    "HOMEPOT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = [
    b.strip() for b in os.environ.get("HOMEPOT_TEST_BACKENDS", "sqlite,postgresql").split(",")
]
TEST_SECRET = "test-secret-key-that-is-long-enough-for-hs256"

# The xdist group of the tests that start servers of their own (see below).
OWN_SERVERS = "own-servers"
# The xdist group of the test modules whose servers bridge the shared Mosquitto (see below).
SHARED_BROKER = "shared-mosquitto"
SHARED_BROKER_MODULES = frozenset(
    {"test_mqtt.py", "test_mqtt_batching.py", "test_end_to_end.py", "test_registration_security.py"}
)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``servers`` or ``faults`` run in one worker, one after another.

    Their ports and data directories are their own already; what they share is the machine:
    each starts several processes (PostgreSQL primary and standby, three nats-servers, app
    servers they kill and restart) and waits for them on deadlines; two of them at once on a
    two-core machine would compete for it. In one group they also start a module's server
    (tests/faults/conftest.py, the read replica) once, not once per worker.

    The modules whose app bridges the shared Mosquitto at 127.0.0.1:1883 run in one worker too:
    each worker's bridge subscribes with a group of its own, so it also receives (and drops as
    unknown devices) every message of the other worker's devices; during the 3,000-message
    burst of test_mqtt_batching that doubled the work of both bridges and the burst missed its
    90 s (CI, 2026-12-01).
    """
    for item in items:
        if item.get_closest_marker("servers") or item.get_closest_marker("faults"):
            item.add_marker(pytest.mark.xdist_group(OWN_SERVERS))
        elif item.path.parent.name == "fleet" and item.path.name in SHARED_BROKER_MODULES:
            item.add_marker(pytest.mark.xdist_group(SHARED_BROKER))


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashing() -> Iterator[None]:
    """Argon2 at production cost takes ~0.2 s a hash; tests log in hundreds of times.

    The hashes stay real argon2id (parameters travel inside each hash); only their cost drops.
    """
    from argon2 import PasswordHasher

    from homepot.auth import service

    production = service._hasher
    service._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    yield
    service._hasher = production


@pytest.fixture(scope="session")
def _migrated_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    urls: dict[str, str] = {}
    cleanup: list[str] = []
    if "sqlite" in BACKENDS:
        path = tmp_path_factory.mktemp("sqlite") / "homepot-test.db"
        urls["sqlite"] = f"sqlite+aiosqlite:///{path}"
        run_migrations(urls["sqlite"])
    if "postgresql" in BACKENDS:
        name = f"homepot_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        _pg_admin(f'CREATE DATABASE "{name}"')
        cleanup.append(name)
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        urls["postgresql"] = f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)
        run_migrations(urls["postgresql"])
    yield urls
    for name in cleanup:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_admin(statement: str) -> None:
    """Run one statement on the server's maintenance database (asyncpg, autocommit)."""
    import asyncio

    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database_url(backend: str, _migrated_urls: dict[str, str]) -> str:
    """A migrated, empty database of the current backend."""
    url = _migrated_urls[backend]
    engine = create_engine(url)
    names = [m.__tablename__ for m in ALL_MODELS]
    async with engine.begin() as connection:
        # DELETE, not TRUNCATE, on PostgreSQL too: a test leaves a few rows, and TRUNCATE
        # gives each of the 22 tables and their indexes new files, which the server must
        # create and sync. On a busy machine (load 12) that took 2.5-3 s before every one of
        # some 870 PostgreSQL tests; these DELETEs and the sequence reset take 0.2-0.4 s.
        for name in reversed(_delete_order(names)):
            await connection.execute(text(f"DELETE FROM {name}"))
        if backend == "postgresql":
            # What TRUNCATE's RESTART IDENTITY did: the tables' id sequences start again.
            await connection.execute(RESTART_SEQUENCES, {"tables": names})
    await engine.dispose()
    return url


# Every sequence owned by a column of these tables, back to its start value.
RESTART_SEQUENCES = text(
    """
    SELECT setval(d.objid::regclass, s.seqstart, false)
    FROM pg_depend d JOIN pg_sequence s ON s.seqrelid = d.objid
    WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.deptype IN ('a', 'i') AND d.refobjid = ANY(CAST(:tables AS regclass[]))
    """
)


def _delete_order(names: list[str]) -> list[str]:
    # Parents first; the caller reverses it so that children go first.
    parents = ["sites", "users", "devices", "jobs"]
    return parents + [n for n in names if n not in parents]


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        auth=AuthSettings(secret_key=TEST_SECRET),
        analytics=AnalyticsSettings(
            spool_dir=tmp_path / "spool",
            flush_interval_seconds=0.05,
            retry_backoff_seconds=0.01,
            spool_replay_interval_seconds=0.05,
        ),
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[AsyncClient]:
    transport = ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
