"""The server's anomaly scanner: one pass every ``HOMEPOT_INSIGHTS__INTERVAL_SECONDS``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI

from homepot.analytics.error_logger import failed_pass_logger
from homepot.config import Settings
from homepot.db import utcnow
from homepot.kit.periodic import run_periodically

# Each pass re-evaluates this far back, so that samples that arrived late (a terminal's
# outbox replayed after a network cut) still count, and open episodes are extended.
RESCAN_SECONDS = 15 * 60


@asynccontextmanager
async def run_insights(app: FastAPI) -> AsyncIterator[None]:
    """Background service: scan the newest complete bins every interval, unless
    ``HOMEPOT_INSIGHTS__ENABLED`` is false (then numpy is never imported).

    With several server processes, one scans and the others skip the pass (see
    homepot.insights.service). A failed pass is logged to ``error_logs`` (database /
    INSIGHTS_SCAN_FAILED) and the next pass runs as usual.
    """
    settings: Settings = app.state.settings
    if not settings.insights.enabled:
        yield
        return
    from datetime import timedelta

    from homepot.insights.service import ScanState, scan

    # One chunk's baselines refreshed per pass, so that no pass reads 14 days of everything.
    state = ScanState(baseline_refresh_devices=settings.insights.chunk_devices)
    last_until: datetime | None = None

    async def insights_pass() -> None:
        nonlocal last_until
        now = utcnow()
        since = now - timedelta(seconds=RESCAN_SECONDS)
        if last_until is not None:
            since = min(since, last_until - timedelta(seconds=RESCAN_SECONDS))
        report = await scan(
            app.state.engine,
            since,
            now,
            state=state,
            chunk_devices=settings.insights.chunk_devices,
        )
        if report.skipped is None:
            last_until = now

    async with run_periodically(
        "homepot-insights",
        settings.insights.interval_seconds,
        insights_pass,
        failed_pass_logger(app.state.recorder, "INSIGHTS_SCAN_FAILED", "insights scan"),
    ):
        yield
