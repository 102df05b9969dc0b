"""`homepot validate` and scripts/test-analytics.sh against a live server (uvicorn, real TCP)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from typer.testing import CliRunner, Result

from homepot import cli
from homepot.analytics.models import (
    ConfigurationHistory,
    DeviceStateHistory,
    JobOutcome,
    SiteOperatingSchedule,
)
from homepot.auth.models import Role
from homepot.db import Base, utcnow
from homepot.quality.validate import STREAMS
from tests.helpers import create_user
from tests.ports import free_port, refused_port
from tests.quality.seed import insert, metric

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "test-analytics.sh"
runner = CliRunner()


@pytest.fixture
async def server_url(app: FastAPI) -> AsyncIterator[str]:
    """The test app (its lifespan already running) served over TCP in this event loop."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # up to 10 s
        if server.started:
            break
        await asyncio.sleep(0.02)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


def device_stream_rows() -> list[Base]:
    """What a fleet would have sent in the last minutes: the four device-fed streams."""
    at = utcnow() - timedelta(minutes=2)
    return [
        DeviceStateHistory(timestamp=at, device_id="pos-1", new_state="online"),
        JobOutcome(timestamp=at, job_id="job-1", job_type="restart", status="success"),
        metric("pos-1", at),
        ConfigurationHistory(
            timestamp=at, entity_type="device", entity_id="pos-1", parameter_name="volume"
        ),
        SiteOperatingSchedule(site_id="site-1", day_of_week=0),
    ]


async def validate(url: str, *args: str) -> Result:
    """The command, in a thread: it runs its own event loop while the server runs in ours."""
    return await asyncio.to_thread(
        runner.invoke, cli.app, ["validate", "--url", url, *args], env={"COLUMNS": "200"}
    )


async def admin_credentials(app: FastAPI) -> list[str]:
    admin = await create_user(app, role=Role.admin)
    return ["--email", admin["email"], "--password", admin["password"]]


async def test_validate_prints_a_row_per_stream_and_passes_when_all_eight_collect(
    app: FastAPI, server_url: str
) -> None:
    await insert(app.state.settings.database_url, device_stream_rows())

    result = await validate(server_url, *await admin_credentials(app), "--wait", "20")

    assert result.exit_code == 0, result.output
    output = result.stdout
    assert "is up" in output
    for stream in STREAMS:
        # The summary table's row, not a progress line ("Waiting for: ..., User activities").
        row = next(
            line for line in output.splitlines() if "│" in line and f" {stream.name} " in line
        )
        assert stream.table in row
        assert "OK" in row
        assert "MISSING" not in row
    assert "GET /api/v1/devices/validate-missing-" in output  # the 404 test call
    assert "All 8 analytics streams are collecting." in output


async def test_validate_fails_naming_the_streams_that_collected_nothing(
    app: FastAPI, server_url: str
) -> None:
    result = await validate(server_url, *await admin_credentials(app), "--wait", "1")

    assert result.exit_code == 1
    missing = [
        "Device states",
        "Job outcomes",
        "Device metrics",
        "Configuration history",
        "Site schedules",
    ]
    assert f"no rows collected by: {', '.join(missing)}" in result.output
    # The streams the validation feeds itself did collect.
    for name in ("API requests", "Errors", "User activities"):
        row = next(line for line in result.stdout.splitlines() if f" {name} " in line)
        assert "OK" in row


async def test_validate_refuses_wrong_credentials_a_non_admin_and_a_server_that_is_down(
    app: FastAPI, server_url: str
) -> None:
    wrong = await validate(server_url, "--email", "nobody@example.com", "--password", "nope1234")
    assert wrong.exit_code == 1
    assert "login as nobody@example.com failed: incorrect e-mail or password" in wrong.output

    viewer = await create_user(app, role=Role.viewer)
    refused = await validate(
        server_url, "--email", viewer["email"], "--password", viewer["password"]
    )
    assert refused.exit_code == 1
    assert "is viewer; the analytics endpoints need an admin" in refused.output

    with refused_port() as closed:
        down = await validate(f"http://127.0.0.1:{closed}", "--password", "x")
    assert down.exit_code == 1
    assert "is not reachable" in down.output

    no_credentials = await asyncio.to_thread(
        runner.invoke, cli.app, ["validate", "--url", server_url], env={"COLUMNS": "200"}
    )
    assert no_credentials.exit_code == 2
    assert "no credentials" in no_credentials.output


async def test_the_script_wraps_validate_with_a_default_url(app: FastAPI, server_url: str) -> None:
    await insert(app.state.settings.database_url, device_stream_rows())
    admin = await create_user(app, role=Role.admin)
    env = {
        **os.environ,
        "HOMEPOT_URL": server_url,
        "HOMEPOT_VALIDATE_EMAIL": admin["email"],
        "HOMEPOT_VALIDATE_PASSWORD": admin["password"],
        "COLUMNS": "200",
    }

    completed = await asyncio.to_thread(
        subprocess.run,
        [str(SCRIPT), "--wait", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "All 8 analytics streams are collecting." in completed.stdout
