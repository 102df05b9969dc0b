"""The terminal agent: registration kept across restarts, and its on-disk retry queue.

The agent talks to the real app through httpx; a switchable transport plays the outage.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.agent.agent import (
    Agent,
    AgentConfig,
    AgentError,
    TransactionCounters,
)
from homepot.agent.client import DeviceClient, retry_after_seconds
from homepot.agent.outbox import Outbox
from homepot.analytics.models import APIRequestLog, DeviceMetrics, DeviceStateHistory, JobOutcome
from homepot.auth.models import Role
from homepot.config import Settings
from homepot.device.models import Device, HealthCheck
from tests.helpers import auth_headers, create_site, db_rows, flush


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No orchestrator pass within a test: the agent takes its jobs from a report's answer.

    With the default 1 s interval a pass could push a new job (to the in-process channel,
    which nobody reads here) between its creation and the agent's report, and a pushed job
    is handed out by polling only once its acknowledgement is overdue (10 s): on a busy
    machine the test then saw no job at all.
    """
    fleet = settings.fleet.model_copy(update={"orchestrator_interval_seconds": 3600})
    return settings.model_copy(update={"fleet": fleet})


class SwitchableTransport(httpx.AsyncBaseTransport):
    """The app behind a cable that the test can pull; records every request that got through."""

    def __init__(self, app: FastAPI) -> None:
        self.inner = httpx.ASGITransport(app=app, client=("198.51.100.40", 40000))
        self.down = False
        self.requests: list[tuple[str, str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, body))
        return await self.inner.handle_async_request(request)

    def sent(self, path: str) -> list[Any]:
        return [body for method, url, body in self.requests if url.endswith(path)]


class FixedHost:
    def read(self) -> dict[str, float]:
        return {"cpu_percent": 12.5, "memory_percent": 48.0, "disk_percent": 61.0}


class FixedSales:
    def collect(self, moment: datetime, interval: timedelta) -> TransactionCounters:
        return TransactionCounters(7, 123.4, 0.5, 2, 1)


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


async def bootstrap_key(app: FastAPI, client: AsyncClient, site_id: str) -> str:
    headers = await auth_headers(app, client, Role.operator)
    response = await client.post(f"/api/v1/sites/{site_id}/bootstrap-key", headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["bootstrap_key"])


def make_agent(
    transport: SwitchableTransport, site_id: str, key: str | None, state_dir: Path, clock: Clock
) -> Agent:
    http = httpx.AsyncClient(transport=transport, base_url="http://testserver")
    config = AgentConfig(
        server_url="http://testserver",
        site_id=site_id,
        device_id="till-agent-01",
        bootstrap_key=key,
        state_dir=state_dir,
    )
    return Agent(config, DeviceClient(http), source=FixedSales(), host=FixedHost(), clock=clock)


@pytest.fixture
async def site_and_key(app: FastAPI, client: AsyncClient) -> tuple[str, str]:
    site_id = await create_site(app)
    return site_id, await bootstrap_key(app, client, site_id)


async def test_queue_survives_an_outage_and_drains_oldest_first(
    app: FastAPI, site_and_key: tuple[str, str], tmp_path: Path
) -> None:
    site_id, key = site_and_key
    transport = SwitchableTransport(app)
    clock = Clock(datetime.now(UTC) - timedelta(minutes=4))
    agent = make_agent(transport, site_id, key, tmp_path, clock)

    await agent.ensure_registered()
    await agent.report_once()
    assert agent.outbox.stats().pending == 0

    transport.down = True
    queued_at = []
    for _ in range(3):
        clock.now += timedelta(seconds=30)
        queued_at.append(clock.now)
        await agent.report_once()
    assert agent.outbox.stats().pending == 3

    transport.down = False
    clock.now += timedelta(seconds=30)
    await agent.report_once()

    assert agent.outbox.stats().pending == 0
    # The backlog went first, in the order it was made, in one report with the new sample
    # and the heartbeat.
    last_report = transport.sent("/agent/report")[-1]
    assert last_report["heartbeat"]["status"] == "ok"
    last_batch = last_report["samples"]
    sent_times = [datetime.fromisoformat(s["timestamp"]) for s in last_batch]
    assert sent_times == [*queued_at, clock.now]
    # A sample's latency is the previous report's round trip: none after a failed one.
    assert last_batch[0]["network_latency_ms"] >= 0  # made after the last report that went
    assert [s.get("network_latency_ms") for s in last_batch[1:]] == [None] * 3
    clock.now += timedelta(seconds=30)
    await agent.report_once()
    assert transport.sent("/agent/report")[-1]["samples"][0]["network_latency_ms"] >= 0

    await flush(app)
    stored = await db_rows(app, DeviceMetrics, device_id="till-agent-01")
    assert len(stored) == 6  # nothing lost
    assert {row.transaction_count for row in stored} == {7}
    assert {row.cpu_percent for row in stored} == {12.5}


async def test_resending_after_a_lost_answer_stores_once(
    app: FastAPI, site_and_key: tuple[str, str], tmp_path: Path
) -> None:
    site_id, key = site_and_key
    transport = SwitchableTransport(app)
    agent = make_agent(transport, site_id, key, tmp_path, Clock(datetime.now(UTC)))
    await agent.ensure_registered()
    await agent.report_once()
    # The server stored the batch but the answer never came back: the agent sends it again.
    batch = transport.sent("/agent/report")[-1]["samples"]
    await agent.outbox.aput("telemetry", batch[0])
    assert await agent.deliver()
    await flush(app)
    assert len(await db_rows(app, DeviceMetrics, device_id="till-agent-01")) == 1


async def test_a_restarted_agent_keeps_its_key_and_does_not_register_again(
    app: FastAPI, site_and_key: tuple[str, str], tmp_path: Path
) -> None:
    site_id, key = site_and_key
    transport = SwitchableTransport(app)
    first = make_agent(transport, site_id, key, tmp_path, Clock(datetime.now(UTC)))
    await first.ensure_registered()
    state = json.loads((tmp_path / "agent.json").read_text())
    assert state["api_key"].startswith("hpd_")
    assert (tmp_path / "agent.json").stat().st_mode & 0o077 == 0  # only the owner reads it
    first.outbox.close()

    # No bootstrap key this time: the stored API key is enough.
    second = make_agent(transport, site_id, None, tmp_path, Clock(datetime.now(UTC)))
    await second.ensure_registered()
    await second.report_once()
    assert len(transport.sent("/agent/register")) == 1
    assert second.outbox.stats().pending == 0


async def test_an_unregistered_agent_without_bootstrap_key_says_what_to_do(
    app: FastAPI, tmp_path: Path
) -> None:
    agent = make_agent(SwitchableTransport(app), "site-x", None, tmp_path, Clock(datetime.now(UTC)))
    with pytest.raises(AgentError, match="--bootstrap-key"):
        await agent.ensure_registered()


async def test_a_sample_the_server_refuses_is_dropped_and_counted_not_retried_forever(
    app: FastAPI, site_and_key: tuple[str, str], tmp_path: Path
) -> None:
    site_id, key = site_and_key
    transport = SwitchableTransport(app)
    clock = Clock(datetime.now(UTC))
    agent = make_agent(transport, site_id, key, tmp_path, clock)
    await agent.ensure_registered()
    good = agent.make_sample(None).model_dump(mode="json")
    too_old = {**good, "event_id": "0" * 32, "timestamp": "2020-01-01T00:00:00+00:00"}
    await agent.outbox.aput("telemetry", too_old)
    await agent.outbox.aput("telemetry", good)

    assert await agent.deliver()

    stats = agent.outbox.stats()
    assert (stats.pending, stats.rejected, stats.sent) == (0, 1, 1)
    await flush(app)
    assert len(await db_rows(app, DeviceMetrics, device_id="till-agent-01")) == 1


async def test_a_refused_sample_in_a_report_costs_only_itself(
    app: FastAPI, site_and_key: tuple[str, str], tmp_path: Path
) -> None:
    site_id, key = site_and_key
    transport = SwitchableTransport(app)
    agent = make_agent(transport, site_id, key, tmp_path, Clock(datetime.now(UTC)))
    await agent.ensure_registered()
    good = agent.make_sample(None).model_dump(mode="json")
    too_old = {**good, "event_id": "0" * 32, "timestamp": "2020-01-01T00:00:00+00:00"}
    await agent.outbox.aput("telemetry", too_old)

    await agent.report_once()

    stats = agent.outbox.stats()
    assert (stats.pending, stats.rejected, stats.sent) == (0, 1, 1)
    assert transport.sent("/agent/report")[-1].get("samples") is None  # the heartbeat alone
    await flush(app)
    assert len(await db_rows(app, DeviceMetrics, device_id="till-agent-01")) == 1
    assert len(await db_rows(app, HealthCheck, device_id="till-agent-01")) == 1


class AnsweringTransport(SwitchableTransport):
    """The app, behind a front (a proxy, a load balancer) that may answer for it."""

    def __init__(self, app: FastAPI) -> None:
        super().__init__(app)
        self.answer: httpx.Response | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.answer is not None and request.url.path.endswith(("/telemetry", "/report")):
            self.requests.append((request.method, request.url.path, None))
            return self.answer
        return await super().handle_async_request(request)


AnsweredAgent = tuple[AnsweringTransport, Clock, Agent]


@pytest.fixture
async def answered_agent(
    app: FastAPI, site_and_key: tuple[str, str], tmp_path: Path
) -> AnsweredAgent:
    """A registered agent whose telemetry the front may answer instead of the app."""
    transport = AnsweringTransport(app)
    clock = Clock(datetime.now(UTC) - timedelta(minutes=5))
    agent = make_agent(transport, *site_and_key, tmp_path, clock)
    await agent.ensure_registered()
    return transport, clock, agent


async def test_a_503_keeps_the_samples_and_nothing_is_resent_before_retry_after(
    answered_agent: AnsweredAgent,
) -> None:
    transport, clock, agent = answered_agent
    transport.answer = httpx.Response(
        503, json={"detail": "the database is starting up"}, headers={"Retry-After": "120"}
    )
    await agent.report_once()
    assert len(transport.sent("/report")) == 1
    for _ in range(3):  # the next reports queue their samples but keep quiet
        clock.now += timedelta(seconds=30)
        await agent.report_once()
    assert len(transport.sent("/report")) == 1
    stats = agent.outbox.stats()
    assert (stats.pending, stats.rejected, stats.dropped) == (4, 0, 0)


@pytest.mark.parametrize("status", [403, 404, 429, 500])
async def test_an_answer_that_does_not_name_the_sample_keeps_it(
    status: int, app: FastAPI, answered_agent: AnsweredAgent
) -> None:
    transport, clock, agent = answered_agent
    transport.answer = httpx.Response(status, json={"detail": "not here"})
    for _ in range(2):
        clock.now += timedelta(seconds=30)
        await agent.report_once()
    assert (agent.outbox.stats().pending, agent.outbox.stats().rejected) == (2, 0)

    transport.answer = None  # the front lets requests through again
    assert await agent.deliver()
    await flush(app)
    assert len(await db_rows(app, DeviceMetrics, device_id="till-agent-01")) == 2


def test_retry_after_is_read_as_seconds_or_as_a_date() -> None:
    later = datetime.now(UTC) + timedelta(seconds=90)
    dated = httpx.Response(503, headers={"Retry-After": format_datetime(later, usegmt=True)})
    assert 80 <= (retry_after_seconds(dated) or 0) <= 90
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "5"})) == 5
    assert retry_after_seconds(httpx.Response(503)) is None


async def test_a_job_in_a_reports_answer_is_run_and_its_result_reported(
    app: FastAPI, client: AsyncClient, site_and_key: tuple[str, str], tmp_path: Path
) -> None:
    site_id, key = site_and_key
    transport = SwitchableTransport(app)
    agent = make_agent(transport, site_id, key, tmp_path, Clock(datetime.now(UTC)))
    await agent.ensure_registered()
    headers = await auth_headers(app, client, Role.operator)
    created = await client.post(
        "/api/v1/jobs",
        headers=headers,
        json={
            "job_type": "config_change",
            "target_type": "device",
            "target_id": "till-agent-01",
            "payload": {"config": {"receipt_footer": "Danke!"}},
        },
    )
    assert created.status_code == 201, created.text

    await agent.report_once()
    for task in list(agent._tasks):
        await task

    assert agent.state.config["receipt_footer"] == "Danke!"
    results = transport.sent("/result")
    assert [r["status"] for r in results] == ["success"]
    await flush(app)
    outcomes = await db_rows(app, JobOutcome, device_id="till-agent-01")
    assert [(o.job_type, o.status) for o in outcomes] == [("config_change", "success")]


async def test_a_real_agent_is_a_real_device_and_its_rows_say_so(
    app: FastAPI, site_and_key: tuple[str, str], tmp_path: Path
) -> None:
    site_id, key = site_and_key
    transport = SwitchableTransport(app)
    agent = make_agent(transport, site_id, key, tmp_path, Clock(datetime.now(UTC)))

    await agent.ensure_registered()
    await agent.report_once()

    assert transport.sent("/register")[0]["simulated"] is False
    await flush(app)
    (device,) = await db_rows(app, Device, device_id="till-agent-01")
    assert device.simulated is False
    for model in (DeviceMetrics, DeviceStateHistory):
        stored = await db_rows(app, model, device_id="till-agent-01")
        assert stored
        assert {row.source for row in stored} == {"device"}
    requests = await db_rows(app, APIRequestLog, route="/api/v1/agent/report")
    assert {row.source for row in requests} == {"device"}


def test_outbox_is_bounded_drops_oldest_and_counts_it(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "q.sqlite3", max_messages=3)
    for number in range(5):
        outbox.put("telemetry", {"n": number})
    assert [m.payload["n"] for m in outbox.oldest(10)] == [2, 3, 4]
    assert outbox.stats().dropped == 2
    outbox.close()

    reopened = Outbox(tmp_path / "q.sqlite3", max_messages=3)  # durable, counters too
    assert [m.payload["n"] for m in reopened.oldest(10)] == [2, 3, 4]
    assert reopened.stats().dropped == 2
    reopened.delivered([m.id for m in reopened.oldest(2)])
    assert [m.payload["n"] for m in reopened.oldest(10)] == [4]
    assert reopened.stats().sent == 2
