"""The device protocol over HTTP: registration, heartbeats, telemetry, and the bootstrap key."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import select

from homepot.analytics.models import DeviceMetrics, DeviceStateHistory, ErrorLog
from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from homepot.config import FleetSettings, Settings
from homepot.device.models import Device, HealthCheck
from homepot.fleet.service import mqtt_info
from homepot.models import ALL_MODELS
from tests.helpers import (
    auth_headers,
    create_bootstrap_key,
    create_device,
    create_registered_device,
    create_site,
    db_rows,
    flush,
)

AGENT = "/api/v1/agent"


def detail(response: Any) -> str:
    body = response.json()["detail"]
    return body if isinstance(body, str) else " | ".join(e["msg"] for e in body)


def error_fields(response: Any) -> list[str]:
    return [str(e["loc"][-1]) for e in response.json()["detail"]]


def sample(**fields: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(),
        "collection_interval_seconds": 30,
        "cpu_percent": 42.5,
        "memory_percent": 61.0,
        "transaction_count": 12,
        **fields,
    }


async def device_row(app: FastAPI, device_id: str) -> Device:
    (device,) = await db_rows(app, Device, device_id=device_id)
    return device


async def history(app: FastAPI, device_id: str) -> list[DeviceStateHistory]:
    await flush(app)
    found = await db_rows(app, DeviceStateHistory, device_id=device_id)
    return sorted(found, key=lambda row: row.id)


async def dump_all_tables(app: FastAPI) -> str:
    parts = []
    async with app.state.session_factory() as session:
        for model in ALL_MODELS:
            for row in (await session.execute(select(model.__table__))).all():
                parts.append(repr(tuple(row)))
    return "\n".join(parts)


# -- the site's bootstrap key ----------------------------------------------------------------


async def test_operator_creates_and_rotates_a_bootstrap_key(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    operator = await auth_headers(app, client, Role.operator)
    url = f"/api/v1/sites/{site_id}/bootstrap-key"

    first = await client.post(url, headers=operator)
    assert first.status_code == 201, first.text
    assert first.json()["site_id"] == site_id
    assert first.json()["replaced_previous_key"] is False
    old_key = first.json()["bootstrap_key"]
    second = await client.post(url, headers=operator)
    assert second.status_code == 201
    assert second.json()["replaced_previous_key"] is True
    new_key = second.json()["bootstrap_key"]
    assert new_key != old_key

    body = {"site_id": site_id, "device_id": "pos-rotated"}
    refused = await client.post(f"{AGENT}/register", json=body | {"bootstrap_key": old_key})
    assert refused.status_code == 401
    accepted = await client.post(f"{AGENT}/register", json=body | {"bootstrap_key": new_key})
    assert accepted.status_code == 200, accepted.text

    audits = sorted(await db_rows(app, AuditLog, resource_id=site_id), key=lambda r: r.id)
    assert [a.action for a in audits] == ["site.bootstrap_key.create", "site.bootstrap_key.rotate"]
    assert old_key not in json.dumps([a.details for a in audits])


async def test_bootstrap_key_is_for_operators_and_admins_only(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    url = f"/api/v1/sites/{site_id}/bootstrap-key"
    viewer = await auth_headers(app, client, Role.viewer)
    admin = await auth_headers(app, client, Role.admin)

    assert (await client.post(url)).status_code == 401
    assert (await client.post(url, headers=viewer)).status_code == 403
    assert (await client.post(url, headers=admin)).status_code == 201
    unknown = await client.post("/api/v1/sites/no-such-site/bootstrap-key", headers=admin)
    assert unknown.status_code == 404
    assert "no-such-site" in detail(unknown)


async def test_no_key_is_ever_stored_in_any_table(app: FastAPI, client: AsyncClient) -> None:
    site_id = await create_site(app)
    operator = await auth_headers(app, client, Role.operator)
    bootstrap = await client.post(f"/api/v1/sites/{site_id}/bootstrap-key", headers=operator)
    bootstrap_key = bootstrap.json()["bootstrap_key"]
    registered = await client.post(
        f"{AGENT}/register",
        json={"site_id": site_id, "device_id": "pos-secret", "bootstrap_key": bootstrap_key},
    )
    api_key = registered.json()["api_key"]
    headers = {"Authorization": f"Bearer {api_key}"}
    assert (await client.post(f"{AGENT}/heartbeat", json={}, headers=headers)).status_code == 200
    sent = await client.post(f"{AGENT}/telemetry", json={"samples": [sample()]}, headers=headers)
    assert sent.status_code == 202

    await flush(app)
    dump = await dump_all_tables(app)
    assert "pos-secret" in dump  # the dump does see the device's rows
    assert bootstrap_key not in dump
    assert api_key not in dump
    # Only the hash is kept, so that a request is authenticated by one index lookup.
    device = await device_row(app, "pos-secret")
    assert device.api_key_hash == hashlib.sha256(api_key.encode()).hexdigest()


# -- registration ----------------------------------------------------------------------------


async def test_a_terminal_registers_with_its_sites_key(
    app: FastAPI, client: AsyncClient, settings: Settings
) -> None:
    site_id = await create_site(app)
    key = await create_bootstrap_key(app, site_id)

    response = await client.post(
        f"{AGENT}/register",
        json={
            "site_id": site_id,
            "device_id": "pos-new-001",
            "bootstrap_key": key,
            "name": "Front till",
            "firmware_version": "2.6.0",
            "agent_version": "1.0.0",
        },
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["device_id"] == "pos-new-001"
    assert body["site_id"] == site_id
    assert body["api_key"].startswith("hpd_")
    assert body["heartbeat_interval_seconds"] == settings.fleet.heartbeat_interval_seconds
    assert body["telemetry_interval_seconds"] == settings.fleet.telemetry_interval_seconds
    assert body["mqtt"] is None  # no broker configured in the tests
    device = await device_row(app, "pos-new-001")
    assert (device.site_id, device.name, device.status.value) == (site_id, "Front till", "offline")
    assert (device.firmware_version, device.agent_version) == ("2.6.0", "1.0.0")
    assert device.ip_address == "203.0.113.7"
    (audit,) = await db_rows(app, AuditLog, resource_id="pos-new-001")
    assert (audit.action, audit.user_id) == ("device.register", "system")
    assert body["api_key"] not in json.dumps(audit.details)


async def test_registration_is_refused_without_the_right_key(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    body = {"site_id": site_id, "device_id": "pos-x", "bootstrap_key": "hpb_" + "x" * 40}

    no_key_yet = await client.post(f"{AGENT}/register", json=body)
    assert no_key_yet.status_code == 401
    assert f"POST /api/v1/sites/{site_id}/bootstrap-key" in detail(no_key_yet)

    await create_bootstrap_key(app, site_id)
    wrong = await client.post(f"{AGENT}/register", json=body)
    assert wrong.status_code == 401
    assert detail(wrong) == detail(no_key_yet)

    missing = await client.post(f"{AGENT}/register", json={"site_id": site_id, "device_id": "p-x"})
    assert missing.status_code == 422
    assert error_fields(missing) == ["bootstrap_key"]

    # An unknown site gets the same answer as a wrong key: existence is not revealed.
    unknown = await client.post(f"{AGENT}/register", json=body | {"site_id": "no-such-site"})
    assert unknown.status_code == 401
    assert detail(unknown) == detail(wrong).replace(site_id, "no-such-site")
    assert await db_rows(app, Device) == []


async def test_registering_again_with_the_current_key_replaces_the_devices_key(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    device_id, old_headers = await create_registered_device(app, client, site_id=site_id)
    current_key = old_headers["Authorization"].removeprefix("Bearer ")
    _, new_headers = await create_registered_device(
        app,
        client,
        site_id=site_id,
        device_id=device_id,
        firmware_version="2.7.0",
        current_api_key=current_key,
    )

    old = await client.post(f"{AGENT}/heartbeat", json={}, headers=old_headers)
    assert old.status_code == 401
    assert "register the device again" in detail(old)
    new = await client.post(f"{AGENT}/heartbeat", json={}, headers=new_headers)
    assert new.status_code == 200, new.text
    assert (await device_row(app, device_id)).firmware_version == "2.7.0"
    audits = sorted(await db_rows(app, AuditLog, resource_id=device_id), key=lambda r: r.id)
    assert [a.action for a in audits] == ["device.register", "device.rekey"]


async def test_a_device_of_another_site_cannot_be_taken_over(
    app: FastAPI, client: AsyncClient
) -> None:
    home = await create_site(app)
    device_id = await create_device(app, site_id=home)
    other = await create_site(app)
    key = await create_bootstrap_key(app, other)

    response = await client.post(
        f"{AGENT}/register", json={"site_id": other, "device_id": device_id, "bootstrap_key": key}
    )

    assert response.status_code == 409
    assert "already registered" in detail(response)
    device = await device_row(app, device_id)
    assert (device.site_id, device.api_key_hash) == (home, None)


def test_mqtt_info_comes_from_the_broker_url() -> None:
    def info(url: str) -> tuple[str, int] | None:
        found = mqtt_info(Settings(fleet=FleetSettings(mqtt_url=url)))
        return None if found is None else (found.host, found.port)

    assert info("") is None
    assert info("mqtt://broker.example:1884") == ("broker.example", 1884)
    assert info("mqtt://127.0.0.1") == ("127.0.0.1", 1883)
    assert info("mqtts://broker.example") == ("broker.example", 8883)


# -- heartbeats ------------------------------------------------------------------------------


async def test_a_heartbeat_is_a_health_check_and_brings_the_device_online_once(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, headers = await create_registered_device(app, client, firmware_version="2.6.0")
    beat = {
        "status": "ok",
        "firmware_version": "2.6.1",
        "config_version": "cfg-7",
        "uptime_seconds": 3600,
        "response_time_ms": 12.5,
    }

    first = await client.post(f"{AGENT}/heartbeat", json=beat, headers=headers)
    second = await client.post(f"{AGENT}/heartbeat", json={}, headers=headers)

    assert first.status_code == 200, first.text
    assert first.json() == {"device_id": device_id, "status": "online"}
    assert second.json()["status"] == "online"
    checks = sorted(await db_rows(app, HealthCheck, device_id=device_id), key=lambda r: r.id)
    assert [c.status for c in checks] == ["ok", "ok"]
    assert checks[0].response_time_ms == 12.5
    assert checks[0].details == {
        "uptime_seconds": 3600,
        "firmware_version": "2.6.1",
        "config_version": "cfg-7",
    }
    device = await device_row(app, device_id)
    assert device.firmware_version == "2.6.1"
    assert device.last_seen_at is not None
    assert datetime.now(UTC) - device.last_seen_at < timedelta(seconds=30)
    (row,) = await history(app, device_id)
    assert (row.previous_state, row.new_state, row.changed_by) == ("offline", "online", "system")
    assert row.reason == "first heartbeat since registration"


async def test_heartbeats_drive_the_error_state(app: FastAPI, client: AsyncClient) -> None:
    device_id, headers = await create_registered_device(app, client)

    async def beat(status: str) -> str:
        response = await client.post(f"{AGENT}/heartbeat", json={"status": status}, headers=headers)
        assert response.status_code == 200, response.text
        return str(response.json()["status"])

    assert [await beat(s) for s in ("ok", "error", "error", "degraded", "ok")] == [
        "online",
        "error",
        "error",
        "error",
        "online",
    ]
    rows = await history(app, device_id)
    assert [(r.previous_state, r.new_state) for r in rows] == [
        ("offline", "online"),
        ("online", "error"),
        ("error", "online"),
    ]
    assert rows[1].reason == "the device reported status error in its heartbeat"
    assert rows[2].reason == "the device reported ok again after an error"
    assert rows[1].extra_data["reported_status"] == "error"
    statuses = await db_rows(app, HealthCheck, device_id=device_id)
    assert sorted(c.status for c in statuses) == ["degraded", "error", "error", "ok", "ok"]


async def test_a_heartbeat_after_silence_says_how_long_it_was(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, headers = await create_registered_device(app, client)
    async with app.state.session_factory() as session:
        device = await session.get(Device, device_id)
        assert device is not None
        device.last_seen_at = datetime.now(UTC) - timedelta(minutes=3)
        await session.commit()

    await client.post(f"{AGENT}/heartbeat", json={}, headers=headers)

    (row,) = await history(app, device_id)
    assert row.reason == "heartbeat received after 3 min of silence"


async def test_a_heartbeat_does_not_end_maintenance(app: FastAPI, client: AsyncClient) -> None:
    device_id, headers = await create_registered_device(app, client)
    operator = await auth_headers(app, client, Role.operator)
    await client.patch(
        f"/api/v1/devices/{device_id}", json={"status": "maintenance"}, headers=operator
    )

    response = await client.post(f"{AGENT}/heartbeat", json={"status": "ok"}, headers=headers)

    assert response.json()["status"] == "maintenance"
    assert [r.new_state for r in await history(app, device_id)] == ["maintenance"]


async def test_device_credentials_are_checked(app: FastAPI, client: AsyncClient) -> None:
    device_id, headers = await create_registered_device(app, client)
    other_id, _ = await create_registered_device(app, client)
    batch = {"device_id": other_id, "samples": [sample()]}

    for path, body in (("heartbeat", {"device_id": other_id}), ("telemetry", batch)):
        foreign = await client.post(f"{AGENT}/{path}", json=body, headers=headers)
        assert foreign.status_code == 403, path
        assert f"belongs to {device_id}" in detail(foreign)
        anonymous = await client.post(f"{AGENT}/{path}", json=body)
        assert anonymous.status_code == 401, path
        forged = {"Authorization": "Bearer hpd_" + "x" * 43}
        assert (await client.post(f"{AGENT}/{path}", json=body, headers=forged)).status_code == 401
    # Naming itself is fine.
    own = await client.post(f"{AGENT}/heartbeat", json={"device_id": device_id}, headers=headers)
    assert own.status_code == 200
    await flush(app)
    assert await db_rows(app, HealthCheck, device_id=other_id) == []
    assert await db_rows(app, DeviceMetrics) == []
    # A device's own mistakes are answered, not logged as server errors.
    assert await db_rows(app, ErrorLog) == []


# -- telemetry -------------------------------------------------------------------------------


async def test_telemetry_is_stored_once_even_when_sent_twice(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, headers = await create_registered_device(app, client)
    other_id, other_headers = await create_registered_device(app, client)
    batch = {
        "samples": [
            sample(extra_metrics={"printer": "ok", "password": "hunter2"}),
            sample(cpu_percent=80.0, collection_interval_seconds=15),
        ]
    }

    first = await client.post(f"{AGENT}/telemetry", json=batch, headers=headers)
    await flush(app)
    again = await client.post(f"{AGENT}/telemetry", json=batch, headers=headers)
    # Another device using the same client event ids is a different sample.
    other = await client.post(f"{AGENT}/telemetry", json=batch, headers=other_headers)

    assert first.status_code == 202, first.text
    assert first.json() == {"accepted": 2}
    assert again.json() == {"accepted": 2}
    assert other.status_code == 202
    await flush(app)
    stored = sorted(await db_rows(app, DeviceMetrics, device_id=device_id), key=lambda r: r.id)
    assert [(m.cpu_percent, m.collection_interval_seconds) for m in stored] == [
        (42.5, 30),
        (80.0, 15),
    ]
    assert stored[0].timestamp == datetime.fromisoformat(batch["samples"][0]["timestamp"])
    assert stored[0].extra_metrics == {"printer": "ok", "password": "[REDACTED]"}
    assert len(await db_rows(app, DeviceMetrics, device_id=other_id)) == 2
    assert (await device_row(app, device_id)).last_seen_at is not None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cpu_percent", 101),
        ("memory_percent", -1),
        ("error_rate", 100.5),
        ("transaction_count", -3),
        ("queue_depth", -1),
        ("network_latency_ms", -5),
        ("cpu_percent", float("nan")),
        ("transaction_volume", float("inf")),
    ],
)
async def test_out_of_range_values_are_422_naming_the_field(
    app: FastAPI, client: AsyncClient, field: str, value: float
) -> None:
    device_id, headers = await create_registered_device(app, client)
    batch = {"samples": [sample(), sample(**{field: value})]}

    # Sent as written: NaN and Infinity are what a careless JSON encoder produces.
    response = await client.post(
        f"{AGENT}/telemetry",
        content=json.dumps(batch),
        headers=headers | {"Content-Type": "application/json"},
    )

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "samples", 1, field]
    await flush(app)
    assert await db_rows(app, DeviceMetrics, device_id=device_id) == []


async def test_telemetry_batches_are_bounded_and_timestamps_need_an_offset(
    app: FastAPI, client: AsyncClient
) -> None:
    _, headers = await create_registered_device(app, client)

    too_many = await client.post(
        f"{AGENT}/telemetry", json={"samples": [sample() for _ in range(501)]}, headers=headers
    )
    assert too_many.status_code == 422
    assert "500" in detail(too_many)
    empty = await client.post(f"{AGENT}/telemetry", json={"samples": []}, headers=headers)
    assert empty.status_code == 422
    naive = await client.post(
        f"{AGENT}/telemetry",
        json={"samples": [sample(timestamp=datetime.now(UTC).replace(tzinfo=None).isoformat())]},
        headers=headers,
    )
    assert naive.status_code == 422
    assert "UTC offset" in detail(naive)
    typo = await client.post(
        f"{AGENT}/telemetry", json={"samples": [sample(cpu_pct=3)]}, headers=headers
    )
    assert typo.status_code == 422
    assert error_fields(typo) == ["cpu_pct"]


async def test_a_batch_the_server_cannot_queue_is_refused_and_can_be_resent(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, headers = await create_registered_device(app, client)
    recorder = app.state.recorder
    batch = {"samples": [sample() for _ in range(12)]}

    # The recorder's queue holds 10 events at most: the batch does not fit.
    normal = recorder.settings
    recorder.settings = normal.model_copy(update={"queue_max_events": 10})
    try:
        busy = await client.post(f"{AGENT}/telemetry", json=batch, headers=headers)
    finally:
        recorder.settings = normal
    await flush(app)
    resent = await client.post(f"{AGENT}/telemetry", json=batch, headers=headers)
    await flush(app)

    assert busy.status_code == 503
    assert busy.headers["Retry-After"] == "5"
    assert "send the batch again" in detail(busy)
    assert resent.json() == {"accepted": 12}
    # Nothing lost, nothing twice: the samples queued the first time are not stored again.
    assert len(await db_rows(app, DeviceMetrics, device_id=device_id)) == 12


# -- the device's own error reports -----------------------------------------------------------


def error_report(**fields: Any) -> dict[str, Any]:
    return {
        "category": "external_service",
        "severity": "critical",
        "error_code": "EXT_SERVICE_TIMEOUT",
        "message": "Payment gateway timeout: acquirer-eu did not answer within 30 s",
        **fields,
    }


async def test_a_device_error_report_is_stored_as_its_own_error(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, headers = await create_registered_device(app, client)
    (device,) = await db_rows(app, Device, device_id=device_id)
    occurred = (datetime.now(UTC) - timedelta(minutes=3)).replace(microsecond=0)
    body = error_report(
        occurred_at=occurred.isoformat(),
        stack="Traceback: gateway.charge() timed out",
        context={"gateway": "acquirer-eu", "password": "canary-s3cret-pw"},
    )

    response = await client.post(f"{AGENT}/errors", json=body, headers=headers)

    assert response.status_code == 202, response.text
    await flush(app)
    (row,) = await db_rows(app, ErrorLog, device_id=device_id)
    assert response.json() == {"event_id": row.event_id}
    assert (row.category, row.severity, row.error_code) == (
        "external_service",
        "critical",
        "EXT_SERVICE_TIMEOUT",
    )
    assert row.error_message == body["message"]
    assert row.stack_trace == body["stack"]
    assert row.timestamp == occurred
    assert row.context == {
        "source": "device",
        "site_id": device.site_id,
        "gateway": "acquirer-eu",
        "password": "[REDACTED]",
    }
    assert "canary-s3cret-pw" not in await dump_all_tables(app)


async def test_a_device_reports_only_its_own_errors(app: FastAPI, client: AsyncClient) -> None:
    device_id, headers = await create_registered_device(app, client)
    other_id, _ = await create_registered_device(app, client)

    foreign = await client.post(
        f"{AGENT}/errors", json=error_report(device_id=other_id), headers=headers
    )
    anonymous = await client.post(f"{AGENT}/errors", json=error_report())

    assert foreign.status_code == 403
    assert f"belongs to {device_id}" in detail(foreign)
    assert anonymous.status_code == 401
    await flush(app)
    assert await db_rows(app, ErrorLog) == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"category": "printer"}, "category"),
        ({"severity": "fatal"}, "severity"),
        ({"error_code": "ext-timeout"}, "error_code"),
        ({"error_code": "E" * 65}, "error_code"),
        ({"message": ""}, "message"),
        ({"occurred_at": "2026-01-01T10:00:00"}, "occurred_at"),
    ],
)
async def test_a_bad_error_report_is_422_naming_the_field(
    app: FastAPI, client: AsyncClient, fields: dict[str, Any], field: str
) -> None:
    _, headers = await create_registered_device(app, client)

    response = await client.post(f"{AGENT}/errors", json=error_report(**fields), headers=headers)

    assert response.status_code == 422
    assert error_fields(response) == [field]
    await flush(app)
    assert await db_rows(app, ErrorLog, error_code="EXT_SERVICE_TIMEOUT") == []


async def test_a_heartbeat_status_outside_ok_degraded_error_is_a_422(
    app: FastAPI, client: AsyncClient
) -> None:
    _, headers = await create_registered_device(app, client)
    response = await client.post(f"{AGENT}/heartbeat", json={"status": "fine"}, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "status"]


async def test_a_batch_names_the_refused_sample_and_stores_offsets_as_utc(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, headers = await create_registered_device(app, client)
    early = datetime.now(UTC) - timedelta(minutes=1)
    future = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    samples = [sample() for _ in range(4)]

    refused = await client.post(
        f"{AGENT}/telemetry",
        json={"samples": samples[:2] + [sample(timestamp=future)] + samples[2:]},
        headers=headers,
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["loc"] == ["body", "samples", 2, "timestamp"]
    assert "future" in refused.json()["detail"][0]["msg"]

    offset = early.astimezone(timezone(timedelta(hours=2))).isoformat()
    accepted = await client.post(
        f"{AGENT}/telemetry", json={"samples": [sample(timestamp=offset)]}, headers=headers
    )
    assert accepted.status_code == 202, accepted.text
    await flush(app)
    (row,) = await db_rows(app, DeviceMetrics, device_id=device_id)
    assert row.timestamp == early
    assert row.timestamp.utcoffset() == timedelta(0)
