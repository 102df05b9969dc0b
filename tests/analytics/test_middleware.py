"""What the request log records for a user, and what it must never record."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, HTTPException
from httpx import ASGITransport, AsyncClient
from pydantic import BaseModel
from sqlalchemy import select

from homepot.analytics.models import APIRequestLog, ErrorLog, UserActivity
from homepot.auth.models import Role
from homepot.config import Settings
from homepot.main import create_app
from homepot.models import ALL_MODELS
from tests.helpers import auth_headers, create_user, flush, login


class Echo(BaseModel):
    name: str
    count: int


def add_test_routes(app: FastAPI) -> None:
    @app.get("/api/v1/test/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, Any]:
        if item_id == 0:
            raise HTTPException(404, f"item {item_id} does not exist")
        return {"item_id": item_id, "padding": "x" * 500}

    @app.post("/api/v1/test/echo")
    async def echo(body: Echo) -> Echo:
        return body

    @app.get("/api/v1/test/boom")
    async def boom() -> None:
        raise RuntimeError("the flux capacitor melted; password=hunter2-canary")


async def request_logs(app: FastAPI) -> list[APIRequestLog]:
    await flush(app)
    async with app.state.session_factory() as session:
        return list(await session.scalars(select(APIRequestLog).order_by(APIRequestLog.id)))


async def error_logs(app: FastAPI) -> list[ErrorLog]:
    await flush(app)
    async with app.state.session_factory() as session:
        return list(await session.scalars(select(ErrorLog).order_by(ErrorLog.id)))


async def test_records_route_sizes_user_and_client(app: FastAPI, client: AsyncClient) -> None:
    add_test_routes(app)
    user = await create_user(app, role=Role.viewer)
    headers = await login(client, user["email"], user["password"])
    response = await client.get(
        "/api/v1/users/me", headers={**headers, "User-Agent": "pytest-agent/1.0"}
    )
    item = await client.get("/api/v1/test/items/42")
    body = json.dumps({"name": "widget", "count": 3}).encode()
    echoed = await client.post(
        "/api/v1/test/echo", content=body, headers={"Content-Type": "application/json"}
    )

    logs = await request_logs(app)
    by_endpoint = {log.endpoint: log for log in logs}
    me = by_endpoint["/api/v1/users/me"]
    assert me.route == "/api/v1/users/me"
    assert me.method == "GET"
    assert me.status_code == 200
    assert me.user_id == user["id"]
    assert me.ip_address == "203.0.113.7"
    assert me.user_agent == "pytest-agent/1.0"
    assert me.response_size_bytes == len(response.content)
    assert me.request_id == response.headers["x-request-id"]
    assert me.response_time_ms > 0
    assert me.timestamp.tzinfo is not None

    by_id = by_endpoint["/api/v1/test/items/42"]
    assert by_id.route == "/api/v1/test/items/{item_id}"
    assert by_id.response_size_bytes == len(item.content) > 500
    assert by_id.user_id is None

    post = by_endpoint["/api/v1/test/echo"]
    assert post.request_size_bytes == len(body)
    assert post.response_size_bytes == len(echoed.content)

    login_log = by_endpoint["/api/v1/auth/token"]
    assert login_log.method == "POST"
    assert login_log.user_id == user["id"]
    assert login_log.request_size_bytes > 0


async def test_errors_carry_their_detail(app: FastAPI, client: AsyncClient) -> None:
    add_test_routes(app)
    assert (await client.get("/api/v1/test/items/0")).status_code == 404
    assert (await client.post("/api/v1/test/echo", json={"name": "x"})).status_code == 422
    assert (await client.get("/api/v1/no/such/path")).status_code == 404
    assert (await client.get("/api/v1/users/me")).status_code == 401

    logs = {log.endpoint: log for log in await request_logs(app)}
    assert logs["/api/v1/test/items/0"].error_message == "item 0 does not exist"
    assert logs["/api/v1/test/echo"].status_code == 422
    assert "body.count" in (logs["/api/v1/test/echo"].error_message or "")
    assert logs["/api/v1/no/such/path"].route is None
    assert logs["/api/v1/no/such/path"].error_message == "Not Found"
    assert "not authenticated" in (logs["/api/v1/users/me"].error_message or "")


async def test_unhandled_exception_is_a_clean_500_logged_in_both_tables(
    app: FastAPI, client: AsyncClient
) -> None:
    add_test_routes(app)
    response = await client.get("/api/v1/test/boom")
    assert response.status_code == 500
    payload = response.json()
    assert payload["request_id"] == response.headers["x-request-id"]
    assert "flux" not in response.text  # no internals leak to the client

    logs = [log for log in await request_logs(app) if log.endpoint == "/api/v1/test/boom"]
    assert len(logs) == 1
    assert logs[0].status_code == 500
    assert logs[0].route == "/api/v1/test/boom"
    assert logs[0].error_message is not None
    assert logs[0].error_message.startswith("RuntimeError: the flux capacitor melted")
    assert logs[0].response_size_bytes == len(response.content)

    errors = await error_logs(app)
    assert len(errors) == 1
    error = errors[0]
    assert (error.category, error.severity) == ("api", "error")
    assert error.error_code == "API_UNHANDLED_EXCEPTION"
    assert error.endpoint == "/api/v1/test/boom"
    assert error.stack_trace is not None
    assert "in boom" in error.stack_trace
    assert error.context is not None
    assert error.context["request_id"] == payload["request_id"]
    assert "hunter2-canary" not in (error.error_message + error.stack_trace)
    assert "hunter2-canary" not in (logs[0].error_message or "")


async def test_health_metrics_and_docs_are_not_logged(app: FastAPI, client: AsyncClient) -> None:
    for path in ("/api/v1/health", "/metrics", "/openapi.json", "/docs"):
        assert (await client.get(path)).status_code == 200
    assert await request_logs(app) == []


@pytest.fixture
async def proxied_app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings.model_copy(update={"trusted_proxies": ["203.0.113.0/24"]}))
    async with LifespanManager(application):
        yield application


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    app: FastAPI, client: AsyncClient, proxied_app: FastAPI
) -> None:
    spoofed = {"X-Forwarded-For": "198.51.100.9"}
    await client.get("/api/v1/users/me", headers=spoofed)
    assert [log.ip_address for log in await request_logs(app)] == ["203.0.113.7"]

    transport = ASGITransport(app=proxied_app, client=("203.0.113.7", 50000))
    async with AsyncClient(transport=transport, base_url="http://testserver") as via_proxy:
        await via_proxy.get(
            "/api/v1/users/me", headers={"X-Forwarded-For": "10.9.9.9, 198.51.100.9"}
        )
    # Both apps share one database: the first row is the untrusted request above.
    assert [log.ip_address for log in await request_logs(proxied_app)] == [
        "203.0.113.7",
        "198.51.100.9",
    ]


CANARY = "canary-5f3a9c"
CARD = "4111 1111 1111 1111"


async def test_canary_secrets_never_reach_any_table(app: FastAPI, client: AsyncClient) -> None:
    add_test_routes(app)
    headers = await auth_headers(app, client, Role.admin)
    # In a query string, a JSON body, headers and a cookie, on requests that succeed and fail.
    await client.get(
        f"/api/v1/users/me?token={CANARY}&api_key={CANARY}&note=card+{CARD.replace(' ', '+')}",
        headers={**headers, "X-Api-Key": CANARY, "Cookie": f"session={CANARY}"},
    )
    await client.post(
        "/api/v1/users",
        json={"email": "not-an-email", "password": CANARY, "role": "viewer"},
        headers=headers,
    )
    await client.post(
        "/api/v1/auth/token", data={"username": "who@example.com", "password": CANARY}
    )
    await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {CANARY}"})
    await client.get(f"/api/v1/test/items/x?secret={CANARY}")  # a 422 that echoes nothing
    await flush(app)

    dump = await dump_all_tables(app)
    assert CANARY not in dump
    assert "4111111111111111" not in dump.replace(" ", "").replace("+", "")
    assert "[REDACTED]" in dump  # the keys were kept, their values were not


async def dump_all_tables(app: FastAPI) -> str:
    parts = []
    async with app.state.session_factory() as session:
        for model in ALL_MODELS:
            for row in (await session.execute(select(model.__table__))).all():
                parts.append(repr(tuple(row)))
    return "\n".join(parts)


async def test_the_simulators_requests_and_what_they_cause_are_marked_simulated(
    app: FastAPI, client: AsyncClient
) -> None:
    add_test_routes(app)
    user = await create_user(app, role=Role.admin)
    headers = await login(client, user["email"], user["password"])
    as_simulator = headers | {"User-Agent": "homepot-sim/1"}
    as_browser = headers | {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) homepot-sim/1"}
    activity = {"events": [{"activity_type": "page_view", "page_url": "/devices"}]}
    for sender in (as_simulator, as_browser):
        assert (await client.get("/api/v1/test/items/7", headers=sender)).status_code == 200
        posted = await client.post(
            "/api/v1/analytics/user-activities", json=activity, headers=sender
        )
        assert posted.status_code == 202, posted.text
    assert (await client.get("/api/v1/test/boom", headers=as_simulator)).status_code == 500

    by_agent = {
        (log.route, log.user_agent): log.source
        for log in await request_logs(app)
        if log.route and log.route.startswith("/api/v1/test/items")
    }
    assert by_agent == {
        ("/api/v1/test/items/{item_id}", "homepot-sim/1"): "simulated",
        ("/api/v1/test/items/{item_id}", as_browser["User-Agent"]): "device",
    }
    async with app.state.session_factory() as session:
        activities = list(await session.scalars(select(UserActivity).order_by(UserActivity.id)))
    assert [a.source for a in activities] == ["simulated", "device"]
    (unhandled,) = [e for e in await error_logs(app) if e.error_code == "API_UNHANDLED_EXCEPTION"]
    assert unhandled.source == "simulated"
