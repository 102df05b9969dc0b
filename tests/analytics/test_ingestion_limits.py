"""What the dashboard's ingestion endpoints refuse, and the per-user analytics opt-out."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.analytics.models import ErrorLog, UserActivity
from homepot.analytics.schemas import MAX_EVENT_BYTES
from homepot.auth.models import Role
from homepot.config import LimitsSettings
from tests.helpers import auth_headers, create_user, db_rows, flush, login

API = "/api/v1/analytics"
PREFERENCES = "/api/v1/users/me/preferences"


def click(**fields: Any) -> dict[str, Any]:
    return {"activity_type": "click", "session_id": "sess-limits", "element_id": "b"} | fields


MAX_INGEST_BODY_BYTES = LimitsSettings().max_ingest_body_bytes


async def post_events(
    client: AsyncClient, headers: dict[str, str], events: list[dict[str, Any]]
) -> Any:
    return await client.post(f"{API}/user-activities", json={"events": events}, headers=headers)


async def test_an_oversized_event_is_422_naming_its_index(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    # Each field within its own limit (2048 characters of URL, 4096 bytes of extra_data),
    # the event as a whole over MAX_EVENT_BYTES of UTF-8 JSON.
    big = click(page_url="/" + "é" * 2040, search_query="q" * 500, extra_data={"n": "x" * 4000})
    assert len(json.dumps(big, ensure_ascii=False).encode()) > MAX_EVENT_BYTES
    response = await post_events(client, viewer, [click(), big])
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "events", 1]
    assert f"at most {MAX_EVENT_BYTES} are accepted per event" in error["msg"]
    await flush(app)
    assert await db_rows(app, UserActivity, session_id="sess-limits") == []


async def test_a_body_over_the_limit_is_413_before_validation(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    padding = {"note": "x" * 3500}
    events = [click(extra_data=padding) for _ in range(80)]
    body = json.dumps({"events": events})
    assert len(body) > MAX_INGEST_BODY_BYTES
    response = await client.post(
        f"{API}/user-activities",
        content=body,
        headers=viewer | {"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert f"at most {MAX_INGEST_BODY_BYTES} are accepted" in response.json()["detail"]

    report = {"message": "boom", "stack": "s" * 50_000, "context": {"n": "c" * 4000}}
    huge = json.dumps(report | {"page_url": "/x"}) + " " * MAX_INGEST_BODY_BYTES
    response = await client.post(
        f"{API}/errors", content=huge, headers=viewer | {"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    await flush(app)
    assert await db_rows(app, UserActivity, session_id="sess-limits") == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"activity_type": "download"}, "use one of: page_view, click, search, form_submit"),
        ({"session_id": "sess id with spaces"}, "should match pattern"),
        ({"session_id": "sess/../1"}, "should match pattern"),
        ({"extra_data": {"value": "typed text"}}, "refused key(s): extra_data.value"),
        ({"extra_data": {"form": {"Password": "hunter2"}}}, "extra_data.form.Password"),
        ({"extra_data": {"fields": [{"values": ["a"]}]}}, "extra_data.fields[0].values"),
    ],
)
async def test_events_outside_what_the_dashboard_tracks_are_refused(
    app: FastAPI, client: AsyncClient, change: dict[str, Any], message: str
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    response = await post_events(client, viewer, [click(), click(**change)])
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][:3] == ["body", "events", 1]
    assert message in error["msg"]
    await flush(app)
    assert await db_rows(app, UserActivity, session_id="sess-limits") == []


async def test_the_four_tracked_kinds_and_a_uuid_session_are_accepted(
    app: FastAPI, client: AsyncClient
) -> None:
    user = await create_user(app, role=Role.viewer)
    viewer = await login(client, user["email"], user["password"])
    session_id = str(uuid.uuid4())
    events = [
        {"activity_type": kind, "session_id": session_id, "extra_data": {"viewport": "800x600"}}
        for kind in ("page_view", "click", "search", "form_submit")
    ]
    response = await post_events(client, viewer, events)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 4}
    await flush(app)
    stored = await db_rows(app, UserActivity, session_id=session_id)
    assert sorted(row.activity_type for row in stored) == [
        "click",
        "form_submit",
        "page_view",
        "search",
    ]
    assert {row.user_id for row in stored} == {user["id"]}


async def test_a_client_error_context_cannot_carry_field_values(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    report = {"message": "boom", "context": {"input": {"value": "typed"}}}
    response = await client.post(f"{API}/errors", json=report, headers=viewer)
    assert response.status_code == 422
    assert "context.input.value" in response.text


async def test_preferences_default_to_tracking_and_can_be_changed(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    assert (await client.get(PREFERENCES)).status_code == 401
    response = await client.get(PREFERENCES, headers=viewer)
    assert response.status_code == 200
    assert response.json() == {"analytics_opt_out": False}

    response = await client.put(PREFERENCES, json={"analytics_opt_out": True}, headers=viewer)
    assert response.status_code == 200
    assert response.json() == {"analytics_opt_out": True}
    assert (await client.get(PREFERENCES, headers=viewer)).json() == {"analytics_opt_out": True}

    for bad in ({}, {"analytics_opt_out": "perhaps"}, {"analytics_opt_out": True, "theme": "x"}):
        refused = await client.put(PREFERENCES, json=bad, headers=viewer)
        assert refused.status_code == 422, bad
    assert (await client.get(PREFERENCES, headers=viewer)).json() == {"analytics_opt_out": True}


async def test_an_opted_out_users_events_are_accepted_and_discarded(
    app: FastAPI, client: AsyncClient
) -> None:
    quiet = await create_user(app, role=Role.operator)
    quiet_headers = await login(client, quiet["email"], quiet["password"])
    tracked = await auth_headers(app, client, Role.operator)
    await client.put(PREFERENCES, json={"analytics_opt_out": True}, headers=quiet_headers)

    response = await post_events(client, quiet_headers, [click(session_id="sess-quiet")] * 3)
    assert response.status_code == 202
    assert response.json() == {"accepted": 0}
    response = await post_events(client, tracked, [click(session_id="sess-loud")])
    assert response.json() == {"accepted": 1}
    await flush(app)
    assert await db_rows(app, UserActivity, session_id="sess-quiet") == []
    assert len(await db_rows(app, UserActivity, session_id="sess-loud")) == 1

    # Opting back in records again; errors are diagnostics and are kept either way.
    await client.put(PREFERENCES, json={"analytics_opt_out": False}, headers=quiet_headers)
    response = await post_events(client, quiet_headers, [click(session_id="sess-quiet")])
    assert response.json() == {"accepted": 1}
    await client.put(PREFERENCES, json={"analytics_opt_out": True}, headers=quiet_headers)
    error = await client.post(f"{API}/errors", json={"message": "boom"}, headers=quiet_headers)
    assert error.status_code == 202
    await flush(app)
    assert len(await db_rows(app, UserActivity, session_id="sess-quiet")) == 1
    assert len(await db_rows(app, ErrorLog, user_id=quiet["id"])) == 1
