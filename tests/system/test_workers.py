"""Two server processes on one PostgreSQL database: each background singleton runs in one of
them, jobs created through either are dispatched once, and when the leading process is killed
the other takes over (homepot.kit.singleton, `homepot serve --workers N`).

The processes are real uvicorn servers on free ports with short background intervals; what
each process ran is read from its /metrics, what was done from the database.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from homepot.cli import app as cli
from homepot.config import Settings
from homepot.db import create_engine, create_session_factory
from homepot.job.models import ExecutionStatus, JobExecution
from tests.conftest import TEST_SECRET
from tests.faults.servers import AppServer, stop_all
from tests.helpers import create_device, create_user

pytestmark = pytest.mark.servers

SINGLETONS = (
    "homepot-orchestrator",
    "homepot-device-watchdog",
    "impact-evaluator",
    "homepot-retention",
    "homepot-insights",
    "homepot-risk",
)
INTERVAL = "0.2"


def _server_env(settings: Settings) -> dict[str, str]:
    return {
        "HOMEPOT_DATABASE_URL": settings.database_url,
        "HOMEPOT_AUTH__SECRET_KEY": TEST_SECRET,
        "HOMEPOT_FLEET__ORCHESTRATOR_INTERVAL_SECONDS": INTERVAL,
        "HOMEPOT_FLEET__WATCHDOG_INTERVAL_SECONDS": INTERVAL,
        "HOMEPOT_FLEET__IMPACT_EVALUATOR_INTERVAL_SECONDS": INTERVAL,
        "HOMEPOT_RETENTION__INTERVAL_SECONDS": INTERVAL,
        "HOMEPOT_INSIGHTS__INTERVAL_SECONDS": INTERVAL,
        "HOMEPOT_INSIGHTS__RISK_INTERVAL_SECONDS": INTERVAL,
        # Pushes go to the process's in-process channel; nobody acknowledges them.
        "HOMEPOT_FLEET__ACK_TIMEOUT_SECONDS": "60",
    }


def _task(samples: dict[str, float], metric: str, task: str) -> float:
    return samples.get(f'homepot_singleton_{metric}{{task="{task}"}}', 0.0)


async def _eventually(check: Any, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"not within {within} s")
        await asyncio.sleep(0.1)


async def test_two_processes_run_each_singleton_once_and_lose_no_job(
    backend: str, settings: Settings, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("several processes share PostgreSQL; SQLite is served by one process")
    engine = create_engine(settings.database_url)
    factory = create_session_factory(engine)
    stand_in = SimpleNamespace(state=SimpleNamespace(session_factory=factory))
    servers = [AppServer(_server_env(settings), tmp_path) for _ in range(2)]
    try:
        admin = await create_user(stand_in, role=Role.admin)  # type: ignore[arg-type]
        devices = [await create_device(stand_in, status="online") for _ in range(6)]  # type: ignore[arg-type]
        for server in servers:
            server.start()
        await asyncio.gather(*(server.wait_until_up() for server in servers))

        async def every_singleton_led() -> bool:
            samples = [await server.metrics() for server in servers]
            return all(sum(_task(s, "leader", task) for s in samples) == 1 for task in SINGLETONS)

        await _eventually(every_singleton_led, within=20)
        await asyncio.sleep(1)  # a few passes each

        # Each singleton: one leader, whose passes are all its passes; the other skips.
        first = [await server.metrics() for server in servers]
        leader_of: dict[str, int] = {}
        for task in SINGLETONS:
            (leader,) = [i for i, s in enumerate(first) if _task(s, "leader", task) == 1]
            follower = 1 - leader
            leader_of[task] = leader
            assert _task(first[leader], "passes_total", task) >= 1, task
            assert _task(first[follower], "passes_total", task) == 0, task
            assert _task(first[follower], "skipped_total", task) >= 1, task
        # Retention writes one audit row per run: as many rows as the leader's passes.
        async with factory() as session:
            runs = await session.scalar(
                select(func.count()).select_from(AuditLog).filter_by(action="retention.run")
            )
        second = [await server.metrics() for server in servers]
        retention = leader_of["homepot-retention"]
        counted_before = _task(first[retention], "passes_total", "homepot-retention")
        counted_after = _task(second[retention], "passes_total", "homepot-retention")
        assert counted_before - 1 <= int(runs or 0) <= counted_after

        # Jobs created through either process are dispatched once, by the orchestrator's
        # leader alone.
        orchestrator = servers[leader_of["homepot-orchestrator"]]
        survivor = servers[1 - leader_of["homepot-orchestrator"]]
        headers: dict[str, dict[str, str]] = {}
        async with httpx.AsyncClient() as http:
            for server in servers:
                answer = await http.post(
                    f"{server.url}/api/v1/auth/token",
                    data={"username": admin["email"], "password": admin["password"]},
                )
                assert answer.status_code == 200, answer.text
                headers[server.url] = {"Authorization": f"Bearer {answer.json()['access_token']}"}

            async def create_jobs(server: AppServer, targets: list[str]) -> list[str]:
                made = []
                for device_id in targets:
                    answer = await http.post(
                        f"{server.url}/api/v1/jobs",
                        json={
                            "job_type": "restart",
                            "target_type": "device",
                            "target_id": device_id,
                        },
                        headers=headers[server.url],
                    )
                    assert answer.status_code == 201, answer.text
                    made.append(answer.json()["job_id"])
                return made

            before = await create_jobs(servers[0], devices[:2]) + await create_jobs(
                servers[1], devices[2:4]
            )

            async def executions(job_ids: list[str]) -> list[JobExecution]:
                async with factory() as session:
                    found = await session.scalars(
                        select(JobExecution).where(JobExecution.job_id.in_(job_ids))
                    )
                    return list(found)

            async def all_dispatched(job_ids: list[str]) -> bool:
                found = await executions(job_ids)
                return len(found) == len(job_ids) and all(
                    e.status == ExecutionStatus.dispatched for e in found
                )

            await _eventually(lambda: all_dispatched(before), within=10)
            for execution in await executions(before):
                assert execution.attempt == 0
                assert execution.claimed_by is not None
                assert execution.claimed_by.split(":")[1] == str(orchestrator.pid)

            # The orchestrator's process dies: the other takes the lock over, and a job made
            # through it is dispatched all the same.
            orchestrator.kill()
            after = await create_jobs(survivor, devices[4:])
            await _eventually(lambda: all_dispatched(after), within=15)
            for execution in await executions(after):
                assert execution.claimed_by is not None
                assert execution.claimed_by.split(":")[1] == str(survivor.pid)
            samples = await survivor.metrics()
            assert all(_task(samples, "leader", task) == 1 for task in SINGLETONS)
            # Nothing dispatched before the kill was dispatched again.
            for execution in await executions(before):
                assert execution.claimed_by is not None
                assert execution.claimed_by.split(":")[1] == str(orchestrator.pid)
    finally:
        stop_all(servers)
        await engine.dispose()


def test_serve_refuses_several_workers_on_sqlite(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["--database-url", f"sqlite:///{tmp_path / 'one.db'}", "serve", "--workers", "2"],
    )
    assert result.exit_code != 0
    assert "--workers 2 needs PostgreSQL" in result.output
