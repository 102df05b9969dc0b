"""The spec's own integration snippets run unchanged against our modules."""

from __future__ import annotations

from datetime import time

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tests.helpers import flush


async def test_spec_model_snippets_add_rows_with_a_session(app: FastAPI) -> None:
    from homepot.app.models.AnalyticsModel import (
        ConfigurationHistory,
        DeviceMetrics,
        DeviceStateHistory,
        JobOutcome,
        SiteOperatingSchedule,
    )

    async with app.state.session_factory() as db:
        # When device state changes
        db.add(
            DeviceStateHistory(
                device_id="dev_001",
                previous_state="online",
                new_state="offline",
                changed_by="user123",
                reason="User-initiated maintenance",
            )
        )
        # After job completion
        db.add(
            JobOutcome(
                job_id="job_456",
                job_type="firmware_update",
                device_id="dev_001",
                status="success",
                duration_ms=3500,
                initiated_by="user123",
            )
        )
        db.add(
            DeviceMetrics(
                device_id="dev_001",
                cpu_percent=45.2,
                memory_percent=62.8,
                disk_percent=38.5,
                network_latency_ms=12.0,
                transaction_count=156,
                transaction_volume=2310.5,
                error_rate=0.64,
            )
        )
        db.add(
            ConfigurationHistory(
                entity_type="device",
                entity_id="dev_001",
                parameter_name="max_connections",
                old_value={"value": 10},
                new_value={"value": 15},
                changed_by="user123",
                change_reason="Increased load during peak hours",
                change_type="manual",
                performance_before={"avg_response_time": 145, "error_rate": 1.2},
                performance_after={"avg_response_time": 98, "error_rate": 0.3},
                was_successful=True,
            )
        )
        db.add(
            SiteOperatingSchedule(
                site_id="site_001",
                day_of_week=0,  # Monday
                open_time=time(8, 0),
                close_time=time(22, 0),
                is_maintenance_window=False,
                expected_transaction_volume=500,
                peak_hours_start=time(12, 0),
                peak_hours_end=time(14, 0),
                notes="Regular business day",
            )
        )
        await db.commit()

    async with app.state.session_factory() as db:
        state = (await db.scalars(select(DeviceStateHistory))).one()
        assert (state.previous_state, state.new_state) == ("online", "offline")
        assert state.timestamp.tzinfo is not None
        assert state.event_id
        outcome = (await db.scalars(select(JobOutcome))).one()
        assert outcome.retry_count == 0
        assert outcome.duration_ms == 3500
        change = (await db.scalars(select(ConfigurationHistory))).one()
        assert change.new_value == {"value": 15}
        assert change.was_rolled_back is False
        schedule = (await db.scalars(select(SiteOperatingSchedule))).one()
        assert schedule.open_time == time(8, 0)
        assert schedule.peak_hours_end == time(14, 0)
        assert (await db.scalars(select(DeviceMetrics))).one().transaction_count == 156


async def test_spec_log_error_snippet(app: FastAPI) -> None:
    from homepot.app.models.AnalyticsModel import ErrorLog
    from homepot.error_logger import log_error

    def connect() -> None:
        raise ConnectionRefusedError("connection to 10.0.0.5:5432 refused")

    try:
        connect()
    except Exception as e:
        await log_error(
            category="database",
            severity="error",
            error_code="DB_CONN_001",
            error_message="Database connection failed",
            exception=e,  # Automatically extracts stack trace
            endpoint="/api/v1/example",
            user_id=None,
            device_id="pos-terminal-001",
            context={"additional": "context", "data": "here"},
        )
    await flush(app)
    async with app.state.session_factory() as db:
        error = (await db.scalars(select(ErrorLog))).one()
    assert (error.category, error.severity, error.error_code) == (
        "database",
        "error",
        "DB_CONN_001",
    )
    assert error.stack_trace is not None
    assert "ConnectionRefusedError: connection to 10.0.0.5:5432 refused" in error.stack_trace
    assert "in connect" in error.stack_trace
    assert error.device_id == "pos-terminal-001"
    assert error.context == {
        "additional": "context",
        "data": "here",
        "exception_type": "ConnectionRefusedError",
    }
    assert error.resolved is False
    assert error.resolved_at is None


@pytest.mark.parametrize(
    ("category", "severity", "message"),
    [
        ("frontend", "error", "category must be one of api, database"),
        ("api", "fatal", "severity must be one of critical, error, warning, info"),
    ],
)
async def test_log_error_rejects_unknown_category_and_severity(
    app: FastAPI, category: str, severity: str, message: str
) -> None:
    from homepot.error_logger import log_error

    with pytest.raises(ValueError, match=message):
        await log_error(category=category, severity=severity, error_code="X", error_message="m")
