"""Faults over MQTT: nothing a device published is lost, and no job runs twice.

- the database goes away during ingest (a TCP proxy in front of PostgreSQL, cut by the test);
- the server process is killed with SIGKILL during ingest and started again;
- the broker restarts while jobs are being pushed.

Each test runs a Mosquitto of its own (tests/fleet/brokers.py) and never touches the shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from homepot.agent.agent import Agent, AgentConfig, TransactionCounters
from homepot.agent.client import DeviceClient
from homepot.agent.mqtt import DeviceMqttLink
from homepot.analytics.models import DeviceMetrics, ErrorLog
from homepot.auth.models import Role
from homepot.config import Settings
from homepot.db import create_engine, create_session_factory
from homepot.device.models import HealthCheck
from homepot.job.models import ExecutionStatus, JobExecution
from homepot.main import create_app
from homepot.protocol.messages import Heartbeat, JobCommand
from homepot.protocol.mqtt import SignedMessage, device_secret
from tests.conftest import TEST_SECRET
from tests.fleet.brokers import HOST, Broker, open_broker
from tests.fleet.tcp_proxy import TcpProxy
from tests.fleet.test_mqtt import _batch, _device_with_key, _eventually, mqtt_fleet
from tests.helpers import auth_headers, create_bootstrap_key, create_site, db_rows, flush
from tests.ports import free_port

__all__ = ["open_broker"]  # fixture


async def _samples(app: FastAPI, device_id: str) -> int:
    async with app.state.session_factory() as session:
        statement = select(func.count()).select_from(DeviceMetrics).filter_by(device_id=device_id)
        return int(await session.scalar(statement) or 0)


# -- the database goes away ------------------------------------------------------------------


@pytest.fixture
async def proxied(settings: Settings, backend: str) -> AsyncIterator[tuple[Settings, TcpProxy]]:
    """The settings with PostgreSQL reached through a proxy the test can cut."""
    if backend != "postgresql":
        pytest.skip("the outage is a TCP proxy in front of PostgreSQL")
    url = make_url(settings.database_url)
    proxy = TcpProxy(url.host or HOST, url.port or 5432)
    await proxy.start()
    through = url.set(port=proxy.port).render_as_string(hide_password=False)
    yield settings.model_copy(update={"database_url": through}), proxy
    await proxy.stop()


async def test_a_database_outage_during_mqtt_ingest_loses_nothing(
    proxied: tuple[Settings, TcpProxy], open_broker: Broker
) -> None:
    settings, proxy = proxied
    application = create_app(settings.model_copy(update={"fleet": mqtt_fleet(open_broker.url)}))
    async with LifespanManager(application):
        bridge = application.state.mqtt_bridge
        known = [await _device_with_key(application) for _ in range(2)]
        # A device the bridge has never heard from: its messages cannot be checked during
        # the outage, so they are spooled as received and checked on replay.
        newcomer = await _device_with_key(application)
        devices = [*known, newcomer]
        links = {
            device_id: await contextlib.AsyncExitStack().enter_async_context(
                DeviceMqttLink(HOST, open_broker.port, device_id, api_key)
            )
            for device_id, api_key in devices
        }
        expected = {device_id: 0 for device_id, _ in devices}

        async def send(device_ids: list[str], batches: int) -> None:
            for _ in range(batches):
                for device_id in device_ids:
                    await links[device_id].publish_telemetry(_batch(samples=5))
                    expected[device_id] += 5
                    # Numbered, to see the order they are stored in.
                    uptime = expected[device_id]
                    await links[device_id].publish_heartbeat(Heartbeat(uptime_seconds=uptime))

        async def all_stored() -> bool:
            await flush(application)
            counts = {d: await _samples(application, d) for d in expected}
            return counts == expected

        known_ids = [device_id for device_id, _ in known]
        await send(known_ids, 5)
        await _eventually(all_stored, within=30)

        proxy.cut_connections()
        spooled_before = bridge.stats["spooled"]
        await send([*known_ids, newcomer[0]], 10)
        # Someone signing in a known device's name with a key of their own, during the outage.
        forged_topic = f"homepot/v1/devices/{known_ids[0]}/telemetry"
        forged = SignedMessage.of(device_secret("hpd_" + "x" * 43), forged_topic, _batch())
        async with aiomqtt.Client(HOST, open_broker.port) as raw:
            await raw.publish(forged_topic, forged.model_dump_json(), qos=1)

        async def everything_spooled() -> bool:
            return bridge.stats["spooled"] - spooled_before >= 3 * 10 * 2 + 1

        await _eventually(everything_spooled, within=60)
        assert bridge.spool.has_backlog()

        proxy.restore()
        await send([*known_ids, newcomer[0]], 5)
        await _eventually(all_stored, within=90)
        assert not bridge.spool.has_backlog()
        for link in links.values():
            await link.__aexit__(None, None, None)
        # Stored once: a second look after everything settled finds no more.
        await asyncio.sleep(1)
        assert await all_stored()
        for device_id in expected:
            heartbeats = await db_rows(application, HealthCheck, device_id=device_id)
            # Every heartbeat once, in the order the device sent them, spool or not.
            stored_order = [
                row.details["uptime_seconds"] for row in sorted(heartbeats, key=lambda row: row.id)
            ]
            assert stored_order == sorted(stored_order)
            assert len(stored_order) == len(set(stored_order)) == expected[device_id] // 5
        await flush(application)
        [refused] = await db_rows(application, ErrorLog, error_code="MQTT_AUTH_REJECTED")
        assert refused.device_id == known_ids[0]
        assert await db_rows(application, ErrorLog, error_code="MQTT_HANDLER_FAILED") == []


# -- the server is killed --------------------------------------------------------------------


class ServerProcess:
    """``uvicorn homepot.main:create_app`` in a process of its own, to be killed."""

    def __init__(self, settings: Settings, broker: Broker, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "server.log"
        self.env = {
            **os.environ,
            "HOMEPOT_DATABASE_URL": settings.database_url,
            "HOMEPOT_AUTH__SECRET_KEY": TEST_SECRET,
            "HOMEPOT_ANALYTICS__SPOOL_DIR": str(workdir / "spool"),
            "HOMEPOT_FLEET__MQTT_URL": broker.url,
            "HOMEPOT_FLEET__MQTT_SESSION_EXPIRY_SECONDS": "600",
            "PYTHONPATH": os.pathsep.join(sys.path),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "homepot.main:create_app",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    async def wait_until_up(self) -> None:
        async def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"the server exited:\n{self.log.read_text()[-3000:]}")
            try:
                async with httpx.AsyncClient() as http:
                    answer = await http.get(f"http://{HOST}:{self.port}/api/v1/health", timeout=1)
                return answer.status_code == 200
            except httpx.TransportError:
                return False

        await _eventually(healthy, within=60)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


async def test_a_server_killed_during_mqtt_ingest_loses_nothing(
    settings: Settings, open_broker: Broker, tmp_path: Path
) -> None:
    engine = create_engine(settings.database_url)
    factory = create_session_factory(engine)
    application = create_app(settings)  # only to make the devices, with its session factory
    server = ServerProcess(settings, open_broker, tmp_path)
    try:
        async with LifespanManager(application):
            devices = [await _device_with_key(application) for _ in range(3)]
        server.start()
        await server.wait_until_up()
        batches, samples = 40, 10
        total = len(devices) * batches * samples

        async def stored() -> int:
            async with factory() as session:
                ids = [device_id for device_id, _ in devices]
                statement = select(func.count()).select_from(DeviceMetrics)
                return int(
                    await session.scalar(statement.where(DeviceMetrics.device_id.in_(ids))) or 0
                )

        async def heartbeats() -> int:
            async with factory() as session:
                ids = [device_id for device_id, _ in devices]
                statement = select(func.count()).select_from(HealthCheck)
                return int(
                    await session.scalar(statement.where(HealthCheck.device_id.in_(ids))) or 0
                )

        async def publish(device_id: str, api_key: str, killed: asyncio.Event) -> None:
            async with DeviceMqttLink(HOST, open_broker.port, device_id, api_key) as link:
                for number in range(batches):
                    await link.publish_telemetry(_batch(samples=samples))
                    await link.publish_heartbeat(Heartbeat(status="ok", uptime_seconds=number))
                    if number == batches // 3:
                        await killed.wait()  # the rest arrive while the server is down

        killed = asyncio.Event()
        senders = [
            asyncio.create_task(publish(device_id, key, killed)) for device_id, key in devices
        ]

        async def some_stored() -> bool:
            return await stored() > 0

        await _eventually(some_stored, within=60)
        server.kill()
        killed.set()
        await asyncio.gather(*senders)
        assert await stored() < total
        server.start()
        await server.wait_until_up()

        async def all_stored() -> bool:
            return await stored() >= total

        await _eventually(all_stored, within=120)
        await asyncio.sleep(1)
        assert await stored() == total
        # Every heartbeat once: those the killed server stored but had not acknowledged came
        # again (QoS 1) and were recognised by their message id.
        assert await heartbeats() == len(devices) * batches
        server.stop()
        async with factory() as session:
            codes = set(await session.scalars(select(ErrorLog.error_code)))
        # The kill left a trace.
        assert "MQTT_BRIDGE_UNCLEAN_STOP" in codes
    finally:
        server.stop()
        await engine.dispose()


# -- the broker restarts ---------------------------------------------------------------------


class _Sales:
    def collect(self, moment: Any, interval: Any) -> TransactionCounters:
        return TransactionCounters(1, 10.0, 0.0, 1, 0)


async def test_a_broker_restart_during_job_pushes_loses_no_job_and_runs_none_twice(
    settings: Settings, open_broker: Broker, tmp_path: Path
) -> None:
    fleet = mqtt_fleet(
        open_broker.url,
        orchestrator_interval_seconds=0.1,
        ack_timeout_seconds=2,
        retry_backoff_seconds=0,
    )
    application = create_app(settings.model_copy(update={"fleet": fleet}))
    async with LifespanManager(application):
        transport = ASGITransport(app=application, client=("198.51.100.41", 40000))
        async with AsyncClient(transport=transport, base_url="http://testserver") as http:
            site_id = await create_site(application)
            device_id = f"pos-{uuid.uuid4().hex[:10]}"
            runs: list[int] = []

            async def restart(command: JobCommand) -> dict[str, Any]:
                runs.append(command.execution_id)
                return {"restarted": True}

            agent = Agent(
                AgentConfig(
                    server_url="http://testserver",
                    site_id=site_id,
                    device_id=device_id,
                    bootstrap_key=await create_bootstrap_key(application, site_id),
                    state_dir=tmp_path / "agent",
                    interval_seconds=0.2,
                ),
                DeviceClient(http),
                source=_Sales(),
                handlers={"restart": restart},
            )
            stop = asyncio.Event()
            running = asyncio.create_task(agent.run(stop))
            headers = await auth_headers(application, http, Role.operator)

            async def registered() -> bool:
                return agent.state.api_key is not None

            await _eventually(registered)
            created = 0

            async def create_jobs(count: int) -> None:
                nonlocal created
                for _ in range(count):
                    answer = await http.post(
                        "/api/v1/jobs",
                        headers=headers,
                        json={
                            "job_type": "restart",
                            "target_type": "device",
                            "target_id": device_id,
                        },
                    )
                    assert answer.status_code in (200, 201), answer.text
                    created += 1
                    await asyncio.sleep(0.05)

            async def executions_finished() -> list[Any]:
                rows = await db_rows(application, JobExecution, device_id=device_id)
                done = [row for row in rows if row.status is ExecutionStatus.success]
                return rows if len(rows) == created and len(done) == created else []

            async def one_job_pushed() -> bool:
                # The agent's MQTT link comes up some time after registering: until it has,
                # jobs go by polling. One job at a time, until one went by push.
                await create_jobs(1)
                finished = await _eventually(executions_finished, within=30)
                return any(row.delivery == "push" for row in finished)

            await _eventually(one_job_pushed, within=60)
            await create_jobs(5)
            open_broker.stop()
            await create_jobs(5)
            open_broker.start()
            await create_jobs(5)
            executions = await _eventually(executions_finished, within=120)
            stop.set()
            await running
        assert sorted(runs) == sorted(row.id for row in executions)
        assert len(runs) == len(set(runs)) == created
        # Both ways were taken: pushed while the broker was up, polled while it was not.
        assert {row.delivery for row in executions} == {"push", "poll"}


async def test_an_unwritable_spool_during_an_outage_keeps_messages_with_the_broker(
    proxied: tuple[Settings, TcpProxy], open_broker: Broker
) -> None:
    """Neither the database nor the spool takes the messages: they are not acknowledged, the
    failure is reported, the server holds no more than its bound (the broker keeps the rest),
    and they are stored once the database is back."""
    settings, proxy = proxied
    fleet = mqtt_fleet(open_broker.url, mqtt_max_unacknowledged=10)
    application = create_app(settings.model_copy(update={"fleet": fleet}))
    async with LifespanManager(application):
        bridge = application.state.mqtt_bridge
        device_id, api_key = await _device_with_key(application)
        # Where the spool would go is a file: every spool write fails.
        shutil.rmtree(bridge.spool.directory, ignore_errors=True)
        bridge.spool.directory.parent.mkdir(parents=True, exist_ok=True)
        bridge.spool.directory.write_text("not a directory")
        proxy.cut_connections()
        async with DeviceMqttLink(HOST, open_broker.port, device_id, api_key) as link:
            for _ in range(30):
                await link.publish_telemetry(_batch(samples=5))

        async def spool_failed_on_a_full_window() -> bool:
            return bridge.stats["spool_failures"] > 1 and bridge.stats["received"] >= 10

        await _eventually(spool_failed_on_a_full_window, within=60)
        await asyncio.sleep(0.5)  # room for the broker to overstep its window, if it would
        reported = bridge.snapshot()
        assert reported["received"] == 10  # the rest wait with the broker
        assert reported["spooled"] == 0
        assert reported["acknowledged"] == 0
        proxy.restore()

        async def all_stored() -> bool:
            await flush(application)
            return await _samples(application, device_id) == 150

        await _eventually(all_stored, within=90)
        await flush(application)
        failures = await db_rows(application, ErrorLog, error_code="MQTT_SPOOL_FAILED")
        assert failures
        assert {row.severity for row in failures} == {"critical"}
