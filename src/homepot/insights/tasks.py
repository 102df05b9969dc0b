"""The server's anomaly scanner: one pass every ``HOMEPOT_INSIGHTS__INTERVAL_SECONDS``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from homepot.analytics.error_logger import failed_pass_logger
from homepot.analytics.models import APIRequestLog, DeviceMetrics
from homepot.config import Settings
from homepot.db import utcnow
from homepot.insights.bins import bin_of, bin_start  # numpy only when a scan runs
from homepot.kit.periodic import run_periodically

logger = logging.getLogger(__name__)

# Each pass re-evaluates this far back, so that samples that arrived late (a terminal's
# outbox replayed after a network cut) still count, and open episodes are extended.
RESCAN_SECONDS = 15 * 60


def pass_since(now: datetime, last_until: datetime | None, window_seconds: float) -> datetime:
    """Where a server's pass starts: from ``RESCAN_SECONDS`` before the end of the previous
    pass, never further back than ``window_seconds`` (``insights.server_window_seconds``); a
    fresh server (nothing scanned by this process) starts ``window_seconds`` back.

    The server never reads a month of never-scanned history in one pass: older ranges (a
    database imported or upgraded with history, an outage longer than the window) are for
    ``homepot insights scan --since``.
    """
    earliest = now - timedelta(seconds=window_seconds)
    if last_until is None:
        return earliest
    return max(earliest, min(now, last_until) - timedelta(seconds=RESCAN_SECONDS))


class NewRows:
    """Whether rows for complete bins (late ones) came since the last look, by id.

    Raw ids grow with every insert (homepot.analytics.rollups relies on it too): a row above
    the highest id seen last time is new. A row of a transaction that committed after one
    with a higher id is missed here; the next bin's pass rescans its range anyway
    (``RESCAN_SECONDS``).
    """

    def __init__(self) -> None:
        self._highest: dict[str, int] | None = None

    async def late_rows(self, engine: AsyncEngine, before: datetime) -> bool:
        """True when a row timestamped before ``before`` came since the previous call (and
        at the first call)."""
        tables = (DeviceMetrics, APIRequestLog)
        async with engine.connect() as connection:
            highest = {
                model.__tablename__: int(
                    await connection.scalar(select(func.coalesce(func.max(model.id), 0))) or 0
                )
                for model in tables
            }
            previous, self._highest = self._highest, highest
            if previous is None:
                return True
            for model in tables:
                name = model.__tablename__
                if highest[name] <= previous[name]:
                    continue
                late = await connection.scalar(
                    select(model.id)
                    .where(
                        model.id > previous[name],
                        model.id <= highest[name],
                        model.timestamp < before,
                    )
                    .limit(1)
                )
                if late is not None:
                    return True
        return False


@asynccontextmanager
async def run_insights(app: FastAPI) -> AsyncIterator[None]:
    """Background service: scan the newest complete bins every interval, unless
    ``HOMEPOT_INSIGHTS__ENABLED`` is false (then numpy is never imported). The first pass
    scans the last ``HOMEPOT_INSIGHTS__SERVER_WINDOW_SECONDS`` (6 h), whatever the database
    holds before; see :func:`pass_since`.

    With several server processes on PostgreSQL, the one that holds the scan's leadership
    (see homepot.kit.singleton) scans and the others skip the pass; a scan started from the
    command line meanwhile skips too (homepot.insights.service). A failed pass is logged to
    ``error_logs`` (database / INSIGHTS_SCAN_FAILED) and the next pass runs as usual.
    """
    settings: Settings = app.state.settings
    if not settings.insights.enabled:
        yield
        return
    from homepot.insights.service import ScanState, scan

    # One chunk's baselines refreshed per pass, so that no pass reads 14 days of everything.
    state = ScanState(baseline_refresh_devices=settings.insights.chunk_devices)
    last_until: datetime | None = None

    seen = NewRows()

    async def insights_pass() -> None:
        nonlocal last_until
        now = utcnow()
        late = await seen.late_rows(app.state.engine, bin_start(bin_of(now)))
        if last_until is not None and bin_of(now) == bin_of(last_until) and not late:
            # No 5-minute bin completed since the last pass, and no row came for one it
            # judged: it would find what it found. (Most passes at the default 60 s.)
            return
        window = settings.insights.server_window_seconds
        since = pass_since(now, last_until, window)
        if last_until is not None and since > last_until:
            logger.warning(
                "insights: nothing scanned between %s and %s (longer ago than %d s):"
                " run `homepot insights scan --since %s --until %s` to scan it",
                last_until.isoformat(),
                since.isoformat(),
                window,
                last_until.isoformat(),
                since.isoformat(),
            )
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
        leadership=app.state.leadership,
    ):
        yield


@asynccontextmanager
async def run_risk_scoring(app: FastAPI) -> AsyncIterator[None]:
    """Background service: every ``HOMEPOT_INSIGHTS__RISK_INTERVAL_SECONDS``, each device's
    failure risk into ``device_risk``.

    With ``HOMEPOT_INSIGHTS__MODEL_PATH`` the trained model scores the devices that reported
    in the last 6 h (re-read when the file changes); without one, or while the file cannot be
    used, risk comes from active anomaly episodes and the rows say ``model = "anomalies"``.
    The devices' baselines are kept between passes (``app.state.risk_baselines``,
    homepot.insights.risk_reads), so that a pass reads the last 3 h of raw samples and the
    day before only for the devices whose hourly anchor came; a process that takes the pass
    over starts with none.
    An unusable model file is logged to ``error_logs`` (INSIGHTS_MODEL_UNUSABLE) once.
    """
    settings: Settings = app.state.settings
    if not settings.insights.enabled:
        yield
        return
    from homepot.analytics.error_logger import record_error
    from homepot.insights.risk import ModelError, RiskModel, load_model
    from homepot.insights.risk_reads import BaselineCache
    from homepot.insights.scoring import score_devices, score_from_anomalies

    path = settings.insights.model_path
    loaded: dict[str, object] = {}
    # Each device's baseline, kept between this process's passes (cold in a process that
    # takes the pass over: its first pass reads every device's day).
    baselines = app.state.risk_baselines = BaselineCache()

    def current_model() -> RiskModel | None:
        if path is None:
            return None
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            stamp = None
        if loaded.get("stamp") != stamp or "model" not in loaded:
            loaded["stamp"] = stamp
            try:
                loaded["model"] = load_model(path)
            except ModelError as exc:
                loaded["model"] = None
                record_error(
                    recorder=app.state.recorder,
                    category="validation",
                    severity="error",
                    error_code="INSIGHTS_MODEL_UNUSABLE",
                    error_message=f"risk model not used, scoring from anomalies: {exc}",
                )
        model = loaded["model"]
        return model if isinstance(model, RiskModel) else None

    async def risk_pass() -> None:
        model = current_model()
        async with app.state.session_factory() as session:
            if model is not None:
                await score_devices(session, model, utcnow(), baselines=baselines)
                reads = baselines.last_pass
                if reads is not None:
                    logger.debug(
                        "risk: %d device_metrics rows read (%d recent, %d for %d baselines)",
                        reads.rows,
                        reads.recent_rows,
                        reads.baseline_rows,
                        reads.baselines_computed,
                    )
            else:
                await score_from_anomalies(session, utcnow())
            await session.commit()

    async with run_periodically(
        "homepot-risk",
        settings.insights.risk_interval_seconds,
        risk_pass,
        failed_pass_logger(app.state.recorder, "INSIGHTS_RISK_FAILED", "risk scoring"),
        leadership=app.state.leadership,
    ):
        yield
