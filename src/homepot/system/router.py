"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from homepot import __version__

router = APIRouter(tags=["system"])

HEALTH_DATABASE_TIMEOUT_SECONDS = 2.0


@router.get("/api/v1/health", summary="Service health, database reachability and recorder counters")
async def health(request: Request) -> dict[str, Any]:
    database = "ok"
    try:
        # A database that hangs must not hang the health check with it.
        async with asyncio.timeout(HEALTH_DATABASE_TIMEOUT_SECONDS):
            async with request.app.state.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except Exception as exc:  # reported, not raised: health must answer while the DB is down
        database = f"unreachable: {type(exc).__name__}"
    recorder = request.app.state.recorder
    spool_failing = recorder is not None and recorder.stats.spool_failures_pending > 0
    return {
        "status": "ok" if database == "ok" and not spool_failing else "degraded",
        "version": __version__,
        "database": database,
        "recorder": recorder.snapshot() if recorder is not None else None,
    }


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
