"""Job success odds: small hand-built histories whose right answer is known."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.analytics.models import DeviceStateHistory, JobOutcome
from homepot.auth.models import Role
from homepot.insights import job_advice
from homepot.insights.job_success import PRIOR_STRENGTH
from tests.helpers import auth_headers, create_device, create_site

ODDS = "/api/v1/insights/job-success"


@pytest.fixture(autouse=True)
def _no_model_between_tests() -> None:
    job_advice._fitted.clear()


async def create_job_outcomes(app: FastAPI, rows: list[tuple[str, str, str, datetime]]) -> None:
    """(device_id, job_type, status, finished) rows, each job one minute long."""
    async with app.state.session_factory() as session:
        for number, (device_id, job_type, status, finished) in enumerate(rows):
            session.add(
                JobOutcome(
                    timestamp=finished,
                    job_id=f"job-{number}",
                    job_type=job_type,
                    device_id=device_id,
                    status=status,
                    duration_ms=60_000,
                    error_code=None if status == "success" else "E_TEST",
                )
            )
        await session.commit()


def _shrink(successes: int, outcomes: int, prior: float, strength: float) -> float:
    return (successes + strength * prior) / (outcomes + strength)


async def _ask(client: AsyncClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = await client.get(ODDS, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_a_terminal_whose_updates_time_out_is_the_riskiest_and_says_why(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    flaky = await create_device(app, site_id=site_id, device_id="pos-flaky")
    steady = await create_device(app, site_id=site_id, device_id="pos-steady")
    newcomer = await create_device(app, site_id=site_id, device_id="pos-new")
    start = datetime.now(UTC) - timedelta(days=5)
    history = [
        (flaky, "firmware_update", status, start + timedelta(days=day))
        for day, status in enumerate(("timeout", "success", "timeout", "timeout"))
    ] + [
        (steady, "firmware_update", "success", start + timedelta(days=day, hours=1))
        for day in range(4)
    ]
    await create_job_outcomes(app, history)
    viewer = await auth_headers(app, client, Role.viewer)

    advice = await _ask(client, viewer, job_type="firmware_update", site_id=site_id)

    # Shrinkage by hand: fleet (all types) → firmware updates → the site → the terminal.
    fleet = _shrink(5, 8, 0.9, 2.0)
    job_type = _shrink(5, 8, fleet, PRIOR_STRENGTH["job_type"])
    site = _shrink(5, 8, job_type, PRIOR_STRENGTH["site"])
    expected = {
        flaky: _shrink(1, 4, site, PRIOR_STRENGTH["device"]),
        steady: _shrink(4, 4, site, PRIOR_STRENGTH["device"]),
        newcomer: site,
    }
    assert advice["model"] == "shrinkage"  # 8 outcomes: too few to fit the context model
    assert [item["device_id"] for item in advice["items"]] == [flaky, newcomer, steady]
    for item in advice["items"]:
        assert item["probability"] == pytest.approx(expected[item["device_id"]], abs=1e-4)
    flaky_row, new_row, steady_row = advice["items"]
    assert flaky_row["basis"] == {"device": 4, "site": 8, "job_type": 8, "fleet": 8}
    assert new_row["basis"]["device"] == 0
    assert flaky_row["reasons"][0] == (
        "3 of the last 4 firmware updates on this terminal timed out"
    )
    assert steady_row["reasons"][0] == (
        "The last 4 firmware updates on this terminal all succeeded"
    )
    assert new_row["reasons"][0].startswith(
        "No firmware update has run on this terminal yet; at its site 5 of 8 succeeded"
    )
    assert advice["job_type_rate"] == pytest.approx(5 / 8)
    assert advice["expected_success_rate"] == pytest.approx(sum(expected.values()) / 3, abs=1e-4)


async def test_a_new_fleet_gets_the_prior_and_other_job_types_only_inform_the_fleet_level(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id = await create_device(app)
    viewer = await auth_headers(app, client, Role.viewer)

    empty = await _ask(client, viewer, job_type="restart", device_id=device_id)

    assert empty["items"][0]["probability"] == pytest.approx(0.9)
    assert empty["items"][0]["basis"] == {"device": 0, "site": 0, "job_type": 0, "fleet": 0}
    assert "the estimate is a prior" in empty["items"][0]["reasons"][0]
    assert empty["job_type_rate"] is None

    other = await create_device(app)
    moment = datetime.now(UTC) - timedelta(hours=3)
    await create_job_outcomes(app, [(other, "health_check", "failed", moment)] * 1)
    after = await _ask(client, viewer, job_type="restart", device_id=device_id)

    assert after["items"][0]["probability"] == pytest.approx(_shrink(0, 1, 0.9, 2.0), abs=1e-4)
    assert after["items"][0]["basis"]["fleet"] == 1


async def test_the_context_model_learns_that_jobs_fail_on_a_terminal_that_is_down(
    app: FastAPI, client: AsyncClient
) -> None:
    """120 health checks on 6 terminals: every one that ran while its terminal was offline failed,
    the others succeeded. The fitted model must put an offline terminal far below an online
    one of the same record, and say it is offline."""
    site_id = await create_site(app)
    devices = [await create_device(app, site_id=site_id, device_id=f"pos-{n}") for n in range(6)]
    now = datetime.now(UTC)
    start = now - timedelta(days=20)
    rows: list[tuple[str, str, str, datetime]] = []
    async with app.state.session_factory() as session:
        for slot in range(20):
            for index, device_id in enumerate(devices):
                moment = start + timedelta(days=slot, hours=index)
                down = (slot + index) % 4 == 0
                state = "offline" if down else "online"
                session.add(
                    DeviceStateHistory(
                        timestamp=moment - timedelta(minutes=30),
                        device_id=device_id,
                        new_state=state,
                    )
                )
                rows.append((device_id, "health_check", "timeout" if down else "success", moment))
        # Now: pos-0 is offline, pos-1 online.
        for device_id, state in ((devices[0], "offline"), (devices[1], "online")):
            session.add(
                DeviceStateHistory(
                    timestamp=now - timedelta(minutes=5), device_id=device_id, new_state=state
                )
            )
        await session.commit()
    await create_job_outcomes(app, rows)
    viewer = await auth_headers(app, client, Role.viewer)

    down = await _ask(client, viewer, job_type="health_check", device_id=devices[0])
    up = await _ask(client, viewer, job_type="health_check", device_id=devices[1])

    assert down["model"] == "shrinkage+context"
    assert down["trained_on"] == 120
    assert down["items"][0]["probability"] < 0.3
    assert up["items"][0]["probability"] > 0.9
    assert down["items"][0]["reasons"][0].startswith("It is offline now (since ")


async def test_the_endpoint_refuses_what_it_cannot_answer(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    device_id = await create_device(app, site_id=site_id)
    viewer = await auth_headers(app, client, Role.viewer)

    assert (
        await client.get(ODDS, params={"job_type": "restart", "site_id": site_id})
    ).status_code == 401
    for bad in (
        {"job_type": "restart"},
        {"job_type": "restart", "site_id": site_id, "device_id": device_id},
        {"job_type": "reboot_twice", "site_id": site_id},
        {"site_id": site_id},
        {"job_type": "restart", "site_id": site_id, "lookback_days": 0},
        {"job_type": "restart", "site_id": site_id, "target": "all"},
    ):
        response = await client.get(ODDS, params=bad, headers=viewer)
        assert response.status_code == 422, (bad, response.text)
    unknown = "exactly one of device_id and site_id"
    both = await client.get(ODDS, params={"job_type": "restart"}, headers=viewer)
    assert unknown in both.text
    nul = await client.get(
        ODDS, params={"job_type": "restart", "device_id": "pos\x00evil"}, headers=viewer
    )
    assert nul.status_code in (404, 422), nul.text
    for missing in ({"device_id": "no-such-device"}, {"site_id": "no-such-site"}):
        response = await client.get(ODDS, params={"job_type": "restart", **missing}, headers=viewer)
        assert response.status_code == 404
        assert next(iter(missing.values())) in response.text
