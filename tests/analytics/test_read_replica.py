"""Analytics reads from a streaming replica (HOMEPOT_DATABASE_READ_URL).

The test runs a PostgreSQL primary of its own and a hot standby made with ``pg_basebackup -R``
(never the shared server on 5432). The app writes to the primary and serves the analytics
streams, the overview and exports from the standby: rows written on the primary appear through
the API once replicated, and while the standby's replay is paused they do not (so the reads
really come from the replica), while the audit rows of those reads still go to the primary.
"""

from __future__ import annotations

import asyncio
import io
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from sqlalchemy import func, select

from homepot.analytics.error_logger import record_error
from homepot.analytics.models import ErrorLog
from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from homepot.config import AnalyticsSettings, AuthSettings, Settings
from homepot.db import run_migrations
from homepot.main import create_app
from tests.conftest import TEST_SECRET
from tests.faults.servers import OwnPostgres
from tests.helpers import auth_headers, flush

pytestmark = pytest.mark.servers

ERRORS = "/api/v1/analytics/errors"


@pytest.fixture(scope="module")
def replicated() -> Iterator[tuple[OwnPostgres, OwnPostgres]]:
    primary = OwnPostgres()
    standby: OwnPostgres | None = None
    try:
        primary.start()
        standby = primary.make_standby()
        standby.start()
        yield primary, standby
    finally:
        if standby is not None:
            standby.close()
        primary.close()


async def _on_standby(standby: OwnPostgres, statement: str) -> None:
    connection = await asyncpg.connect(host="127.0.0.1", port=standby.port, user="postgres")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _replayed(primary: OwnPostgres, standby: OwnPostgres, within: float = 60) -> None:
    """Wait until the standby has replayed everything the primary wrote so far (the new
    database and its tables: read before that, they do not exist there yet)."""
    connection = await asyncpg.connect(host="127.0.0.1", port=primary.port, user="postgres")
    try:
        written = await connection.fetchval("SELECT pg_current_wal_lsn()")
    finally:
        await connection.close()
    connection = await asyncpg.connect(host="127.0.0.1", port=standby.port, user="postgres")
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not await connection.fetchval(
            "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", written
        ):
            assert loop.time() < deadline, f"the standby did not replay {written} in {within} s"
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


@pytest.fixture
async def client(
    replicated: tuple[OwnPostgres, OwnPostgres], tmp_path: Path
) -> AsyncIterator[AsyncClient]:
    primary, standby = replicated
    name = f"replica_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(host="127.0.0.1", port=primary.port, user="postgres")
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    await asyncio.to_thread(run_migrations, primary.url(database=name))
    await _replayed(primary, standby)
    settings = Settings(
        database_url=primary.url(database=name),
        database_read_url=standby.url(database=name),
        auth=AuthSettings(secret_key=TEST_SECRET),
        analytics=AnalyticsSettings(spool_dir=tmp_path / "spool", flush_interval_seconds=0.05),
        export_key="replica-test-export-key-long-enough-to-use",
    )
    application = create_app(settings)
    async with LifespanManager(application):
        transport = ASGITransport(app=application)
        async with AsyncClient(transport=transport, base_url="http://testserver") as http:
            http.app = application  # type: ignore[attr-defined]
            yield http


async def _codes_seen(client: AsyncClient, headers: dict[str, str], code: str) -> int:
    answer = await client.get(ERRORS, params={"error_code": code}, headers=headers)
    assert answer.status_code == 200, answer.text
    return len(answer.json()["items"])


async def test_analytics_reads_come_from_the_replica(
    client: AsyncClient, replicated: tuple[OwnPostgres, OwnPostgres]
) -> None:
    _, standby = replicated
    app = client.app  # type: ignore[attr-defined]
    admin = await auth_headers(app, client, Role.admin)
    code = f"REPLICA_{uuid.uuid4().hex[:6].upper()}"

    async def written_and_seen(expected: int) -> None:
        for _ in range(100):
            if await _codes_seen(client, admin, code) == expected:
                return
            await asyncio.sleep(0.1)
        pytest.fail(f"the replica did not show {expected} rows of {code} within 10 s")

    record_error(
        category="database", severity="error", error_code=code, error_message="first",
        recorder=app.state.recorder,
    )  # fmt: skip
    await flush(app)
    await written_and_seen(1)

    # Replay paused: the primary has the second row, the replica (and so the API) does not.
    await _on_standby(standby, "SELECT pg_wal_replay_pause()")
    try:
        record_error(
            category="database", severity="error", error_code=code, error_message="second",
            recorder=app.state.recorder,
        )  # fmt: skip
        await flush(app)
        async with app.state.session_factory() as session:
            on_primary = await session.scalar(
                select(func.count()).select_from(ErrorLog).filter_by(error_code=code)
            )
        assert on_primary == 2
        await asyncio.sleep(0.5)
        assert await _codes_seen(client, admin, code) == 1
        # An export reads the replica too.
        answer = await client.post(
            "/api/v1/analytics/exports",
            json={"tables": ["error_logs"], "format": "csv"},
            headers=admin,
        )
        assert answer.status_code == 200, answer.text
        with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
            csv = next(n for n in archive.namelist() if n.endswith(".csv"))
            text = archive.read(csv).decode()
        assert text.count(code) == 1
    finally:
        await _on_standby(standby, "SELECT pg_wal_replay_resume()")
    await written_and_seen(2)
    # The reads were audited on the primary (a standby cannot take writes).
    async with app.state.session_factory() as session:
        audited = await session.scalar(
            select(func.count()).select_from(AuditLog).filter_by(action="analytics.query")
        )
    assert audited is not None
    assert audited >= 3
