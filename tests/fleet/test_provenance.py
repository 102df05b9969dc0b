"""A terminal that registers as simulated never passes for real: every row about it says so.

The terminal here speaks plain HTTP with no simulator User-Agent, so it is its registration
alone that marks it. A terminal registered without the flag produces ``device`` rows.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from homepot.auth.models import Role
from homepot.device.models import Device
from homepot.models import ANALYTICS_MODELS
from tests.helpers import auth_headers, create_registered_device, db_rows, flush, rows

AGENT = "/api/v1/agent"
ANALYTICS = "/api/v1/analytics"


def sample() -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(),
        "collection_interval_seconds": 30,
        "cpu_percent": 42.5,
        "memory_percent": 61.0,
    }


async def live_a_little(
    client: AsyncClient, device_id: str, headers: dict[str, str], operator: dict[str, str]
) -> None:
    """Heartbeat, telemetry, an error report, a config change and a job run to its end."""
    assert (await client.post(f"{AGENT}/heartbeat", json={}, headers=headers)).status_code == 200
    sent = await client.post(f"{AGENT}/telemetry", json={"samples": [sample()]}, headers=headers)
    assert sent.status_code == 202, sent.text
    report = {
        "severity": "critical",
        "error_code": "EXT_SERVICE_TIMEOUT",
        "message": "Payment gateway timeout",
    }
    assert (await client.post(f"{AGENT}/errors", json=report, headers=headers)).status_code == 202
    patched = await client.patch(
        f"/api/v1/devices/{device_id}",
        json={"config": {"receipt_footer": "Hello"}},
        headers=operator,
    )
    assert patched.status_code == 200, patched.text
    created = await client.post(
        "/api/v1/jobs",
        json={"job_type": "restart", "target_type": "device", "target_id": device_id},
        headers=operator,
    )
    assert created.status_code == 201, created.text
    (command,) = (await client.get(f"{AGENT}/jobs", headers=headers)).json()
    result = {"execution_id": command["execution_id"], "status": "success"}
    answered = await client.post(
        f"{AGENT}/jobs/{command['execution_id']}/result", json=result, headers=headers
    )
    assert answered.status_code == 200, answered.text


async def sources_about(app: FastAPI, device_id: str) -> dict[str, set[str]]:
    """The sources of the rows about ``device_id``, by table (tables with none left out)."""
    await flush(app)
    found: dict[str, set[str]] = {}
    for model in ANALYTICS_MODELS:
        column = "entity_id" if hasattr(model, "entity_id") else "device_id"
        if not hasattr(model, column):
            continue
        sources = {row.source for row in await db_rows(app, model, **{column: device_id})}
        if sources:
            found[model.__tablename__] = sources
    return found


ABOUT_A_DEVICE = {
    "device_state_history",
    "device_metrics",
    "error_logs",
    "configuration_history",
    "job_outcomes",
}


async def test_a_simulated_registration_marks_everything_the_terminal_produces(
    app: FastAPI, client: AsyncClient
) -> None:
    operator = await auth_headers(app, client, Role.operator)
    device_id, headers = await create_registered_device(app, client, simulated=True)

    await live_a_little(client, device_id, headers, operator)

    (device,) = await db_rows(app, Device, device_id=device_id)
    assert device.simulated is True
    read = await client.get(f"/api/v1/devices/{device_id}", headers=operator)
    assert read.json()["simulated"] is True
    assert await sources_about(app, device_id) == dict.fromkeys(ABOUT_A_DEVICE, {"simulated"})


async def test_a_real_terminal_produces_device_rows(app: FastAPI, client: AsyncClient) -> None:
    operator = await auth_headers(app, client, Role.operator)
    device_id, headers = await create_registered_device(app, client)

    await live_a_little(client, device_id, headers, operator)

    (device,) = await db_rows(app, Device, device_id=device_id)
    assert device.simulated is False
    assert await sources_about(app, device_id) == dict.fromkeys(ABOUT_A_DEVICE, {"device"})


async def test_the_analytics_api_tells_the_two_apart(app: FastAPI, client: AsyncClient) -> None:
    operator = await auth_headers(app, client, Role.operator)
    admin = await auth_headers(app, client, Role.admin)
    simulated_id, simulated_headers = await create_registered_device(app, client, simulated=True)
    real_id, real_headers = await create_registered_device(app, client)
    for device_id, headers in ((simulated_id, simulated_headers), (real_id, real_headers)):
        await live_a_little(client, device_id, headers, operator)
    await flush(app)

    for path in ("device-metrics", "device-states", "jobs", "errors"):
        both = rows(await client.get(f"{ANALYTICS}/{path}", headers=admin))
        by_device = {item["device_id"]: item["source"] for item in both}
        assert by_device == {simulated_id: "simulated", real_id: "device"}, path
        only_real = rows(
            await client.get(f"{ANALYTICS}/{path}", params={"source": "device"}, headers=admin)
        )
        assert {item["device_id"] for item in only_real} == {real_id}, path
        only_simulated = rows(
            await client.get(f"{ANALYTICS}/{path}", params={"source": "simulated"}, headers=admin)
        )
        assert {item["device_id"] for item in only_simulated} == {simulated_id}, path


async def test_registering_again_can_change_what_a_terminal_is_and_it_is_audited(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, headers = await create_registered_device(app, client, simulated=True)
    (device,) = await db_rows(app, Device, device_id=device_id)

    # The agent always sends the flag; a terminal that says it is real from now on is (it
    # proves it is the same terminal with its current key).
    await create_registered_device(
        app,
        client,
        site_id=device.site_id,
        device_id=device_id,
        simulated=False,
        current_api_key=headers["Authorization"].removeprefix("Bearer "),
    )

    (device,) = await db_rows(app, Device, device_id=device_id)
    assert device.simulated is False
    admin = await auth_headers(app, client, Role.admin)
    audit = rows(
        await client.get("/api/v1/audit-logs", params={"action": "device.rekey"}, headers=admin)
    )
    assert [entry["details"]["simulated"] for entry in audit] == [{"old": True, "new": False}]
