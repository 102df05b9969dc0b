"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from homepot import __version__
from homepot.auth.models import Role, User
from homepot.auth.service import InvalidToken, decode_access_token
from homepot.kit.routing import api_router
from homepot.kit.urls import mask_url_credentials

router = api_router(tags=["system"])

# The database probe and the admin check each get this long, side by side, so that health
# answers within 2 s even when the database accepts connections and then never replies.
PROBE_TIMEOUT_SECONDS = 1.5


async def _probe_database(engine: AsyncEngine) -> str:
    async def select_one() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(select_one(), PROBE_TIMEOUT_SECONDS)
    except TimeoutError:
        return f"unreachable: no answer within {PROBE_TIMEOUT_SECONDS:g} s"
    except Exception as exc:  # reported, not raised: health must answer while the DB is down
        return f"unreachable: {type(exc).__name__}"
    return "ok"


async def _caller_is_admin(request: Request) -> bool:
    """True when the request carries a valid token of an active admin; never raises."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    try:
        user_id, generation = decode_access_token(token.strip(), request.app.state.settings.auth)
    except InvalidToken:
        return False

    async def load() -> User | None:
        async with request.app.state.session_factory() as session:
            user: User | None = await session.get(User, user_id)
            return user

    try:
        user = await asyncio.wait_for(load(), PROBE_TIMEOUT_SECONDS)
    except Exception:  # a database that cannot say who is asking: the public answer
        return False
    return (
        user is not None
        and user.is_active
        and user.role == Role.admin
        and user.token_generation == generation
    )


@router.get(
    "/api/v1/health",
    summary="Service health: ok or degraded; admins also see the database and recorder",
    description='Without an admin\'s token the answer is only `{"status": "ok"}` or '
    '`{"status": "degraded"}` (the database did not answer within '
    f"{PROBE_TIMEOUT_SECONDS:g} s). An admin's token adds the version, the database probe's "
    "result and the recorder's counters and last error. Answers within 2 s even when the "
    "database hangs.",
)
async def health(request: Request) -> dict[str, Any]:
    database, is_admin = await asyncio.gather(
        _probe_database(request.app.state.engine), _caller_is_admin(request)
    )
    recorder = request.app.state.recorder
    # A spool that cannot be written keeps accepted events in memory only: degraded too.
    spool_failing = recorder is not None and recorder.stats.spool_failures_pending > 0
    healthy = database == "ok" and not spool_failing
    answer: dict[str, Any] = {"status": "ok" if healthy else "degraded"}
    if not is_admin:
        return answer
    snapshot = recorder.snapshot() if recorder is not None else None
    if snapshot is not None and snapshot.get("last_error"):
        snapshot["last_error"] = mask_url_credentials(str(snapshot["last_error"]))
    bridge = getattr(request.app.state, "mqtt_bridge", None)
    jetstream = getattr(request.app.state, "jetstream_uplink", None)
    return answer | {
        "version": __version__,
        "database": database,
        "recorder": snapshot,
        "mqtt": bridge.snapshot() if bridge is not None else None,
        "jetstream": jetstream.snapshot() if jetstream is not None else None,
    }


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
