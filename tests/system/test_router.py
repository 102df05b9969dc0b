from __future__ import annotations

from fastapi import FastAPI
from httpx import AsyncClient

from homepot.auth.models import Role
from tests.helpers import auth_headers, flush


async def test_health_reports_database_and_recorder_counters(
    app: FastAPI, client: AsyncClient
) -> None:
    headers = await auth_headers(app, client, Role.admin)
    await client.get("/api/v1/users/me", headers=headers)
    await flush(app)
    health = (await client.get("/api/v1/health", headers=headers)).json()
    assert health["status"] == "ok"
    assert health["database"] == "ok"
    recorder = health["recorder"]
    for key in ("queued", "written", "retried", "spilled", "dropped", "last_flush_at"):
        assert key in recorder
    assert recorder["written"] >= 2  # the login and the /users/me request
    assert recorder["written_by_table"]["api_request_logs"] >= 2


async def test_metrics_expose_recorder_and_request_latency(
    app: FastAPI, client: AsyncClient
) -> None:
    headers = await auth_headers(app, client, Role.viewer)
    await client.get("/api/v1/users/me", headers=headers)
    await flush(app)
    text = (await client.get("/metrics")).text
    assert "homepot_recorder_written_total" in text
    assert "homepot_recorder_dropped_total 0.0" in text
    assert 'homepot_recorder_written_by_table_total{table="api_request_logs"}' in text
    assert 'route="/api/v1/users/me"' in text
