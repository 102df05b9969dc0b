"""One state machine per device, and the watchdog that notices silent devices.

A device is ``online``, ``offline``, ``error``, ``maintenance`` or ``updating``
(:class:`~homepot.device.models.DeviceStatus`). Every status change goes through
:func:`transition`, which writes ``device_state_history`` for a real change only: setting the
state a device already has writes nothing. The history row is queued when the caller's
transaction commits, so a change that is rolled back leaves no history.

Who moves a device where:

- an operator, through ``PATCH /api/v1/devices/{device_id}`` (any state);
- its heartbeats (:mod:`homepot.fleet.service`): offline → online, ``error`` reported → error,
  ``ok`` after an error → online;
- the watchdog below: online or error with no heartbeat for ``fleet.offline_after_seconds``
  → offline. Devices in maintenance or updating are expected to go quiet and are left alone,
  and so is a device that has never sent a heartbeat (it has no agent to watch).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from homepot.analytics.error_logger import failed_pass_logger
from homepot.analytics.models import DeviceStateHistory
from homepot.analytics.recorder import Recorder
from homepot.config import Settings
from homepot.db import utcnow
from homepot.device.models import Device, DeviceStatus
from homepot.kit.periodic import run_periodically

logger = logging.getLogger(__name__)

SYSTEM = "system"
# States the watchdog takes offline when the heartbeats stop.
WATCHED_STATES = (DeviceStatus.online, DeviceStatus.error)
# Devices marked offline per watchdog pass; the rest are marked in the next pass.
WATCHDOG_BATCH = 1000


def describe_duration(seconds: float) -> str:
    """A duration as a person says it: ``2.5 s``, ``95 s``, ``3 min``, ``2 h 5 min``, ``3 days``."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}".removesuffix(".0") + " s"
    if seconds < 120:
        return f"{round(seconds)} s"
    if seconds < 2 * 3600:
        return f"{round(seconds / 60)} min"
    if seconds < 2 * 86400:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{round(seconds / 86400)} days"


async def transition(
    session: AsyncSession,
    recorder: Recorder,
    device: Device,
    new_state: DeviceStatus,
    *,
    changed_by: str,
    reason: str,
    extra_data: dict[str, Any] | None = None,
) -> bool:
    """Move ``device`` to ``new_state``; returns False (and records nothing) if it is there.

    ``changed_by`` is a user id or ``"system"``; ``reason`` is stored as written, for a
    person to read. The device's site is added to ``extra_data``. The caller's session
    commits the change and, with it, the history row.
    """
    previous = device.status
    if previous == new_state:
        return False
    device.status = new_state
    recorder.record_after_commit(
        session,
        DeviceStateHistory,
        device_id=device.device_id,
        previous_state=previous.value,
        new_state=new_state.value,
        changed_by=changed_by,
        reason=reason,
        extra_data={**(extra_data or {}), "site_id": device.site_id},
        source=device.source,
    )
    return True


async def mark_silent_devices_offline(
    session_factory: async_sessionmaker[AsyncSession],
    recorder: Recorder,
    settings: Settings,
    now: datetime | None = None,
) -> list[str]:
    """One watchdog pass, in its own transaction; returns the ids of the devices marked offline.

    On PostgreSQL the candidates are locked (``FOR UPDATE SKIP LOCKED``): a device whose
    heartbeat is being stored right now is skipped, and a row refreshed by a heartbeat that
    committed meanwhile no longer matches, so a live device is never marked offline. SQLite
    (one server process) has no row locks: a heartbeat landing between this pass's read and
    its write can be overwritten, and that device's next heartbeat brings it back online.
    """
    now = now or utcnow()
    limit = settings.fleet.offline_after_seconds
    cutoff = now - timedelta(seconds=limit)
    marked: list[str] = []
    async with session_factory() as session, session.begin():
        silent = await session.scalars(
            select(Device)
            .where(
                Device.status.in_(WATCHED_STATES),
                Device.last_seen_at.is_not(None),
                Device.last_seen_at < cutoff,
            )
            .order_by(Device.last_seen_at)
            .limit(WATCHDOG_BATCH)
            .with_for_update(skip_locked=True)
        )
        for device in silent.all():
            assert device.last_seen_at is not None  # selected on it
            silence = (now - device.last_seen_at).total_seconds()
            await transition(
                session,
                recorder,
                device,
                DeviceStatus.offline,
                changed_by=SYSTEM,
                reason=(
                    f"no heartbeat for {describe_duration(silence)}"
                    f" (limit {describe_duration(limit)})"
                ),
                extra_data={
                    "source": "watchdog",
                    "last_seen_at": device.last_seen_at.isoformat(),
                    "silent_seconds": round(silence, 1),
                    "offline_after_seconds": limit,
                },
            )
            marked.append(device.device_id)
    if marked:
        logger.info("watchdog marked %d silent device(s) offline", len(marked))
    return marked


@contextlib.asynccontextmanager
async def run_device_watchdog(app: FastAPI) -> AsyncIterator[None]:
    """Background service: every ``fleet.watchdog_interval_seconds``, one watchdog pass.

    A failed pass is logged to ``error_logs`` (database / DEVICE_WATCHDOG_FAILED) and the
    next pass runs as usual.
    """
    settings: Settings = app.state.settings

    async def watchdog_pass() -> None:
        await mark_silent_devices_offline(app.state.session_factory, app.state.recorder, settings)

    async with run_periodically(
        "homepot-device-watchdog",
        settings.fleet.watchdog_interval_seconds,
        watchdog_pass,
        failed_pass_logger(app.state.recorder, "DEVICE_WATCHDOG_FAILED", "device watchdog pass"),
        leadership=app.state.leadership,
    ):
        yield
