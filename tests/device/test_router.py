from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.analytics.models import ConfigurationHistory, DeviceStateHistory
from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from tests.helpers import (
    auth_headers,
    create_device,
    create_site,
    create_user,
    db_rows,
    flush,
    login,
    rows,
)

DEVICES = "/api/v1/devices"


def messages(response: Any) -> str:
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else " | ".join(e["msg"] for e in detail)


async def user_and_headers(
    app: FastAPI, client: AsyncClient, role: Role
) -> tuple[str, dict[str, str]]:
    user = await create_user(app, role=role)
    return user["id"], await login(client, user["email"], user["password"])


async def test_operator_registers_reads_updates_and_deletes_a_device(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    operator = await auth_headers(app, client, Role.operator)

    created = await client.post(
        DEVICES,
        json={"device_id": "pos-terminal-001", "site_id": site_id, "name": "Till 1"},
        headers=operator,
    )
    assert created.status_code == 201, created.text
    device = created.json()
    assert device["device_type"] == "pos_terminal"
    assert device["status"] == "offline"
    assert device["config"] == {}
    assert device["site_id"] == site_id

    read = await client.get(f"{DEVICES}/pos-terminal-001", headers=operator)
    assert read.status_code == 200
    assert read.json() == device

    patched = await client.patch(
        f"{DEVICES}/pos-terminal-001",
        json={"name": "Till 1 (front)", "firmware_version": "2.6.0"},
        headers=operator,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Till 1 (front)"
    assert patched.json()["firmware_version"] == "2.6.0"
    assert patched.json()["updated_at"] >= device["updated_at"]

    assert (await client.delete(f"{DEVICES}/pos-terminal-001", headers=operator)).status_code == 204
    gone = await client.get(f"{DEVICES}/pos-terminal-001", headers=operator)
    assert gone.status_code == 404
    assert gone.json()["detail"] == "device 'pos-terminal-001' does not exist"


async def test_device_writes_need_operator_or_admin_and_reads_need_a_login(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    device_id = await create_device(app, site_id=site_id)
    viewer = await auth_headers(app, client, Role.viewer)
    admin = await auth_headers(app, client, Role.admin)
    body = {"device_id": "pos-2", "site_id": site_id, "name": "x"}

    assert (await client.get(DEVICES)).status_code == 401
    assert (await client.get(f"{DEVICES}/{device_id}")).status_code == 401
    assert (await client.post(DEVICES, json=body)).status_code == 401
    assert (await client.get(DEVICES, headers=viewer)).status_code == 200
    assert (await client.get(f"{DEVICES}/{device_id}", headers=viewer)).status_code == 200
    for response in [
        await client.post(DEVICES, json=body, headers=viewer),
        await client.patch(f"{DEVICES}/{device_id}", json={"status": "online"}, headers=viewer),
        await client.delete(f"{DEVICES}/{device_id}", headers=viewer),
    ]:
        assert response.status_code == 403
    assert (await client.post(DEVICES, json=body, headers=admin)).status_code == 201


async def test_a_device_needs_an_existing_site_and_a_valid_unique_id(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    existing = await create_device(app, site_id=site_id)
    operator = await auth_headers(app, client, Role.operator)

    unknown_site = await client.post(
        DEVICES, json={"device_id": "pos-9", "site_id": "site-404", "name": "x"}, headers=operator
    )
    assert unknown_site.status_code == 422
    error = unknown_site.json()["detail"][0]
    assert error["loc"] == ["body", "site_id"]
    assert error["msg"] == "site 'site-404' does not exist"

    bad_id = await client.post(
        DEVICES, json={"device_id": "POS 9", "site_id": site_id, "name": "x"}, headers=operator
    )
    assert bad_id.status_code == 422
    assert bad_id.json()["detail"][0]["loc"] == ["body", "device_id"]
    assert "device_id must be 2-63 characters" in messages(bad_id)

    bad_status = await client.post(
        DEVICES,
        json={"device_id": "pos-9", "site_id": site_id, "name": "x", "status": "sleeping"},
        headers=operator,
    )
    assert bad_status.status_code == 422
    assert bad_status.json()["detail"][0]["loc"] == ["body", "status"]

    duplicate = await client.post(
        DEVICES, json={"device_id": existing, "site_id": site_id, "name": "x"}, headers=operator
    )
    assert duplicate.status_code == 409
    assert duplicate.json()["detail"] == f"a device with device_id '{existing}' already exists"

    for response in [
        await client.patch(f"{DEVICES}/nothing", json={"name": "y"}, headers=operator),
        await client.delete(f"{DEVICES}/nothing", headers=operator),
    ]:
        assert response.status_code == 404
        assert response.json()["detail"] == "device 'nothing' does not exist"


async def test_a_device_moves_only_to_an_existing_site(app: FastAPI, client: AsyncClient) -> None:
    first, second = await create_site(app), await create_site(app)
    device_id = await create_device(app, site_id=first)
    operator = await auth_headers(app, client, Role.operator)

    moved = await client.patch(f"{DEVICES}/{device_id}", json={"site_id": second}, headers=operator)
    assert moved.status_code == 200
    assert moved.json()["site_id"] == second

    refused = await client.patch(
        f"{DEVICES}/{device_id}", json={"site_id": "site-404"}, headers=operator
    )
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["msg"] == "site 'site-404' does not exist"
    read = await client.get(f"{DEVICES}/{device_id}", headers=operator)
    assert read.json()["site_id"] == second


async def test_list_devices_filters_and_paginates(app: FastAPI, client: AsyncClient) -> None:
    north, south = await create_site(app), await create_site(app)
    await create_device(app, site_id=north, device_id="pos-a", name="Front till", status="online")
    await create_device(app, site_id=north, device_id="pos-b", name="Back till")
    await create_device(
        app, site_id=south, device_id="kiosk-c", name="Kiosk", device_type="kiosk", status="online"
    )
    await create_device(app, site_id=south, device_id="pos-d", name="Till 100%")
    viewer = await auth_headers(app, client, Role.viewer)

    async def ids(**params: Any) -> list[str]:
        response = await client.get(DEVICES, params=params, headers=viewer)
        return [d["device_id"] for d in rows(response)]

    assert await ids() == ["kiosk-c", "pos-a", "pos-b", "pos-d"]
    assert await ids(site_id=north) == ["pos-a", "pos-b"]
    assert await ids(status="online") == ["kiosk-c", "pos-a"]
    assert await ids(device_type="kiosk") == ["kiosk-c"]
    assert await ids(site_id=south, status="offline") == ["pos-d"]
    assert await ids(q="TILL") == ["pos-a", "pos-b", "pos-d"]
    assert await ids(q="kiosk-") == ["kiosk-c"]
    assert await ids(q="%") == ["pos-d"]
    assert await ids(site_id="site-404") == []

    page = await client.get(DEVICES, params={"limit": 3, "offset": 3}, headers=viewer)
    assert page.json() == {**page.json(), "total": 4, "limit": 3, "offset": 3}
    assert [d["device_id"] for d in rows(page)] == ["pos-d"]

    bad = await client.get(DEVICES, params={"status": "sleeping"}, headers=viewer)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "status"]


async def test_a_status_change_writes_state_history_only_when_the_status_changes(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    device_id = await create_device(app, site_id=site_id, status="online")
    operator_id, operator = await user_and_headers(app, client, Role.operator)
    url = f"{DEVICES}/{device_id}"

    response = await client.patch(
        url,
        json={"status": "maintenance", "reason": "User-initiated maintenance"},
        headers=operator,
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "maintenance"
    # The same status again is no change; a name change is no status change.
    await client.patch(url, json={"status": "maintenance", "reason": "again"}, headers=operator)
    await client.patch(url, json={"name": "Renamed"}, headers=operator)
    await client.patch(url, json={"status": "online"}, headers=operator)

    await flush(app)
    history = sorted(
        await db_rows(app, DeviceStateHistory, device_id=device_id), key=lambda r: r.id
    )
    assert [(r.previous_state, r.new_state) for r in history] == [
        ("online", "maintenance"),
        ("maintenance", "online"),
    ]
    assert history[0].reason == "User-initiated maintenance"
    assert history[1].reason == "status changed from maintenance to online through the API"
    assert {r.changed_by for r in history} == {operator_id}
    assert history[0].extra_data == {"source": "api", "site_id": site_id}


async def test_reasons_without_their_change_and_nulls_are_422(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id = await create_device(app)
    operator = await auth_headers(app, client, Role.operator)
    url = f"{DEVICES}/{device_id}"
    cases = [
        ({"reason": "why"}, "reason explains a status change; send it with status"),
        ({"change_reason": "why"}, "change_reason explains a config change; send it with config"),
        ({"status": None}, "may be omitted but not null"),
        ({"site_id": None}, "may be omitted but not null"),
        ({"config": None}, "may be omitted but not null"),
    ]
    for body, message in cases:
        response = await client.patch(url, json=body, headers=operator)
        assert response.status_code == 422, body
        assert message in messages(response)


async def test_device_config_change_records_one_history_row_per_changed_key(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id = await create_device(
        app, config={"max_connections": 10, "config_version": "1.0.0", "printer": "usb"}
    )
    operator_id, operator = await user_and_headers(app, client, Role.operator)

    response = await client.patch(
        f"{DEVICES}/{device_id}",
        json={
            "config": {"max_connections": 15, "config_version": "1.0.0", "printer": None},
            "change_reason": "Increased load during peak hours",
        },
        headers=operator,
    )
    assert response.status_code == 200, response.text
    assert response.json()["config"] == {"max_connections": 15, "config_version": "1.0.0"}

    await flush(app)
    history = {
        row.parameter_name: row
        for row in await db_rows(app, ConfigurationHistory, entity_id=device_id)
    }
    assert set(history) == {"max_connections", "printer"}
    assert (history["max_connections"].old_value, history["max_connections"].new_value) == (
        {"value": 10},
        {"value": 15},
    )
    assert (history["printer"].old_value, history["printer"].new_value) == (
        {"value": "usb"},
        None,
    )
    for row in history.values():
        assert row.entity_type == "device"
        assert row.changed_by == operator_id
        assert row.change_type == "manual"
        assert row.change_reason == "Increased load during peak hours"


async def test_changing_a_value_to_an_equal_looking_one_of_another_type_is_recorded(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id = await create_device(app, config={"retries": 1, "enabled": 1})
    operator = await auth_headers(app, client, Role.operator)
    await client.patch(
        f"{DEVICES}/{device_id}", json={"config": {"retries": 1, "enabled": True}}, headers=operator
    )
    await flush(app)
    history = await db_rows(app, ConfigurationHistory, entity_id=device_id)
    assert [(r.parameter_name, r.new_value) for r in history] == [("enabled", {"value": True})]


async def test_a_canary_secret_in_device_config_never_reaches_history_or_audit(
    app: FastAPI, client: AsyncClient
) -> None:
    canary = "canary-f00dfeed42"
    operator = await auth_headers(app, client, Role.operator)
    site_id = await create_site(app)
    created = await client.post(
        DEVICES,
        json={
            "device_id": "pos-secret",
            "site_id": site_id,
            "name": "x",
            "config": {"api_key": "initial-key-0001"},
        },
        headers=operator,
    )
    assert created.status_code == 201
    await client.patch(
        f"{DEVICES}/pos-secret",
        json={"config": {"api_key": canary, "payment": {"password": canary}}},
        headers=operator,
    )

    await flush(app)
    history = await db_rows(app, ConfigurationHistory, entity_id="pos-secret")
    assert {row.parameter_name for row in history} == {"api_key", "payment"}
    stored = json.dumps([[row.old_value, row.new_value] for row in history])
    assert canary not in stored
    assert "initial-key-0001" not in stored
    audits = json.dumps([row.details for row in await db_rows(app, AuditLog)])
    assert canary not in audits
    assert "initial-key-0001" not in audits


async def test_device_changes_write_audit_rows(app: FastAPI, client: AsyncClient) -> None:
    site_id = await create_site(app)
    operator_id, operator = await user_and_headers(app, client, Role.operator)
    await client.post(
        DEVICES, json={"device_id": "pos-x", "site_id": site_id, "name": "X"}, headers=operator
    )
    await client.patch(
        f"{DEVICES}/pos-x", json={"status": "online", "reason": "installed"}, headers=operator
    )
    await client.delete(f"{DEVICES}/pos-x", headers=operator)

    audits = sorted(await db_rows(app, AuditLog, resource_id="pos-x"), key=lambda r: r.id)
    assert [row.action for row in audits] == ["device.create", "device.update", "device.delete"]
    assert {row.user_id for row in audits} == {operator_id}
    assert {row.resource_type for row in audits} == {"device"}
    assert {row.ip_address for row in audits} == {"203.0.113.7"}
    assert audits[0].details["site_id"] == site_id
    assert audits[1].details == {
        "status": {"old": "offline", "new": "online"},
        "reason": "installed",
    }


@pytest.mark.parametrize("device_type", ["Kiosk", "", "a" * 65])
async def test_device_type_must_be_a_lowercase_name(
    app: FastAPI, client: AsyncClient, device_type: str
) -> None:
    site_id = await create_site(app)
    operator = await auth_headers(app, client, Role.operator)
    response = await client.post(
        DEVICES,
        json={"device_id": "pos-1", "site_id": site_id, "name": "x", "device_type": device_type},
        headers=operator,
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "device_type"]
