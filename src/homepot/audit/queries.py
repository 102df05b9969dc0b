"""Reading the audit trail: the same keyset pages and time filters as the analytics streams."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from homepot.audit.models import AuditLog
from homepot.audit.schemas import AuditLogQuery, AuditLogRead
from homepot.kit.pagination import CursorPage
from homepot.kit.streams import Stream, equals, read_page

AUDIT_LOGS = Stream(
    AuditLog,
    AuditLogQuery,
    AuditLogRead,
    {
        "user_id": equals(AuditLog.user_id),
        "action": equals(AuditLog.action),
        "resource_type": equals(AuditLog.resource_type),
        "resource_id": equals(AuditLog.resource_id),
    },
)


async def list_audit_logs(session: AsyncSession, params: AuditLogQuery) -> CursorPage[AuditLogRead]:
    """One page of audit rows matching ``params``, newest first."""
    return await read_page(session, AUDIT_LOGS, params)
