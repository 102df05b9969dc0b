"""The insights API: every role reads the episodes, operators and admins handle them (audited),
bad parameters are refused with 422."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from homepot.db import utcnow
from homepot.insights.models import Anomaly
from tests.helpers import auth_headers, db_rows, rows
from tests.insights.fleetdata import add_history, create_site_with_hours

URL = "/api/v1/insights/anomalies"
T0 = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)


async def create_anomaly(
    app: FastAPI,
    *,
    device_id: str | None = "pos-1",
    site_id: str = "site-1",
    metric: str = "memory",
    started_at: datetime = T0,
    score: int = 60,
    ended: bool = False,
    expected_maintenance: bool = False,
) -> int:
    async with app.state.session_factory() as session:
        row = Anomaly(
            subject=device_id or f"site:{site_id}",
            device_id=device_id,
            site_id=site_id,
            metric=metric,
            detector="level",
            started_at=started_at,
            ended_at=started_at + timedelta(minutes=30) if ended else None,
            last_seen_at=started_at + timedelta(minutes=30),
            score=score,
            severity="critical" if score >= 75 else "warning" if score >= 45 else "info",
            observed=90.0,
            expected=50.0,
            explanation=f"{metric} 90 % vs a usual 50 ± 2 % at 09:00",
            status="resolved" if ended else "active",
            expected_maintenance=expected_maintenance,
        )
        session.add(row)
        await session.commit()
        return row.id


@pytest.mark.parametrize("role", [Role.admin, Role.operator, Role.viewer])
async def test_every_role_reads_the_anomalies_with_filters(
    app: FastAPI, client: AsyncClient, role: Role
) -> None:
    headers = await auth_headers(app, client, role)
    leak = await create_anomaly(app, device_id="pos-1", metric="memory", score=80)
    await create_anomaly(app, device_id="pos-2", metric="cpu", score=50)
    await create_anomaly(app, device_id="pos-1", metric="cpu", started_at=T0 - timedelta(days=2))

    everything = rows(await client.get(URL, headers=headers))
    assert [item["started_at"] for item in everything][0] == "2026-11-16T09:00:00Z"
    assert len(everything) == 3
    found = rows(await client.get(URL, headers=headers, params={"metric": "memory"}))
    assert [item["id"] for item in found] == [leak]
    assert found[0]["explanation"].startswith("memory 90 %")
    assert len(rows(await client.get(URL, headers=headers, params={"min_score": 75}))) == 1
    assert len(rows(await client.get(URL, headers=headers, params={"device_id": "pos-1"}))) == 2
    recent = await client.get(URL, headers=headers, params={"start_date": "2026-11-16"})
    assert len(rows(recent)) == 2


async def test_pages_follow_the_cursor(app: FastAPI, client: AsyncClient) -> None:
    headers = await auth_headers(app, client, Role.viewer)
    for hour in range(5):
        await create_anomaly(app, device_id=f"pos-{hour}", started_at=T0 + timedelta(hours=hour))
    first = await client.get(URL, headers=headers, params={"limit": 3})
    body = first.json()
    assert len(body["items"]) == 3
    second = await client.get(
        URL, headers=headers, params={"limit": 3, "cursor": body["next_cursor"]}
    )
    assert [item["device_id"] for item in second.json()["items"]] == ["pos-1", "pos-0"]
    assert second.json()["next_cursor"] is None


async def test_reading_needs_a_token(client: AsyncClient) -> None:
    assert (await client.get(URL)).status_code == 401
    assert (await client.get("/api/v1/insights/fleet")).status_code == 401
    assert (await client.patch(f"{URL}/1", json={"status": "resolved"})).status_code == 401


@pytest.mark.parametrize(
    "params",
    [
        {"devce_id": "pos-1"},
        {"min_score": "101"},
        {"metric": "temperature"},
        {"status": "open"},
        {"limit": "1001"},
        {"start_date": "2026-11-17", "end_date": "2026-11-16"},
        {"cursor": "not-a-cursor"},
    ],
)
async def test_bad_parameters_are_refused(
    app: FastAPI, client: AsyncClient, params: dict[str, str]
) -> None:
    headers = await auth_headers(app, client, Role.viewer)
    response = await client.get(URL, headers=headers, params=params)
    assert response.status_code == 422, response.text


async def test_viewer_cannot_acknowledge(app: FastAPI, client: AsyncClient) -> None:
    anomaly_id = await create_anomaly(app)
    headers = await auth_headers(app, client, Role.viewer)
    response = await client.patch(
        f"{URL}/{anomaly_id}", headers=headers, json={"status": "acknowledged"}
    )
    assert response.status_code == 403
    [row] = await db_rows(app, Anomaly, id=anomaly_id)
    assert row.status == "active"


@pytest.mark.parametrize("role", [Role.operator, Role.admin])
async def test_acknowledge_and_resolve_are_audited(
    app: FastAPI, client: AsyncClient, role: Role
) -> None:
    anomaly_id = await create_anomaly(app)
    headers = await auth_headers(app, client, role)

    acknowledged = await client.patch(
        f"{URL}/{anomaly_id}", headers=headers, json={"status": "acknowledged"}
    )
    resolved = await client.patch(
        f"{URL}/{anomaly_id}", headers=headers, json={"status": "resolved"}
    )

    assert acknowledged.status_code == 200, acknowledged.text
    assert acknowledged.json()["status"] == "acknowledged"
    assert resolved.json()["status"] == "resolved"
    audit = await db_rows(app, AuditLog, resource_type="anomaly", resource_id=str(anomaly_id))
    assert sorted(entry.action for entry in audit) == ["anomaly.acknowledged", "anomaly.resolved"]
    change = next(entry for entry in audit if entry.action == "anomaly.resolved")
    assert change.details["status"] == {"old": "acknowledged", "new": "resolved"}
    assert change.ip_address == "203.0.113.7"


async def test_patch_refuses_bad_bodies_and_unknown_ids(app: FastAPI, client: AsyncClient) -> None:
    anomaly_id = await create_anomaly(app)
    headers = await auth_headers(app, client, Role.operator)
    for body in ({"status": "closed"}, {"status": "resolved", "score": 0}, {}):
        response = await client.patch(f"{URL}/{anomaly_id}", headers=headers, json=body)
        assert response.status_code == 422, body
    missing = await client.patch(f"{URL}/999999", headers=headers, json={"status": "resolved"})
    assert missing.status_code == 404
    assert (
        await client.patch(f"{URL}/0", headers=headers, json={"status": "resolved"})
    ).status_code == 422


async def test_fleet_ranks_devices_by_their_active_anomalies(
    app: FastAPI, client: AsyncClient
) -> None:
    headers = await auth_headers(app, client, Role.viewer)
    await create_anomaly(app, device_id="pos-mild", score=50)
    await create_anomaly(app, device_id="pos-worst", score=90)
    await create_anomaly(app, device_id="pos-worst", metric="cpu", score=55)
    await create_anomaly(app, device_id="pos-over", score=99, ended=True)
    await create_anomaly(app, device_id="pos-night", score=95, expected_maintenance=True)

    response = await client.get("/api/v1/insights/fleet", headers=headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["risk_source"] == "anomalies"
    assert [
        (d["device_id"], d["worst_severity"], len(d["active_anomalies"])) for d in body["devices"]
    ] == [
        ("pos-worst", "critical", 2),
        ("pos-mild", "warning", 1),
    ]
    assert (
        await client.get("/api/v1/insights/fleet", headers=headers, params={"limit": 0})
    ).status_code == 422


async def test_fleet_ranks_by_the_newest_risk_score_once_a_model_has_scored(
    app: FastAPI, client: AsyncClient
) -> None:
    from homepot.insights.models import DeviceRisk

    headers = await auth_headers(app, client, Role.viewer)
    await create_anomaly(app, device_id="pos-noisy", score=80)
    now = datetime.now(UTC)
    async with app.state.session_factory() as session:
        for device_id, risk, at in (
            ("pos-leaking", 0.2, now - timedelta(minutes=10)),
            ("pos-leaking", 0.9, now),  # the newest row is the current risk
            ("pos-noisy", 0.3, now),
            ("pos-calm", 0.01, now),  # too low to be listed, and no episode
        ):
            session.add(
                DeviceRisk(
                    device_id=device_id,
                    site_id="site-1",
                    computed_at=at,
                    horizon_minutes=120,
                    risk=risk,
                    factors=[{"factor": "memory % trend", "value": "+5.0 per h"}],
                    model="gbm-20261130T120000Z",
                )
            )
        await session.commit()

    body = (await client.get("/api/v1/insights/fleet", headers=headers)).json()

    assert body["risk_source"] == "model"
    assert [(d["device_id"], d["risk"]["risk"]) for d in body["devices"]] == [
        ("pos-leaking", 0.9),
        ("pos-noisy", 0.3),
    ]
    leaking = body["devices"][0]
    assert (leaking["top_score"], leaking["active_anomalies"]) == (None, [])
    assert leaking["risk"]["factors"] == [{"factor": "memory % trend", "value": "+5.0 per h"}]


async def test_device_view_draws_each_metric_against_its_expected_band(
    app: FastAPI, client: AsyncClient
) -> None:
    now = utcnow()
    await create_site_with_hours(app.state.engine, "site-band", ["pos-band"])
    await add_history(app.state.engine, "pos-band", now - timedelta(days=15), now)
    recent = await create_anomaly(
        app, device_id="pos-band", site_id="site-band", started_at=now - timedelta(hours=1)
    )
    await create_anomaly(app, device_id="pos-band", started_at=now - timedelta(days=3), ended=True)
    headers = await auth_headers(app, client, Role.viewer)

    response = await client.get(
        "/api/v1/insights/devices/pos-band", headers=headers, params={"hours": 3}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["risk_source"] == "anomalies"
    assert [item["id"] for item in body["anomalies"]] == [recent]
    bands = {band["metric"]: band for band in body["bands"]}
    assert set(bands) >= {"cpu", "memory", "disk", "network_latency", "error_rate"}
    memory = bands["memory"]
    assert len(memory["times"]) == len(memory["observed"]) == 36
    complete = [i for i, value in enumerate(memory["observed"][:-1]) if value is not None]
    assert len(complete) >= 34
    # Two weeks of history: the device's own normal for that hour of the week.
    assert {memory["source"][i] for i in complete} == {"hour_of_week"}
    inside = [memory["lower"][i] <= memory["observed"][i] <= memory["upper"][i] for i in complete]
    assert sum(inside) >= 0.9 * len(complete)


async def test_device_view_refuses_unknown_devices_and_bad_hours(
    app: FastAPI, client: AsyncClient
) -> None:
    headers = await auth_headers(app, client, Role.viewer)
    url = "/api/v1/insights/devices/pos-none"
    assert (await client.get(url)).status_code == 401
    assert (await client.get(url, headers=headers)).status_code == 404
    assert (await client.get(url, headers=headers, params={"hours": 0})).status_code == 422
    assert (await client.get(url, headers=headers, params={"hours": 73})).status_code == 422
