"""Configuration changes record the performance of the window before them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.analytics.config_history import change_config
from homepot.analytics.models import ConfigurationHistory, DeviceMetrics
from homepot.auth.models import Role
from homepot.db import utcnow
from homepot.device.models import Device
from homepot.site.models import Site
from tests.helpers import (
    auth_headers,
    create_device,
    create_site,
    create_user,
    db_rows,
    flush,
    login,
)

NO_SAMPLES = {
    "window_seconds": 600,
    "samples": 0,
    "avg_cpu_percent": None,
    "avg_memory_percent": None,
    "avg_error_rate": None,
    "avg_network_latency_ms": None,
    "transactions": None,
}


def record_metrics(app: FastAPI, device_id: str, at: datetime, **values: Any) -> None:
    app.state.recorder.record(DeviceMetrics, device_id=device_id, timestamp=at, **values)


async def test_device_patch_records_the_metrics_of_the_window_before_the_change(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id = await create_device(app, config={"max_connections": 10})
    other_id = await create_device(app)
    now = utcnow()
    record_metrics(
        app,
        device_id,
        now - timedelta(minutes=8),
        cpu_percent=40,
        memory_percent=50,
        error_rate=1.0,
        network_latency_ms=100,
        transaction_count=12,
    )
    record_metrics(
        app,
        device_id,
        now - timedelta(minutes=2),
        cpu_percent=60,
        memory_percent=70,
        error_rate=2.0,
        network_latency_ms=200,
        transaction_count=8,
    )
    # Outside the window, and another device: neither counts.
    record_metrics(app, device_id, now - timedelta(minutes=11), cpu_percent=99, error_rate=50)
    record_metrics(app, other_id, now - timedelta(minutes=1), cpu_percent=99, error_rate=50)
    await flush(app)
    user = await create_user(app, role=Role.operator)
    headers = await login(client, user["email"], user["password"])

    response = await client.patch(
        f"/api/v1/devices/{device_id}",
        json={"config": {"max_connections": 15}, "change_reason": "peak hours"},
        headers=headers,
    )
    assert response.status_code == 200, response.text

    await flush(app)
    [row] = await db_rows(app, ConfigurationHistory, entity_id=device_id)
    assert row.performance_before == {
        "window_seconds": 600,
        "samples": 2,
        "avg_cpu_percent": 50.0,
        "avg_memory_percent": 60.0,
        "avg_error_rate": 1.5,
        "avg_network_latency_ms": 150.0,
        "transactions": 20,
    }
    assert (row.change_type, row.changed_by, row.change_reason) == (
        "manual",
        user["id"],
        "peak hours",
    )
    assert row.performance_after is None
    assert row.was_successful is None
    assert row.was_rolled_back is False


async def test_site_patch_measures_the_devices_of_that_site(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app, config={"currency": "EUR"})
    first = await create_device(app, site_id=site_id)
    second = await create_device(app, site_id=site_id)
    elsewhere = await create_device(app)
    before = utcnow() - timedelta(minutes=3)
    record_metrics(app, first, before, error_rate=1.0, network_latency_ms=100)
    record_metrics(app, second, before, error_rate=3.0, network_latency_ms=300)
    record_metrics(app, elsewhere, before, error_rate=90.0, network_latency_ms=9000)
    await flush(app)
    operator = await auth_headers(app, client, Role.operator)

    response = await client.patch(
        f"/api/v1/sites/{site_id}", json={"config": {"currency": "USD"}}, headers=operator
    )
    assert response.status_code == 200, response.text

    await flush(app)
    [row] = await db_rows(app, ConfigurationHistory, entity_id=site_id)
    assert row.entity_type == "site"
    assert row.performance_before["samples"] == 2
    assert row.performance_before["avg_error_rate"] == 2.0
    assert row.performance_before["avg_network_latency_ms"] == 200.0


async def test_a_change_without_metrics_records_zero_samples(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id = await create_device(app, config={"printer": "usb"})
    operator = await auth_headers(app, client, Role.operator)
    response = await client.patch(
        f"/api/v1/devices/{device_id}", json={"config": {"printer": None}}, headers=operator
    )
    assert response.status_code == 200, response.text
    assert response.json()["config"] == {}

    await flush(app)
    [row] = await db_rows(app, ConfigurationHistory, entity_id=device_id)
    assert (row.old_value, row.new_value) == ({"value": "usb"}, None)
    assert row.performance_before == NO_SAMPLES


async def test_an_automated_change_is_recorded_as_automated_by_its_author(
    app: FastAPI,
) -> None:
    device_id = await create_device(app, config={"mode": "a", "volume": 3})
    async with app.state.session_factory() as session:
        device = await session.get(Device, device_id)
        assert device is not None
        changed = await change_config(
            session,
            app.state.recorder,
            entity_type="device",
            entity=device,
            patch={"mode": "b", "volume": 3, "beep": True},
            changed_by="job-123",
            reason="config_change job succeeded",
            change_type="automated",
            settings=app.state.settings,
        )
        await session.commit()
    assert changed == ["beep", "mode"]

    await flush(app)
    history = {r.parameter_name: r for r in await db_rows(app, ConfigurationHistory)}
    assert set(history) == {"beep", "mode"}
    assert history["beep"].old_value is None
    assert history["mode"].new_value == {"value": "b"}
    assert {(r.change_type, r.changed_by) for r in history.values()} == {("automated", "job-123")}
    assert {r.performance_before["samples"] for r in history.values()} == {0}
    [device_row] = await db_rows(app, Device, device_id=device_id)
    assert device_row.config == {"mode": "b", "volume": 3, "beep": True}


async def test_a_change_rolled_back_with_its_transaction_leaves_no_history(
    app: FastAPI,
) -> None:
    site_id = await create_site(app, config={"locale": "de"})
    async with app.state.session_factory() as session:
        site = await session.get(Site, site_id)
        assert site is not None
        await change_config(
            session,
            app.state.recorder,
            entity_type="site",
            entity=site,
            patch={"locale": "fr"},
            changed_by="system",
            reason=None,
            change_type="automated",
            settings=app.state.settings,
        )
        await session.rollback()

    await flush(app)
    assert await db_rows(app, ConfigurationHistory) == []
    [site_row] = await db_rows(app, Site, site_id=site_id)
    assert site_row.config == {"locale": "de"}


async def test_no_change_writes_nothing_and_bad_arguments_are_refused(app: FastAPI) -> None:
    device_id = await create_device(app, config={"volume": 3})
    async with app.state.session_factory() as session:
        device = await session.get(Device, device_id)
        assert device is not None
        arguments: dict[str, Any] = {
            "changed_by": "system",
            "reason": None,
            "settings": app.state.settings,
        }
        unchanged = await change_config(
            session,
            app.state.recorder,
            entity_type="device",
            entity=device,
            patch={"volume": 3, "absent": None},
            change_type="manual",
            **arguments,
        )
        assert unchanged == []
        with pytest.raises(ValueError, match="change_type must be one of"):
            await change_config(
                session,
                app.state.recorder,
                entity_type="device",
                entity=device,
                patch={"volume": 4},
                change_type="sometimes",  # type: ignore[arg-type]
                **arguments,
            )
        with pytest.raises(ValueError, match="does not match a Device"):
            await change_config(
                session,
                app.state.recorder,
                entity_type="site",
                entity=device,
                patch={"volume": 4},
                change_type="manual",
                **arguments,
            )
        await session.commit()

    await flush(app)
    assert await db_rows(app, ConfigurationHistory) == []
