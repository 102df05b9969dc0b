"""Job executions through the API: expansion, the device's ack/result, polling, cancel."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.analytics.models import ErrorLog, JobOutcome
from homepot.auth.models import Role
from homepot.config import Settings
from homepot.db import utcnow
from homepot.job.orchestrator import run_pass
from tests.helpers import (
    auth_headers,
    create_registered_device,
    create_site,
    create_user,
    db_rows,
    flush,
    login,
)
from tests.job.orchestration import (
    ACK_TIMEOUT,
    AGENT_JOBS,
    JOBS,
    RecordingChannel,
    create_job,
    executions_of,
    manual_orchestrator,
    read_job,
    report,
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return manual_orchestrator(settings)


async def test_a_job_gets_one_execution_per_target_device(
    app: FastAPI, client: AsyncClient
) -> None:
    site_a, site_b = await create_site(app), await create_site(app)
    till, _ = await create_registered_device(app, client, site_id=site_a)
    kiosk, _ = await create_registered_device(app, client, site_id=site_a, device_type="kiosk")
    other_till, _ = await create_registered_device(app, client, site_id=site_b)
    operator = await auth_headers(app, client, Role.operator)

    expected = {
        ("device", till): [till],
        ("site", site_a): sorted([till, kiosk]),
        ("device_type", "pos_terminal"): sorted([till, other_till]),
    }
    for (target_type, target_id), devices in expected.items():
        job = await create_job(client, operator, target_type=target_type, target_id=target_id)
        assert job["status"] == "pending"
        assert job["scheduled_for"] is None
        assert [e["device_id"] for e in job["executions"]] == devices
        created = datetime.fromisoformat(job["created_at"])
        for execution in job["executions"]:
            assert execution["status"] == "pending"
            assert execution["attempt"] == 0
            assert datetime.fromisoformat(execution["not_before"]) == created
            assert execution["dispatched_at"] is None
        assert await read_job(client, operator, job["job_id"]) == job


async def test_a_target_without_devices_completes_at_once(
    app: FastAPI, client: AsyncClient
) -> None:
    empty_site = await create_site(app)
    operator = await auth_headers(app, client, Role.operator)
    for target_type, target_id in [("site", empty_site), ("device_type", "scale")]:
        job = await create_job(client, operator, target_type=target_type, target_id=target_id)
        assert job["status"] == "completed"
        assert job["executions"] == []
        assert job["completed_at"] is not None
    await flush(app)
    assert await db_rows(app, JobOutcome) == []


async def test_push_ack_and_result_give_one_success_outcome(
    app: FastAPI, client: AsyncClient
) -> None:
    channel = RecordingChannel()
    app.state.push_channel = channel
    device_id, device = await create_registered_device(app, client)
    operator_user = await create_user(app, role=Role.operator)
    operator = await login(client, operator_user["email"], operator_user["password"])
    job = await create_job(client, operator, target_id=device_id, payload={"mode": "soft"})
    passed = await run_pass(app)

    assert (passed.dispatched, passed.pushed) == (1, 1)
    ((pushed_to, command),) = channel.pushed
    assert pushed_to == device_id
    assert (command.job_id, command.job_type, command.attempt) == (job["job_id"], "restart", 0)
    assert command.payload == {"mode": "soft"}
    execution_id = command.execution_id

    acked = await client.post(f"{AGENT_JOBS}/{execution_id}/ack", headers=device)
    assert acked.status_code == 200, acked.text
    assert acked.json()["status"] == "running"
    running = await read_job(client, operator, job["job_id"])
    assert running["status"] == "running"
    assert running["executions"][0]["acked_at"] is not None

    answer = await report(client, device, execution_id, output={"uptime_seconds": 2})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["accepted"], answer.json()["status"]) == (True, "success")

    done = await read_job(client, operator, job["job_id"])
    assert done["status"] == "completed"
    assert done["completed_at"] is not None
    (execution,) = done["executions"]
    assert execution["status"] == "success"
    assert execution["delivery"] == "push"
    assert execution["result"]["output"] == {"uptime_seconds": 2}

    # A resent result is ignored and says so; the outcome is stored once.
    again = await report(client, device, execution_id)
    assert again.status_code == 200
    assert again.json()["accepted"] is False
    assert "already finished as success" in again.json()["detail"]
    await flush(app)
    (outcome,) = await db_rows(app, JobOutcome, job_id=job["job_id"])
    assert (outcome.device_id, outcome.status, outcome.job_type) == (
        device_id,
        "success",
        "restart",
    )
    assert outcome.retry_count == 0
    assert outcome.error_code is None
    assert outcome.initiated_by == operator_user["id"]
    (stored,) = await executions_of(app, job["job_id"])
    assert stored.finished_at is not None
    assert stored.first_dispatched_at is not None
    elapsed = stored.finished_at - stored.first_dispatched_at
    assert outcome.duration_ms == round(elapsed.total_seconds() * 1000)
    assert outcome.extra_data["execution_id"] == execution_id
    assert outcome.extra_data["delivery"] == "push"
    assert outcome.extra_data["attempts"] == 1
    assert outcome.extra_data["site_id"]


async def test_a_failed_result_fails_the_job_with_the_devices_error(
    app: FastAPI, client: AsyncClient
) -> None:
    app.state.push_channel = RecordingChannel()
    device_id, device = await create_registered_device(app, client)
    operator = await auth_headers(app, client, Role.operator)
    job = await create_job(client, operator, target_id=device_id)
    await run_pass(app)
    (execution,) = await executions_of(app, job["job_id"])

    no_code = await report(client, device, execution.id, "failed")
    assert no_code.status_code == 422
    assert "error_code" in no_code.text
    failed = await report(
        client, device, execution.id, "failed", error_code="E_PRINTER", error_message="jammed"
    )
    assert failed.status_code == 200
    assert failed.json()["status"] == "failed"

    done = await read_job(client, operator, job["job_id"])
    assert done["status"] == "failed"
    assert done["executions"][0]["error_code"] == "E_PRINTER"
    await flush(app)
    (outcome,) = await db_rows(app, JobOutcome, job_id=job["job_id"])
    assert (outcome.status, outcome.error_code, outcome.error_message) == (
        "failed",
        "E_PRINTER",
        "jammed",
    )


async def test_a_device_cannot_touch_another_devices_execution(
    app: FastAPI, client: AsyncClient
) -> None:
    app.state.push_channel = RecordingChannel()
    mine, my_key = await create_registered_device(app, client)
    theirs, _ = await create_registered_device(app, client)
    operator = await auth_headers(app, client, Role.operator)
    job = await create_job(client, operator, target_id=theirs)
    await run_pass(app)
    (execution,) = await executions_of(app, job["job_id"])

    as_them = await report(client, my_key, execution.id, device_id=theirs)
    assert as_them.status_code == 403
    assert as_them.json()["detail"] == f"this key belongs to {mine}; it cannot act for {theirs}"
    foreign = await report(client, my_key, execution.id)
    assert foreign.status_code == 404
    assert foreign.json()["detail"] == f"execution {execution.id} does not exist for device {mine}"
    foreign_ack = await client.post(f"{AGENT_JOBS}/{execution.id}/ack", headers=my_key)
    assert foreign_ack.status_code == 404
    assert (await client.get(AGENT_JOBS, headers=my_key)).json() == []
    unauthenticated = await client.post(
        f"{AGENT_JOBS}/{execution.id}/result",
        json={"execution_id": execution.id, "status": "success"},
    )
    assert unauthenticated.status_code == 401
    mismatch = await client.post(
        f"{AGENT_JOBS}/{execution.id}/result",
        json={"execution_id": execution.id + 1, "status": "success"},
        headers=my_key,
    )
    assert mismatch.status_code == 422
    assert "does not match" in mismatch.text

    (unchanged,) = await executions_of(app, job["job_id"])
    assert unchanged.status.value == "dispatched"


async def test_an_unacknowledged_push_is_left_for_polling(
    app: FastAPI, client: AsyncClient
) -> None:
    channel = RecordingChannel()
    app.state.push_channel = channel
    device_id, device = await create_registered_device(app, client)
    operator = await auth_headers(app, client, Role.operator)
    job = await create_job(client, operator, target_id=device_id)
    pushed_at = utcnow()
    await run_pass(app, now=pushed_at)
    assert len(channel.pushed) == 1

    # While the acknowledgement may still come, polling does not hand the job out twice.
    assert (await client.get(AGENT_JOBS, headers=device)).json() == []

    later = await run_pass(app, now=pushed_at + timedelta(seconds=ACK_TIMEOUT + 1))
    assert later.left_for_polling == 1
    (execution,) = await executions_of(app, job["job_id"])
    assert execution.delivery == "poll"
    polled = await client.get(AGENT_JOBS, headers=device)
    assert polled.status_code == 200
    (command,) = polled.json()
    assert (command["execution_id"], command["job_id"]) == (execution.id, job["job_id"])

    assert (await client.post(f"{AGENT_JOBS}/{execution.id}/ack", headers=device)).json()[
        "status"
    ] == "running"
    assert (await client.get(AGENT_JOBS, headers=device)).json() == []
    assert (await report(client, device, execution.id)).json()["accepted"] is True
    await flush(app)
    (outcome,) = await db_rows(app, JobOutcome, job_id=job["job_id"])
    assert outcome.extra_data["delivery"] == "poll"
    (unacknowledged,) = await db_rows(app, ErrorLog, error_code="JOB_PUSH_UNACKNOWLEDGED")
    assert unacknowledged.device_id == device_id


async def test_without_a_push_channel_devices_poll_their_jobs(
    app: FastAPI, client: AsyncClient
) -> None:
    app.state.push_channel = None
    device_id, device = await create_registered_device(app, client)
    operator = await auth_headers(app, client, Role.operator)
    first = await create_job(client, operator, target_id=device_id, priority=2)
    urgent = await create_job(client, operator, target_id=device_id, priority=9)

    # A due execution is handed out by polling even before the orchestrator's pass.
    polled = await client.get(AGENT_JOBS, params={"limit": 1}, headers=device)
    assert [c["job_id"] for c in polled.json()] == [urgent["job_id"]]
    passed = await run_pass(app)
    assert (passed.dispatched, passed.pushed) == (1, 0)
    # Until a device acknowledges a command, every poll hands it out again, urgent first.
    polled = await client.get(AGENT_JOBS, headers=device)
    assert [c["job_id"] for c in polled.json()] == [urgent["job_id"], first["job_id"]]
    for job in (first, urgent):
        (execution,) = await executions_of(app, job["job_id"])
        assert (execution.status.value, execution.delivery) == ("dispatched", "poll")
    assert (await client.get(AGENT_JOBS, params={"limit": 0}, headers=device)).status_code == 422


async def test_acknowledging_an_execution_that_waits_is_a_conflict(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, device = await create_registered_device(app, client)
    operator = await auth_headers(app, client, Role.operator)
    job = await create_job(client, operator, target_id=device_id)
    (execution,) = await executions_of(app, job["job_id"])
    response = await client.post(f"{AGENT_JOBS}/{execution.id}/ack", headers=device)
    assert response.status_code == 409
    assert "is not dispatched to this device now" in response.json()["detail"]


async def test_cancel_finishes_every_unfinished_execution_as_cancelled(
    app: FastAPI, client: AsyncClient
) -> None:
    app.state.push_channel = RecordingChannel()
    site_id = await create_site(app)
    done_id, done_key = await create_registered_device(app, client, site_id=site_id)
    busy_id, busy_key = await create_registered_device(app, client, site_id=site_id)
    operator_user = await create_user(app, role=Role.operator)
    operator = await login(client, operator_user["email"], operator_user["password"])
    viewer = await auth_headers(app, client, Role.viewer)
    job = await create_job(client, operator, target_type="site", target_id=site_id)
    await run_pass(app)
    by_device = {e.device_id: e for e in await executions_of(app, job["job_id"])}
    assert (await report(client, done_key, by_device[done_id].id)).status_code == 200

    cancel = f"{JOBS}/{job['job_id']}/cancel"
    assert (await client.post(cancel, headers=viewer)).status_code == 403
    cancelled = await client.post(cancel, headers=operator)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    statuses = {e["device_id"]: e["status"] for e in cancelled.json()["executions"]}
    assert statuses == {done_id: "success", busy_id: "cancelled"}

    late = await report(client, busy_key, by_device[busy_id].id)
    assert late.json()["accepted"] is False
    assert "already finished as cancelled" in late.json()["detail"]
    again = await client.post(cancel, headers=operator)
    assert again.status_code == 200
    assert again.json() == cancelled.json()

    await flush(app)
    outcomes = {o.device_id: o for o in await db_rows(app, JobOutcome, job_id=job["job_id"])}
    assert {d: o.status for d, o in outcomes.items()} == {done_id: "success", busy_id: "cancelled"}
    assert outcomes[busy_id].initiated_by == operator_user["id"]
    assert outcomes[busy_id].duration_ms is not None
    assert outcomes[busy_id].extra_data["cancelled_by"] == operator_user["id"]


async def test_cancelling_waiting_finished_or_unknown_jobs(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, device = await create_registered_device(app, client)
    operator = await auth_headers(app, client, Role.operator)
    waiting = await create_job(client, operator, target_id=device_id)
    cancelled = await client.post(f"{JOBS}/{waiting['job_id']}/cancel", headers=operator)
    assert cancelled.json()["executions"][0]["status"] == "cancelled"
    await flush(app)
    (outcome,) = await db_rows(app, JobOutcome, job_id=waiting["job_id"])
    assert outcome.status == "cancelled"
    assert outcome.duration_ms is None  # never dispatched
    assert outcome.extra_data["attempts"] == 0

    finished = await create_job(client, operator, target_id=device_id)
    await run_pass(app)
    (execution,) = await executions_of(app, finished["job_id"])
    await report(client, device, execution.id)
    conflict = await client.post(f"{JOBS}/{finished['job_id']}/cancel", headers=operator)
    assert conflict.status_code == 409
    assert conflict.json()["detail"] == (
        f"job {finished['job_id']!r} has already completed; nothing to cancel"
    )
    missing = await client.post(f"{JOBS}/job-000000000000/cancel", headers=operator)
    assert missing.status_code == 404
    assert missing.json()["detail"] == "job 'job-000000000000' does not exist"


@pytest.mark.parametrize(
    ("job_type", "payload", "message"),
    [
        ("config_change", {"config": "volume=3"}, "payload.config must be an object"),
        ("firmware_update", {"version": ""}, "payload.version must be a firmware version"),
    ],
)
async def test_a_payload_that_could_not_be_applied_is_refused(
    app: FastAPI, client: AsyncClient, job_type: str, payload: dict[str, str], message: str
) -> None:
    device_id, _ = await create_registered_device(app, client)
    operator = await auth_headers(app, client, Role.operator)
    response = await client.post(
        JOBS,
        json={
            "job_type": job_type,
            "target_type": "device",
            "target_id": device_id,
            "payload": payload,
        },
        headers=operator,
    )
    assert response.status_code == 422
    assert message in response.text
