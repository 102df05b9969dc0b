"""Configuration impact across the fleet: hand-built histories whose right answer is known."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import insert, select

from homepot.analytics.models import ConfigurationHistory, DeviceMetrics
from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from homepot.insights.config_impact import impact_id, value_key
from homepot.job.executions import finish
from homepot.job.models import Job, JobExecution
from homepot.protocol.messages import JobResult, JobResultStatus
from tests.helpers import auth_headers, create_device, create_site, db_rows, flush

IMPACT = "/api/v1/insights/config-impact"
# A change at 14:02 three days after the first day of metrics: three earlier days give each
# device its usual change across 14:00.
CHANGE_AT = datetime(2026, 11, 20, 14, 2, tzinfo=UTC)
SINCE = "2026-11-19T00:00:00+00:00"
UNTIL = "2026-11-21T00:00:00+00:00"
RANGE = {"since": SINCE, "until": UNTIL}


def _metrics(
    device_id: str,
    rng: random.Random,
    bump: dict[str, float],
    busy: float = 0.0,
    daily_rush: float = 0.0,
) -> list[dict[str, Any]]:
    """Samples every 5 minutes from 12:30 to 15:30 on the change's day and the 3 days before.

    ``bump`` is added after the change on the change's day (the configuration's effect),
    ``busy`` to every device after 14:00 that day (a fleet-wide rush), ``daily_rush`` after
    14:00 every day (its own site's daily cycle).
    """
    samples = []
    for days_ago in range(4):
        start = CHANGE_AT.replace(hour=12, minute=30) - timedelta(days=days_ago)
        for step in range(36):
            moment = start + timedelta(minutes=5 * step, seconds=30)
            after = days_ago == 0 and moment >= CHANGE_AT
            rush = busy if days_ago == 0 and moment.hour >= 14 else 0.0
            rush += daily_rush if moment.hour >= 14 else 0.0
            samples.append(
                {
                    "device_id": device_id,
                    "timestamp": moment,
                    "error_rate": 1.0
                    + rng.gauss(0, 0.15)
                    + rush
                    + (bump.get("error_rate", 0.0) if after else 0.0),
                    "network_latency_ms": 80 + rng.gauss(0, 4) + 10 * rush,
                    "cpu_percent": 20 + rng.gauss(0, 1.5) + 5 * rush,
                    "collection_interval_seconds": 300,
                }
            )
    return samples


async def _fleet(
    app: FastAPI,
    *,
    bad: int = 4,
    good: int = 4,
    untouched: int = 4,
    bad_rise: float = 4.0,
    busy: float = 0.0,
    bad_site_rush: float = 0.0,
) -> dict[str, list[str]]:
    """A site whose ``bad`` devices get config_version 2.6.1-rc3 at CHANGE_AT (the error rate
    rises by ``bad_rise`` points on them), ``good`` devices get 2.6.2 at the same moment (no
    effect) and ``untouched`` devices change nothing. ``bad_site_rush``: the bad devices' own
    site gets busier at 14:00 every day (the others sit at another site)."""
    site_id = await create_site(app)
    bad_site_id = await create_site(app) if bad_site_rush else site_id
    rng = random.Random(7)
    groups: dict[str, list[str]] = {"bad": [], "good": [], "untouched": []}
    rows: list[dict[str, Any]] = []
    history = []
    for group, count in (("bad", bad), ("good", good), ("untouched", untouched)):
        for _ in range(count):
            version = {"bad": "2.6.1-rc3", "good": "2.6.2"}.get(group, "2.6.0")
            device_id = await create_device(
                app,
                site_id=bad_site_id if group == "bad" else site_id,
                config={"config_version": version},
            )
            groups[group].append(device_id)
            bump = {"error_rate": bad_rise} if group == "bad" else {}
            rush = bad_site_rush if group == "bad" else 0.0
            rows.extend(_metrics(device_id, rng, bump, busy, rush))
            if group != "untouched":
                history.append(
                    {
                        "timestamp": CHANGE_AT,
                        "entity_type": "device",
                        "entity_id": device_id,
                        "parameter_name": "config_version",
                        "old_value": {"value": "2.6.0"},
                        "new_value": {"value": version},
                        "changed_by": "system",
                        "change_type": "automated",
                    }
                )
    async with app.state.session_factory() as session:
        await session.execute(insert(DeviceMetrics), rows)
        await session.execute(insert(ConfigurationHistory), history)
        await session.commit()
    return groups


def _row(report: dict[str, Any], value: str) -> dict[str, Any]:
    return next(row for row in report["rows"] if row["value"] == value)


def _metric(row: dict[str, Any], name: str) -> dict[str, Any]:
    return next(metric for metric in row["metrics"] if metric["metric"] == name)


async def test_a_bad_version_is_a_regression_and_a_good_one_made_at_the_same_time_is_not(
    app: FastAPI, client: AsyncClient
) -> None:
    groups = await _fleet(app)
    viewer = await auth_headers(app, client, Role.viewer)

    response = await client.get(
        IMPACT, params={**RANGE, "parameter": "config_version"}, headers=viewer
    )

    assert response.status_code == 200, response.text
    report = response.json()
    assert [row["value"] for row in report["rows"]] == ["2.6.1-rc3", "2.6.2"]  # by harm
    bad = _row(report, "2.6.1-rc3")
    assert bad["verdict"] == "regression"
    assert bad["id"] == impact_id("config_version", value_key({"value": "2.6.1-rc3"}))
    error_rate = _metric(bad, "error_rate")
    assert error_rate["devices"] == 4
    assert 3.5 < error_rate["effect"] < 4.5
    assert 0 < error_rate["ci_low"] < error_rate["effect"] < error_rate["ci_high"]
    assert "error rate" in bad["explanation"]
    assert bad["rollback"] == [{"value": "2.6.0", "devices": sorted(groups["bad"])}]
    good = _row(report, "2.6.2")
    assert good["verdict"] == "no_effect"
    assert good["rollback"] is None
    assert abs(_metric(good, "error_rate")["effect"]) < 0.3


async def test_a_fleet_wide_rush_does_not_blame_the_configuration(
    app: FastAPI, client: AsyncClient
) -> None:
    # Every device's error rate, latency and CPU rise at 14:00, changed or not: no regression.
    await _fleet(app, bad_rise=0.0, busy=3.0)
    viewer = await auth_headers(app, client, Role.viewer)

    report = (await client.get(IMPACT, params=RANGE, headers=viewer)).json()

    verdicts = {row["value"]: row["verdict"] for row in report["rows"]}
    assert verdicts == {"2.6.1-rc3": "no_effect", "2.6.2": "no_effect"}


async def test_a_change_made_at_its_sites_daily_rush_is_not_blamed_for_it(
    app: FastAPI, client: AsyncClient
) -> None:
    # The version reaches a site whose terminals get busier at 14:00 every day; the control
    # devices, at another site, do not. The days before show that rush is its usual.
    await _fleet(app, bad_rise=0.0, good=0, bad_site_rush=3.0)
    viewer = await auth_headers(app, client, Role.viewer)

    report = (await client.get(IMPACT, params=RANGE, headers=viewer)).json()

    (row,) = report["rows"]
    assert row["verdict"] == "no_effect", row
    assert abs(_metric(row, "error_rate")["effect"]) < 0.5


async def test_too_few_devices_is_not_enough_data(app: FastAPI, client: AsyncClient) -> None:
    await _fleet(app, bad=2, good=0, untouched=5)
    viewer = await auth_headers(app, client, Role.viewer)

    report = (await client.get(IMPACT, params=RANGE, headers=viewer)).json()

    (row,) = report["rows"]
    assert row["verdict"] == "not_enough_data"
    assert row["devices"] == 2
    assert row["rollback"] is None


async def test_bad_parameters_are_refused(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)

    assert (await client.get(IMPACT)).status_code == 401
    for params in (
        {"window_minutes": "5"},
        {"since": "2026-11-21T00:00:00Z", "until": "2026-11-20T00:00:00Z"},
        {"since": "2026-01-01T00:00:00Z", "until": "2026-11-20T00:00:00Z"},
        {"since": "yesterday"},
        {"device": "x"},
    ):
        response = await client.get(IMPACT, params=params, headers=viewer)
        assert response.status_code == 422, (params, response.text)


async def test_accepting_the_rollback_creates_jobs_whose_success_is_ai_recommended(
    app: FastAPI, client: AsyncClient
) -> None:
    groups = await _fleet(app)
    viewer = await auth_headers(app, client, Role.viewer)
    operator = await auth_headers(app, client, Role.operator)
    report = (await client.get(IMPACT, params=RANGE, headers=viewer)).json()
    bad, good = _row(report, "2.6.1-rc3"), _row(report, "2.6.2")
    url = f"{IMPACT}/{bad['id']}/apply"

    assert (await client.post(url, json=RANGE)).status_code == 401
    assert (await client.post(url, json=RANGE, headers=viewer)).status_code == 403
    assert (await client.post(f"{IMPACT}/nope/apply", headers=operator)).status_code == 422
    unknown = await client.post(f"{IMPACT}/{'0' * 20}/apply", json=RANGE, headers=operator)
    assert unknown.status_code == 404
    not_bad = await client.post(f"{IMPACT}/{good['id']}/apply", json=RANGE, headers=operator)
    assert not_bad.status_code == 409
    assert "no_effect" in not_bad.text
    # Nothing happened on its own: no job until an operator accepts.
    assert await db_rows(app, Job) == []

    response = await client.post(url, json=RANGE, headers=operator)

    assert response.status_code == 200, response.text
    applied = response.json()
    assert sorted(applied["devices"]) == sorted(groups["bad"])
    jobs = await db_rows(app, Job)
    assert len(jobs) == 4
    assert {job.target_id for job in jobs} == set(groups["bad"])
    assert all(job.payload["config"] == {"config_version": "2.6.0"} for job in jobs)
    (audit,) = await db_rows(app, AuditLog, action="config_impact.apply")
    assert audit.resource_id == bad["id"]
    # Accepting twice does not send the devices a second job while the first is pending.
    again = (await client.post(url, json=RANGE, headers=operator)).json()
    assert again["job_ids"] == []
    assert sorted(again["already_pending"]) == sorted(groups["bad"])

    # A device runs its job: the rollback is recorded as an accepted recommendation.
    device_id = jobs[0].target_id
    async with app.state.session_factory() as session:
        execution = await session.scalar(
            select(JobExecution).where(JobExecution.job_id == jobs[0].job_id)
        )
        assert execution is not None
        await finish(
            session,
            app.state.recorder,
            device_id,
            JobResult(execution_id=execution.id, status=JobResultStatus.success),
            settings=app.state.settings,
        )
        await session.commit()
    await flush(app)
    (row,) = await db_rows(
        app, ConfigurationHistory, entity_id=device_id, change_type="ai_recommended"
    )
    assert (row.old_value, row.new_value) == ({"value": "2.6.1-rc3"}, {"value": "2.6.0"})
