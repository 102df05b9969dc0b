"""``GET /api/v1/analytics/quality``: the Phase 3 data-quality report, admin only."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from homepot.auth.deps import AdminUser
from homepot.config import API_PREFIX
from homepot.db import ReadSessionDep
from homepot.kit.routing import api_router
from homepot.quality.schemas import QualityQuery
from homepot.quality.service import QualityReport, assess_quality

router = api_router(prefix=f"{API_PREFIX}/analytics", tags=["analytics"])


@router.get(
    "/quality",
    summary="Data quality of the eight analytics tables",
    description="Per table: rows and whether the row target is met, time span, freshness "
    "(age of the newest row), null rate per column, out-of-range values, timestamps in the "
    "future, duplicate events and terminals that stopped reporting. Only real rows (source "
    "`device`) are judged unless `include_simulated=true`; `simulated_rows_left_out` and "
    "`provenance_note` say how many simulated rows were not. `passed` is false when a "
    "table misses a threshold; each failing table lists its `problems`. The answer is 200 "
    "either way (use `homepot quality` for an exit code). Admin only.",
    responses={
        401: {"description": "No valid bearer token"},
        403: {"description": "The token's user is not an admin"},
        422: {"description": "An unknown parameter or a threshold out of bounds"},
    },
)
async def read_quality(
    _admin: AdminUser, session: ReadSessionDep, params: Annotated[QualityQuery, Query()]
) -> QualityReport:
    return await assess_quality(
        session, params.thresholds(), include_simulated=params.include_simulated
    )
