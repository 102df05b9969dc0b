"""The fleet overview and the error list, readable by every signed-in user.

The analytics streams are admin-only; operators and viewers watching the fleet still need
its state and its errors. Resolving an error stays with admins
(PATCH /api/v1/analytics/errors/{id}).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request

from homepot.analytics import queries
from homepot.analytics.schemas import ErrorLogQuery, ErrorLogRead
from homepot.audit.service import Actor
from homepot.auth.deps import CurrentUser
from homepot.auth.models import Role
from homepot.config import API_PREFIX
from homepot.db import ReadSessionDep, SessionDep
from homepot.kit.pagination import CursorPage
from homepot.kit.routing import api_router
from homepot.overview import service
from homepot.overview.cache import FleetMetricsCache
from homepot.overview.schemas import FleetOverview

router = api_router(prefix=API_PREFIX, tags=["overview"])


def _metrics_cache(request: Request) -> FleetMetricsCache:
    # One per application (each test app has its own database, so its own cache).
    cache: FleetMetricsCache | None = getattr(request.app.state, "fleet_metrics_cache", None)
    if cache is None:
        cache = request.app.state.fleet_metrics_cache = FleetMetricsCache()
    return cache


@router.get(
    "/overview",
    response_model=FleetOverview,
    summary="Devices by status, recent errors and jobs, job success rate, fleet metrics",
)
async def read_overview(
    _user: CurrentUser,
    session: ReadSessionDep,
    request: Request,
    hours: Annotated[
        int, Query(ge=1, le=168, description="Window for job outcomes and metrics, in hours")
    ] = 6,
    points: Annotated[int, Query(ge=1, le=500, description="At most this many metric points")] = 72,
) -> FleetOverview:
    return await service.fleet_overview(session, _metrics_cache(request), hours, points)


@router.get(
    "/errors",
    summary="Error log, newest first (any signed-in user; details for admins)",
    description="The analytics error stream with its filters (`category`, `severity`, "
    "`error_code`, `device_id`, `resolved`, `start_date`, `end_date`) as "
    "`{items, next_cursor}` pages; unknown parameters are refused with 422. Operators and "
    "viewers get `stack_trace`, `user_id` and `context` as null (stack traces name server "
    "paths, context may name people); admins see them. Every read is audited "
    "(`analytics.query`), like the analytics streams.",
)
async def list_errors(
    user: CurrentUser,
    request: Request,
    session: SessionDep,
    reader: ReadSessionDep,
    params: Annotated[ErrorLogQuery, Query()],
) -> CursorPage[ErrorLogRead]:
    page = await queries.read_audited_page(
        session, Actor.of(request, user), queries.ERRORS, params, reader=reader
    )
    if user.role == Role.admin:
        return page
    hidden = {"stack_trace": None, "user_id": None, "context": None}
    return CursorPage[ErrorLogRead](
        items=[item.model_copy(update=hidden) for item in page.items],
        next_cursor=page.next_cursor,
    )
