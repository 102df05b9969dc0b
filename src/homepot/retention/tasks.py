"""The server's retention task: one pass every ``HOMEPOT_RETENTION__INTERVAL_SECONDS``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from homepot.analytics.error_logger import failed_pass_logger
from homepot.config import Settings
from homepot.kit.periodic import run_periodically
from homepot.retention.policy import resolve_policy
from homepot.retention.service import SYSTEM_ACTOR, apply_retention


@asynccontextmanager
async def run_retention(app: FastAPI) -> AsyncIterator[None]:
    """Background service: prune old rows every interval (the first pass one interval after
    start), unless ``HOMEPOT_RETENTION__ENABLED`` is false.

    The policy is resolved at start, so a bad ``HOMEPOT_RETENTION__TABLES`` stops the server
    with its message. A failed pass is logged to ``error_logs`` (database /
    RETENTION_RUN_FAILED) and the next pass runs as usual. With several server processes on
    PostgreSQL, the one holding the retention's leadership prunes and the others skip the
    pass (see homepot.kit.singleton); a command-line run meanwhile skips too.
    """
    settings: Settings = app.state.settings
    policy = resolve_policy(settings)
    if not settings.retention.enabled:
        yield
        return

    async def retention_pass() -> None:
        await apply_retention(
            app.state.engine,
            policy,
            actor=SYSTEM_ACTOR,
            batch_size=settings.retention.batch_size,
            context={"trigger": "server"},
        )

    async with run_periodically(
        "homepot-retention",
        settings.retention.interval_seconds,
        retention_pass,
        failed_pass_logger(app.state.recorder, "RETENTION_RUN_FAILED", "retention run"),
        leadership=app.state.leadership,
    ):
        yield
