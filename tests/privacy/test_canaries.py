"""Secrets, end to end: canaries sent through every ingestion path reach no table.

A canary password, bearer token, API key and card number travel through ordinary API
requests (query string, JSON and form bodies, headers, cookies), device telemetry
(``extra_metrics``), a job (payload, description, the device's result and error), device
and site configuration values named like secrets, a device's own error report, dashboard
activity and a front-end error. Then every column of every table is read back as text.

The only place a canary may remain is the value of a secret-named key in the operational
configuration a terminal must receive to work: ``devices.config``, ``sites.config`` and
``jobs.payload`` (the config_change job that carries it). Never their history, the audit
log, an execution's result, an analytics table or an export: the pseudonymized export of
all eight tables (``POST /api/v1/analytics/exports``, CSV and Parquet) is scanned too.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import uuid
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import pyarrow.parquet as pq
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import AsyncClient
from pydantic import SecretStr
from sqlalchemy import select

from homepot.auth.models import Role
from homepot.config import Settings
from homepot.db import utcnow
from homepot.kit.redaction import is_sensitive_key
from homepot.main import create_app
from homepot.models import ALL_MODELS
from tests.helpers import auth_headers, create_registered_device, flush

PASSWORD = "canary-pw-Zq81xV"
TOKEN = "canaryTok3nA9f7Qw2Lm"
API_KEY = "canary-key-5Kd02Hs"
CARD = "4111 1111 1111 1111"
CARD_DIGITS = "4111111111111111"
SECRETS = (PASSWORD, TOKEN, API_KEY)
# Operational configuration a device needs verbatim: a canary may sit under a secret-named key.
CONFIG_COLUMNS = {("devices", "config"), ("sites", "config"), ("jobs", "payload")}
EXPORT_KEY = "canary-test-export-key-0123456789"


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with an export key, so that exports can be scanned as well."""
    application = create_app(settings.model_copy(update={"export_key": SecretStr(EXPORT_KEY)}))
    async with LifespanManager(application):
        yield application


def _text(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


def _leaks(text: str) -> list[str]:
    found = [secret for secret in SECRETS if secret in text]
    if CARD_DIGITS in re.sub(r"[\s+-]", "", text):
        found.append("card number")
    return found


def _leaks_outside_secret_keys(value: Any, path: str = "") -> list[str]:
    """Leaks in a JSON config, except as the value of a secret-named key (which is allowed)."""
    if isinstance(value, dict):
        found: list[str] = []
        for key, inner in value.items():
            if isinstance(key, str) and is_sensitive_key(key):
                continue
            found += _leaks_outside_secret_keys(inner, f"{path}.{key}")
        return found
    if isinstance(value, list):
        return [leak for item in value for leak in _leaks_outside_secret_keys(item, path)]
    return [f"{leak} at {path}" for leak in _leaks(_text(value))]


async def scan_every_table(app: FastAPI) -> list[str]:
    """``table.column: what`` for every canary found in the database."""
    problems: list[str] = []
    async with app.state.session_factory() as session:
        for model in ALL_MODELS:
            table = model.__table__
            for row in (await session.execute(select(table))).mappings():
                for column, value in row.items():
                    where = f"{table.name}.{column}"  # type: ignore[attr-defined]
                    if (table.name, column) in CONFIG_COLUMNS:  # type: ignore[attr-defined]
                        leaks = _leaks_outside_secret_keys(value)
                    else:
                        leaks = _leaks(_text(value))
                    problems += [f"{where}: {leak}" for leak in leaks]
    return problems


async def scan_exports(client: AsyncClient, admin: dict[str, str]) -> list[str]:
    """``file: what`` for every canary in the export of all eight tables, CSV and Parquet."""
    problems: list[str] = []
    for export_format in ("csv", "parquet"):
        redacted = False
        response = await client.post(
            "/api/v1/analytics/exports", json={"format": export_format}, headers=admin
        )
        assert response.status_code == 200, response.text
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            names = archive.namelist()
            assert len(names) == 9, names  # eight tables and the manifest
            for name in names:
                data = archive.read(name)
                if name.endswith(".parquet"):
                    rows = pq.read_table(io.BytesIO(data)).to_pylist()
                    text = json.dumps(rows, default=str)
                else:
                    text = data.decode()
                problems += [f"{name}: {leak}" for leak in _leaks(text)]
                redacted = redacted or "[REDACTED]" in text
        assert redacted, f"the {export_format} export holds none of the redacted rows"
    return problems


async def send_ordinary_requests(client: AsyncClient, admin: dict[str, str]) -> None:
    card_plus = CARD.replace(" ", "+")
    await client.get(
        f"/api/v1/sites?token={TOKEN}&api_key={API_KEY}&password={PASSWORD}&q=card+{card_plus}",
        headers={**admin, "X-Api-Key": API_KEY, "Cookie": f"session={TOKEN}"},
    )
    await client.post(
        "/api/v1/users",
        json={"email": "not-an-email", "password": PASSWORD, "role": "viewer"},
        headers=admin,
    )
    await client.post("/api/v1/auth/token", data={"username": "who@x.io", "password": PASSWORD})
    await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {TOKEN}"})
    await client.get(f"/api/v1/devices/no-such-device?secret={PASSWORD}", headers=admin)


async def send_device_traffic(client: AsyncClient, device_id: str, device: dict[str, str]) -> None:
    telemetry = await client.post(
        "/api/v1/agent/telemetry",
        json={
            "device_id": device_id,
            "samples": [
                {
                    "event_id": str(uuid.uuid4()),
                    "timestamp": utcnow().isoformat(),
                    "collection_interval_seconds": 30,
                    "cpu_percent": 12.5,
                    "extra_metrics": {
                        "gateway_password": PASSWORD,
                        "api_key": API_KEY,
                        "last_auth": f"Authorization: Bearer {TOKEN}",
                        "last_receipt": f"paid with card {CARD}",
                        "nested": {"client_secret": PASSWORD, "note": f"token={TOKEN}"},
                    },
                }
            ],
        },
        headers=device,
    )
    assert telemetry.status_code == 202, telemetry.text
    error = await client.post(
        "/api/v1/agent/errors",
        json={
            "device_id": device_id,
            "severity": "critical",
            "error_code": "EXT_SERVICE_TIMEOUT",
            "message": f"gateway refused card {CARD} with password={PASSWORD}",
            "stack": f"Traceback: login(api_key={API_KEY}, header='Bearer {TOKEN}')",
            "context": {
                "password": PASSWORD,
                "request": {"headers": {"Authorization": f"Bearer {TOKEN}"}, "pan": CARD},
                "apiKey": API_KEY,
            },
        },
        headers=device,
    )
    assert error.status_code == 202, error.text


async def run_a_job_with_secrets(
    client: AsyncClient, admin: dict[str, str], device_id: str, device: dict[str, str]
) -> None:
    """A config_change carrying secrets, whose device echoes them back in its result."""
    created = await client.post(
        "/api/v1/jobs",
        json={
            "job_type": "config_change",
            "target_type": "device",
            "target_id": device_id,
            "payload": {"config": {"api_key": API_KEY, "gateway_password": PASSWORD}},
            "description": f"rotate keys after refund to card {CARD}; old password={PASSWORD}",
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    failing = await client.post(
        "/api/v1/jobs",
        json={"job_type": "restart", "target_type": "device", "target_id": device_id},
        headers=admin,
    )
    assert failing.status_code == 201, failing.text
    commands: list[dict[str, Any]] = []
    for _ in range(100):  # the orchestrator makes them due within a pass or two
        polled = await client.get("/api/v1/agent/jobs", headers=device)
        assert polled.status_code == 200, polled.text
        commands += polled.json()
        if len(commands) >= 2:
            break
        await asyncio.sleep(0.05)
    assert {c["job_type"] for c in commands} == {"config_change", "restart"}
    for command in commands:
        execution_id = command["execution_id"]
        await client.post(
            f"/api/v1/agent/jobs/{execution_id}/ack",
            json={"execution_id": execution_id},
            headers=device,
        )
        body: dict[str, Any] = {
            "execution_id": execution_id,
            "output": {"applied_token": TOKEN, "log": f"charged card {CARD}", "password": PASSWORD},
        }
        if command["job_type"] == "config_change":
            body["status"] = "success"
        else:
            body |= {
                "status": "failed",
                "error_code": "E_AUTH",
                "error_message": f"login failed: password={PASSWORD} card {CARD}",
            }
        result = await client.post(
            f"/api/v1/agent/jobs/{execution_id}/result", json=body, headers=device
        )
        assert result.status_code == 200, result.text


async def change_configuration(
    client: AsyncClient, admin: dict[str, str], site_id: str, device_id: str
) -> None:
    device = await client.patch(
        f"/api/v1/devices/{device_id}",
        json={"config": {"api_key": API_KEY, "payment": {"password": PASSWORD}}},
        headers=admin,
    )
    assert device.status_code == 200, device.text
    site = await client.patch(
        f"/api/v1/sites/{site_id}",
        json={"config": {"gateway_token": TOKEN, "acquirer": {"client_secret": PASSWORD}}},
        headers=admin,
    )
    assert site.status_code == 200, site.text


async def send_dashboard_events(client: AsyncClient, admin: dict[str, str]) -> None:
    activities = await client.post(
        "/api/v1/analytics/user-activities",
        json={
            "events": [
                {
                    "activity_type": "search",
                    "page_url": f"/devices?token={TOKEN}&api_key={API_KEY}",
                    "element_id": "device-search",
                    "search_query": f"card {CARD} password={PASSWORD}",
                    "extra_data": {"api_key": API_KEY, "note": f"Bearer {TOKEN}"},
                },
                {
                    "activity_type": "page_view",
                    "page_url": f"/login#password={PASSWORD}",
                    "extra_data": {"referrer": f"/reset?token={TOKEN}"},
                },
            ]
        },
        headers=admin,
    )
    assert activities.status_code == 202, activities.text
    error = await client.post(
        "/api/v1/analytics/errors",
        json={
            "message": f"payment form crashed for card {CARD}",
            "stack": f"at submit (app.js:1) Authorization: Bearer {TOKEN}",
            "page_url": f"/checkout?api_key={API_KEY}",
            "user_agent": f"Mozilla/5.0 token={TOKEN}",
            "context": {"db_password": PASSWORD, "api_key": API_KEY, "detail": f"card {CARD}"},
        },
        headers=admin,
    )
    assert error.status_code == 202, error.text
    # A form's password is refused outright; the refusal, which echoes it, is not stored.
    refused = await client.post(
        "/api/v1/analytics/errors",
        json={"message": "login failed", "context": {"password": PASSWORD}},
        headers=admin,
    )
    assert refused.status_code == 422


async def test_canaries_sent_through_every_ingestion_path_reach_no_table(
    app: FastAPI, client: AsyncClient
) -> None:
    admin = await auth_headers(app, client, Role.admin)
    device_id, device = await create_registered_device(app, client)
    site_id = (await client.get(f"/api/v1/devices/{device_id}", headers=admin)).json()["site_id"]

    await send_ordinary_requests(client, admin)
    await send_device_traffic(client, device_id, device)
    await run_a_job_with_secrets(client, admin, device_id, device)
    await change_configuration(client, admin, site_id, device_id)
    await send_dashboard_events(client, admin)
    await flush(app)

    problems = await scan_every_table(app)
    assert problems == [], "\n".join(problems)
    exported = await scan_exports(client, admin)
    assert exported == [], "\n".join(exported)
    # The secrets did reach the device's configuration, where the terminal needs them.
    stored = (await client.get(f"/api/v1/devices/{device_id}", headers=admin)).json()
    assert stored["config"]["api_key"] == API_KEY
