"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from homepot import __version__

router = APIRouter(tags=["system"])


@router.get("/api/v1/health", summary="Service health, database reachability and recorder counters")
async def health(request: Request) -> dict[str, Any]:
    database = "ok"
    try:
        async with request.app.state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:  # reported, not raised: health must answer while the DB is down
        database = f"unreachable: {type(exc).__name__}"
    recorder = request.app.state.recorder
    bridge = getattr(request.app.state, "mqtt_bridge", None)
    return {
        "status": "ok" if database == "ok" else "degraded",
        "version": __version__,
        "database": database,
        "recorder": recorder.snapshot() if recorder is not None else None,
        "mqtt": bridge.snapshot() if bridge is not None else None,
    }


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
