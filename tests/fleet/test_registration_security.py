"""Registration and device keys fail closed: a site key never takes over a device, answers
reveal nothing, keys expire, rotate and are revoked at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.agent.mqtt import DeviceMqttLink
from homepot.analytics.models import ErrorLog
from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from homepot.config import FleetSettings, Settings
from homepot.db import utcnow
from homepot.device.models import Device, HealthCheck
from homepot.kit.keycache import add_key_cache_invalidator
from homepot.main import create_app
from homepot.protocol.messages import Heartbeat
from homepot.site.models import Site
from tests.fleet.test_mqtt import BROKER_URL, requires_broker
from tests.helpers import (
    auth_headers,
    create_bootstrap_key,
    create_device,
    create_registered_device,
    create_site,
    db_rows,
    flush,
)

REGISTER = "/api/v1/agent/register"
HEARTBEAT = "/api/v1/agent/heartbeat"


def _key_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_unknown_site_wrong_key_and_expired_key_get_one_answer(
    app: FastAPI, client: AsyncClient
) -> None:
    with_key = await create_site(app)
    await create_bootstrap_key(app, with_key)
    expired = await create_site(app)
    expired_key = await create_bootstrap_key(app, expired, hours=-1)
    without_key = await create_site(app)
    guess = "hpb_" + "z" * 40

    answers = {}
    for case, site_id, key in [
        ("unknown site", "site-that-does-not-exist", guess),
        ("wrong key", with_key, guess),
        ("expired key", expired, expired_key),
        ("no key yet", without_key, guess),
    ]:
        response = await client.post(
            REGISTER, json={"site_id": site_id, "device_id": "pos-probe", "bootstrap_key": key}
        )
        answers[case] = (response.status_code, response.json()["detail"].replace(site_id, "<s>"))

    assert len(set(answers.values())) == 1, answers
    status, message = answers["wrong key"]
    assert status == 401
    # Actionable for a legitimate installer without saying which part was wrong.
    assert "ask an operator for a fresh bootstrap key" in message
    assert "POST /api/v1/sites/<s>/bootstrap-key" in message
    assert await db_rows(app, Device) == []


async def test_a_site_key_alone_never_replaces_a_working_devices_key(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    device_id, headers = await create_registered_device(app, client, site_id=site_id)
    fresh_key = await create_bootstrap_key(app, site_id)

    takeover = await client.post(
        REGISTER, json={"site_id": site_id, "device_id": device_id, "bootstrap_key": fresh_key}
    )
    wrong_proof = await client.post(
        REGISTER,
        json={
            "site_id": site_id,
            "device_id": device_id,
            "bootstrap_key": fresh_key,
            "current_api_key": "hpd_" + "n" * 40,
        },
    )

    assert takeover.status_code == 409
    assert "current_api_key" in takeover.json()["detail"]
    assert wrong_proof.status_code == 409
    # The device's own key still works.
    assert (await client.post(HEARTBEAT, json={}, headers=headers)).status_code == 200


async def test_an_admin_issued_bootstrap_key_re_registers_existing_devices(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    device_id, old = await create_registered_device(app, client, site_id=site_id)
    operator = await auth_headers(app, client, Role.operator)
    admin = await auth_headers(app, client, Role.admin)
    url = f"/api/v1/sites/{site_id}/bootstrap-key"

    refused = await client.post(url, json={"replaces_existing_devices": True}, headers=operator)
    issued = await client.post(url, json={"replaces_existing_devices": True}, headers=admin)
    assert refused.status_code == 403
    assert issued.status_code == 201, issued.text
    assert issued.json()["replaces_existing_devices"] is True

    again = await client.post(
        REGISTER,
        json={
            "site_id": site_id,
            "device_id": device_id,
            "bootstrap_key": issued.json()["bootstrap_key"],
        },
    )

    assert again.status_code == 200, again.text
    assert (await client.post(HEARTBEAT, json={}, headers=old)).status_code == 401
    new = _bearer(again.json()["api_key"])
    assert (await client.post(HEARTBEAT, json={}, headers=new)).status_code == 200
    (rekey,) = await db_rows(app, AuditLog, resource_id=device_id, action="device.rekey")
    assert "admin" in rekey.details["authenticated_by"]


async def test_a_device_created_by_an_operator_takes_its_first_key_from_the_site_key(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    device_id = await create_device(app, site_id=site_id)
    key = await create_bootstrap_key(app, site_id)
    response = await client.post(
        REGISTER, json={"site_id": site_id, "device_id": device_id, "bootstrap_key": key}
    )
    assert response.status_code == 200, response.text


async def test_bootstrap_keys_expire_after_the_configured_lifetime(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    operator = await auth_headers(app, client, Role.operator)
    before = utcnow()
    issued = await client.post(f"/api/v1/sites/{site_id}/bootstrap-key", headers=operator)
    after = utcnow()
    assert issued.status_code == 201
    expires_at = datetime.fromisoformat(issued.json()["expires_at"])
    assert before + timedelta(hours=24) <= expires_at <= after + timedelta(hours=24)
    body = {"site_id": site_id, "bootstrap_key": issued.json()["bootstrap_key"]}
    works = await client.post(REGISTER, json=body | {"device_id": "pos-in-time"})
    assert works.status_code == 200, works.text

    # The same key once its lifetime has passed.
    async with app.state.session_factory() as session:
        site = await session.get(Site, site_id)
        assert site is not None
        site.bootstrap_key_expires_at = utcnow() - timedelta(seconds=1)
        await session.commit()
    late = await client.post(REGISTER, json=body | {"device_id": "pos-too-late"})
    assert late.status_code == 401


async def test_an_admin_rotates_a_device_key_and_the_old_one_stops_at_once(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, old = await create_registered_device(app, client)
    operator = await auth_headers(app, client, Role.operator)
    admin = await auth_headers(app, client, Role.admin)
    url = f"/api/v1/devices/{device_id}/key"

    assert (await client.post(url, headers=operator)).status_code == 403
    rotated = await client.post(url, headers=admin)

    assert rotated.status_code == 201, rotated.text
    assert (await client.post(HEARTBEAT, json={}, headers=old)).status_code == 401
    new = _bearer(rotated.json()["api_key"])
    assert (await client.post(HEARTBEAT, json={}, headers=new)).status_code == 200
    assert (await client.post("/api/v1/devices/no-such/key", headers=admin)).status_code == 404


async def test_a_revoked_device_is_refused_and_cannot_re_register_with_a_site_key(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    device_id, headers = await create_registered_device(app, client, site_id=site_id)
    admin = await auth_headers(app, client, Role.admin)
    operator = await auth_headers(app, client, Role.operator)
    url = f"/api/v1/devices/{device_id}/key"

    assert (await client.delete(url, headers=operator)).status_code == 403
    revoked = await client.delete(url, headers=admin)

    assert revoked.status_code == 204
    assert (await client.post(HEARTBEAT, json={}, headers=headers)).status_code == 401
    site_key = await create_bootstrap_key(app, site_id)
    again = await client.post(
        REGISTER,
        json={
            "site_id": site_id,
            "device_id": device_id,
            "bootstrap_key": site_key,
            "current_api_key": _key_of(headers),
        },
    )
    assert again.status_code == 409
    # An admin's new key re-admits it.
    readmitted = await client.post(url, headers=admin)
    assert readmitted.status_code == 201
    new = _bearer(readmitted.json()["api_key"])
    assert (await client.post(HEARTBEAT, json={}, headers=new)).status_code == 200
    actions = [a.action for a in await db_rows(app, AuditLog, resource_id=device_id)]
    assert "device.key.revoke" in actions
    assert "device.key.rotate" in actions


async def test_key_caches_are_invalidated_whenever_a_device_key_changes(
    app: FastAPI, client: AsyncClient
) -> None:
    invalidated: list[str | None] = []
    remove = add_key_cache_invalidator(invalidated.append)
    try:
        device_id, _ = await create_registered_device(app, client)
        admin = await auth_headers(app, client, Role.admin)
        await client.post(f"/api/v1/devices/{device_id}/key", headers=admin)
        await client.delete(f"/api/v1/devices/{device_id}/key", headers=admin)
        await client.delete(f"/api/v1/devices/{device_id}", headers=admin)
    finally:
        remove()
    # Each change invalidates at once and again after its commit.
    assert invalidated == [device_id] * 8


@pytest.fixture
async def mqtt_app(settings: Settings) -> AsyncIterator[FastAPI]:
    # A minute's session expiry (the shortest): the shared broker forgets the session soon.
    fleet = FleetSettings(mqtt_url=BROKER_URL, mqtt_session_expiry_seconds=60)
    application = create_app(settings.model_copy(update={"fleet": fleet}))
    async with LifespanManager(application):
        yield application


@requires_broker
async def test_a_revoked_device_is_refused_over_mqtt(mqtt_app: FastAPI) -> None:
    from httpx import ASGITransport

    transport = ASGITransport(app=mqtt_app, client=("203.0.113.7", 50000))
    async with AsyncClient(transport=transport, base_url="http://testserver") as client:
        device_id, headers = await create_registered_device(
            mqtt_app, client, device_id=f"pos-{uuid.uuid4().hex[:10]}"
        )
        admin = await auth_headers(mqtt_app, client, Role.admin)
        revoked = await client.delete(f"/api/v1/devices/{device_id}/key", headers=admin)
        assert revoked.status_code == 204

    async with DeviceMqttLink.from_url(BROKER_URL, device_id, _key_of(headers)) as link:
        await link.publish_heartbeat(Heartbeat(status="ok"))

    async def rejection() -> list[Any]:
        await flush(mqtt_app)
        return await db_rows(mqtt_app, ErrorLog, device_id=device_id)

    for _ in range(200):
        rows = await rejection()
        if rows:
            break
        await asyncio.sleep(0.05)
    assert [row.error_code for row in rows] == ["MQTT_AUTH_REJECTED"]
    assert "revoked" in rows[0].error_message
    assert await db_rows(mqtt_app, HealthCheck, device_id=device_id) == []
