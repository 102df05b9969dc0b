"""The audit API: admins read who did what, when and from where (a stream like the analytics
ones, so it lives with them; the audit package itself sits below auth, which writes to it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from homepot.audit import queries
from homepot.audit.schemas import AuditLogQuery, AuditLogRead
from homepot.auth.deps import AdminUser
from homepot.config import API_PREFIX
from homepot.db import SessionDep
from homepot.kit.pagination import CursorPage
from homepot.kit.routing import api_router

router = api_router(prefix=f"{API_PREFIX}/audit-logs", tags=["audit"])


@router.get(
    "",
    summary="Audit log",
    description="Who read or changed what, when and from where: analytics queries, exports, "
    "error resolutions, retention runs, changes to sites, schedules, devices and jobs. "
    "Parameters are stored with secrets redacted. Newest first, as "
    "`{items, next_cursor}`: pass `next_cursor` back as `cursor` for the next page. "
    "`start_date`/`end_date` take a date (an end date includes that whole UTC day) or an "
    "ISO 8601 datetime. Any other parameter name is refused with 422. Admin only.",
    responses={
        401: {"description": "No valid bearer token"},
        403: {"description": "The token's user is not an admin"},
        422: {"description": "An unknown parameter, a malformed value, or start after end"},
    },
)
async def list_audit_logs(
    _admin: AdminUser, session: SessionDep, params: Annotated[AuditLogQuery, Query()]
) -> CursorPage[AuditLogRead]:
    return await queries.list_audit_logs(session, params)
