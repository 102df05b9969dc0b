"""Who changed what, from where: the audit trail and the configuration history.

Audit rows are written with the caller's session, so they commit or roll back with the change
they describe. Configuration history is an analytics stream and goes through the recorder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic_core import to_jsonable_python
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics.middleware import ClientAddress
from homepot.analytics.models import ConfigurationHistory
from homepot.analytics.recorder import Recorder
from homepot.audit.models import AuditLog
from homepot.auth.models import User
from homepot.kit.redaction import redact


@dataclass(frozen=True)
class Actor:
    """The author of a change: the user's id and the client address the request came from."""

    user_id: str
    ip_address: str | None

    @classmethod
    def of(cls, request: Request, user: User) -> Actor:
        # The same address the request log stores: X-Forwarded-For only from trusted proxies.
        client_address = ClientAddress(request.app.state.settings.trusted_proxies)
        return cls(user_id=user.id, ip_address=client_address(request.scope))


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


def _same(old: Any, new: Any) -> bool:
    # Compared as JSON so that 1 and True, or 1 and 1.0, count as different values.
    return json.dumps(to_jsonable_python(old), sort_keys=True) == json.dumps(
        to_jsonable_python(new), sort_keys=True
    )


def apply_changes(target: object, values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Set the attributes whose value differs; returns ``{field: {"old": ..., "new": ...}}``."""
    changes: dict[str, dict[str, Any]] = {}
    for name, new in values.items():
        old = getattr(target, name)
        if not _same(old, new):
            setattr(target, name, new)
            changes[name] = {"old": old, "new": new}
    return changes


def merge_config(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A top-level JSON merge patch: keys in ``patch`` replace, a ``null`` value removes."""
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _history_value(key: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
    # A secret parameter's value (key "api_key", say) is withheld by the recorder.
    return {"value": config[key]} if key in config else None


def record_config_changes(
    session: AsyncSession,
    recorder: Recorder,
    actor: Actor,
    *,
    entity_type: str,
    entity_id: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    reason: str | None,
) -> list[str]:
    """One configuration_history event per added, removed or changed key; returns the keys.

    The events are queued when ``session`` commits, so a rolled-back change leaves no history.
    """
    changed = [
        key
        for key in sorted(old.keys() | new.keys())
        if key not in old or key not in new or not _same(old[key], new[key])
    ]
    for key in changed:
        recorder.record_after_commit(
            session,
            ConfigurationHistory,
            entity_type=entity_type,
            entity_id=entity_id,
            parameter_name=key,
            old_value=_history_value(key, old),
            new_value=_history_value(key, new),
            changed_by=actor.user_id,
            change_reason=reason,
            change_type="manual",
        )
    return changed
