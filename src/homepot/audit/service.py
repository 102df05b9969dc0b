"""Who changed what, from where: the audit trail.

Audit rows are written with the caller's session, so they commit or roll back with the change
they describe. Configuration history, an analytics stream, is written by
:mod:`homepot.analytics.config_history`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request
from pydantic_core import to_jsonable_python
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.audit.models import AuditLog
from homepot.kit.redaction import redact


class Identified(Protocol):
    """A signed-in user (``homepot.auth.models.User``): the audit log needs only its id."""

    @property
    def id(self) -> str: ...


@dataclass(frozen=True)
class Actor:
    """The author of a change: the user's id and the client address the request came from."""

    user_id: str
    ip_address: str | None

    @classmethod
    def of(cls, request: Request, user: Identified) -> Actor:
        # The address the request log stores (X-Forwarded-For only from trusted proxies),
        # resolved once per request by the middleware.
        return cls(user_id=user.id, ip_address=request.state.client_ip)


def write_audit_log(
    session: AsyncSession,
    actor: Actor,
    *,
    action: str,
    resource_type: str,
    resource_id: str,
    details: Mapping[str, Any] | None = None,
) -> AuditLog:
    """Add an audit row to the caller's transaction; ``details`` are stored redacted."""
    entry = AuditLog(
        user_id=actor.user_id,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        ip_address=actor.ip_address,
        details=redact(to_jsonable_python(details)) if details is not None else None,
    )
    session.add(entry)
    return entry


def same_value(old: Any, new: Any) -> bool:
    """Equal as JSON, so that 1 and True, or 1 and 1.0, count as different values."""
    return json.dumps(to_jsonable_python(old), sort_keys=True) == json.dumps(
        to_jsonable_python(new), sort_keys=True
    )


def apply_changes(target: object, values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Set the attributes whose value differs; returns ``{field: {"old": ..., "new": ...}}``."""
    changes: dict[str, dict[str, Any]] = {}
    for name, new in values.items():
        old = getattr(target, name)
        if not same_value(old, new):
            setattr(target, name, new)
            changes[name] = {"old": old, "new": new}
    return changes
