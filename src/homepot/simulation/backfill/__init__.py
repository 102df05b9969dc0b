"""``homepot simulate backfill``: days of realistic fleet history, written in minutes.

A chain of stores (``sites``) in several time zones, each with a weekly schedule and its
terminals, lived through the last ``days`` days with the simulator's model
(:mod:`homepot.simulation.live`): terminals switch on half an hour before opening and off half
an hour after closing, sell in proportion to the site's load (peaks included, on the site's own
clock), get a nightly price-and-promotions update and a midday health check, receive firmware
(a reboot in the maintenance window), settle at closing, rotate their logs, and suffer the
faults of :mod:`homepot.simulation.faults` (a store's payment gateway fails for most of its
terminals at once: :mod:`homepot.simulation.gateways`); the ground truth of the faults and of
the benign events (``benign_*``) goes to the labels file. Operators at head office log in a
few times a day, browse the dashboard, create jobs and change site settings.

Every row it writes is marked as the simulation's: events and schedules with source
``simulated``, sites and devices with ``simulated`` true.

Event rows (the seven analytics event tables) go through a :class:`Recorder` of their own;
core rows (sites, schedules, devices, users, jobs, executions, health checks, audit logs) through
a session, in short transactions, each committed before the recorder writes (SQLite allows one
writer at a time). Everything derives from ``seed`` and the end time, and event ids from
the seed. A chain (``site_prefix``) gets one history: a second run for the same stores is
refused, since its days would overlap the first (pick another prefix to add stores).

``site_operating_schedules`` holds one row per site and weekday, so its 1,000-row target needs at
least 143 sites: the default chain has 150 stores with two terminals each.

The parts, one module each: config.py (what is asked and reported), history.py (the state
they share), chain.py (stores, schedules, terminals, gateways), terminals.py (one terminal
through the window), site_jobs.py (jobs and executions), config_changes.py (configuration
changes and their impact), operators.py (head-office staff), writer.py (core rows into the
database); :func:`run_backfill` below puts them together.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from homepot.analytics.recorder import Recorder
from homepot.analytics.rollups import backfill_rollups
from homepot.audit.models import AuditLog
from homepot.config import AnalyticsSettings
from homepot.db import create_session_factory
from homepot.device.models import Device
from homepot.simulation.backfill.chain import (
    build_chain,
    device_row,
    firmware_windows,
    plan_gateways,
    write_site,
)
from homepot.simulation.backfill.config import (
    AGENT_USER_AGENT,
    FIRMWARE_NEW,
    FIRMWARE_OLD,
    GOOD_CONFIG_VERSIONS,
    BackfillConfig,
    BackfillError,
    BackfillResult,
)
from homepot.simulation.backfill.history import History
from homepot.simulation.backfill.operators import ensure_users, operator_sessions
from homepot.simulation.backfill.site_jobs import site_jobs
from homepot.simulation.backfill.terminals import live_through
from homepot.simulation.backfill.writer import (
    history_loaded_at,
    refuse_a_second_history,
    write_core_rows,
)

__all__ = [
    "AGENT_USER_AGENT",
    "FIRMWARE_NEW",
    "FIRMWARE_OLD",
    "GOOD_CONFIG_VERSIONS",
    "BackfillConfig",
    "BackfillError",
    "BackfillResult",
    "history_loaded_at",
    "run_backfill",
]

# Events kept in memory before the recorder writes them.
_FLUSH_EVERY = 20_000


async def run_backfill(
    engine: AsyncEngine,
    config: BackfillConfig,
    *,
    progress: Callable[[str], None] = lambda _message: None,
    staff: dict[str, list[str]] | None = None,
) -> BackfillResult:
    """Write the history into the database behind ``engine``; returns what it added.

    ``staff`` holds the ids of the head-office users who act in it (keys ``admin`` and
    ``operator``, one id each at least); by default users are made for the purpose.
    """
    config.validate()
    await refuse_a_second_history(engine, config.site_prefix)
    users = staff or await ensure_users(engine, max(3, config.sites // 20))
    with tempfile.TemporaryDirectory(prefix="homepot-backfill-") as spool:
        settings = AnalyticsSettings(
            queue_max_events=_FLUSH_EVERY * 4, batch_size=5_000, spool_dir=Path(spool)
        )
        recorder = Recorder(engine, settings)
        history = History(config, recorder, users)
        result = BackfillResult(start=history.start, end=history.end)
        factory = create_session_factory(engine)

        async def write_core() -> None:
            await write_core_rows(factory, history.core, result.core)

        async def write_events() -> None:
            if recorder.queued >= _FLUSH_EVERY:
                await write_core()
                await recorder.flush()

        chain = build_chain(history)
        # The marker that this chain has its history (see refuse_a_second_history).
        history.add_core(
            AuditLog,
            {
                "timestamp": history.end,
                "user_id": None,
                "action": "backfill.load",
                "resource_type": "backfill",
                "resource_id": config.site_prefix,
                "ip_address": None,
                "details": {
                    "seed": config.seed,
                    "days": config.days,
                    "sites": config.sites,
                    "devices": config.devices,
                    "start": history.start.isoformat(),
                    "end": history.end.isoformat(),
                },
            },
        )
        all_devices = [t.device_id for _, terminals in chain for t in terminals]
        for number, (site, terminals) in enumerate(chain):
            write_site(history, site, number, terminals)
            reboots = firmware_windows(history, site, number)
            plan_gateways(history, site, terminals)
            for terminal in terminals:
                terminal.reboots = reboots
                live_through(history, terminal)
            site_jobs(history, site, terminals, number)
            for terminal in terminals:
                # Before the health checks and executions that refer to it.
                history.add_core(Device, device_row(terminal, history.start, history.end))
                terminal.samples.clear()
            await write_events()
            if (number + 1) % 10 == 0:
                progress(f"{number + 1} of {len(chain)} sites")
        operator_sessions(history, [site.site_id for site, _ in chain], all_devices)
        await write_core()
        await recorder.flush()
        # The charts read rollups: make them for the history at once, not minute by minute.
        await backfill_rollups(engine, history.start, history.end)
        if history.labels is not None:
            history.labels.close()
        result.events = dict(recorder.stats.written_by_table)
        result.faults = history.fault_count
        if recorder.stats.spilled:
            raise BackfillError(
                f"{recorder.stats.spilled} events could not be written: {recorder.stats.last_error}"
            )
    return result
