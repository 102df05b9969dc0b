"""The server's retention task (one pass every ``HOMEPOT_RETENTION__INTERVAL_SECONDS``) and
its partition maintenance on PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from homepot.analytics.error_logger import failed_pass_logger
from homepot.config import Settings
from homepot.db import utcnow
from homepot.kit.periodic import run_periodically
from homepot.retention.partitions import maintain_partitions
from homepot.retention.policy import resolve_policy
from homepot.retention.service import SYSTEM_ACTOR, apply_retention

logger = logging.getLogger(__name__)


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


@asynccontextmanager
async def run_partition_maintenance(app: FastAPI) -> AsyncIterator[None]:
    """Background service (PostgreSQL only): create the coming time partitions once at start
    and then every ``HOMEPOT_RETENTION__PARTITION_INTERVAL_SECONDS``, and move rows that
    landed in a default partition into a partition of their period.

    Rows never wait for this: a period without its partition is stored in the default one.
    A failed pass (a lock not granted in time) is logged to ``error_logs`` (database /
    PARTITION_MAINTENANCE_FAILED) and retried at the next interval.
    """
    settings: Settings = app.state.settings
    engine = app.state.engine
    if engine.dialect.name != "postgresql":
        yield
        return
    on_failure = failed_pass_logger(
        app.state.recorder, "PARTITION_MAINTENANCE_FAILED", "partition maintenance"
    )

    async def maintenance_pass() -> None:
        await maintain_partitions(engine, utcnow())

    try:
        await maintenance_pass()
    except Exception as exc:
        logger.exception("partition maintenance at start failed")
        on_failure(exc)
    async with run_periodically(
        "homepot-partitions",
        settings.retention.partition_interval_seconds,
        maintenance_pass,
        on_failure,
    ):
        yield
