"""Configuration changes of devices and sites, each recorded with the performance before it.

Every configuration change goes through :func:`change_config`: a change through the API
(``manual``), a ``config_change`` job that succeeded or an automatic rollback
(``automated``), an accepted recommendation (``ai_recommended``). It writes one
``configuration_history`` event per added, removed or changed key, and stamps each with
``performance_before``: the entity's device metrics over the impact window that ends at the
change (for a site, the metrics of its devices). :mod:`homepot.device.impact` later
measures the same window after the change and judges it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from sqlalchemy import ColumnElement, column, func, select, table
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics.models import ConfigurationHistory, DeviceMetrics, Source
from homepot.analytics.recorder import Recorder
from homepot.audit.service import same_value
from homepot.config import Settings
from homepot.db import utcnow

EntityType = Literal["device", "site"]
ChangeType = Literal["manual", "automated", "ai_recommended"]
ENTITY_TYPES: tuple[EntityType, ...] = ("device", "site")
CHANGE_TYPES: tuple[ChangeType, ...] = ("manual", "automated", "ai_recommended")


def merge_config(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A top-level JSON merge patch: keys in ``patch`` replace, a ``null`` value removes."""
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Keys added, removed or given another value (compared as JSON), sorted."""
    return [
        key
        for key in sorted(old.keys() | new.keys())
        if key not in old or key not in new or not same_value(old[key], new[key])
    ]


def history_value(key: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """How a config key's value is stored in history: ``{"value": ...}``, None when absent.

    A secret parameter's value (key "api_key", say) is withheld by the recorder.
    """
    return {"value": config[key]} if key in config else None


# The devices table, by name only: a site's performance is its devices', and this module sits
# below the device and site packages (both record their configuration changes through it).
_devices = table("devices", column("device_id"), column("site_id"))


class Configurable(Protocol):
    """A device or a site: an entity with a JSON ``config`` that says which entity it is."""

    config: Any

    @property
    def config_entity(self) -> tuple[str, str]:
        """(entity_type, entity_id) as stored in ``configuration_history``."""
        ...

    @property
    def source(self) -> Source:
        """``simulated`` for an entity of the simulation: its history is simulated too."""
        ...


def entity_id_of(entity_type: EntityType, entity: Configurable) -> str:
    kind, entity_id = entity.config_entity
    if kind != entity_type:
        raise ValueError(f"entity_type {entity_type!r} does not match a {type(entity).__name__}")
    return entity_id


def _devices_of(entity_type: str, entity_id: str) -> ColumnElement[bool]:
    if entity_type == "device":
        return DeviceMetrics.device_id == entity_id
    if entity_type == "site":
        return DeviceMetrics.device_id.in_(
            select(_devices.c.device_id).where(_devices.c.site_id == entity_id).scalar_subquery()
        )
    raise ValueError(f"entity_type must be one of {', '.join(ENTITY_TYPES)}; got {entity_type!r}")


def _rounded(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)


async def measure_performance(
    session: AsyncSession,
    *,
    entity_type: str,
    entity_id: str,
    start: datetime,
    window_seconds: float,
) -> dict[str, Any]:
    """The entity's device metrics averaged over ``[start, start + window)``.

    ``{"window_seconds", "samples", "avg_cpu_percent", "avg_memory_percent",
    "avg_error_rate", "avg_network_latency_ms", "transactions"}``; with no samples the
    averages and ``transactions`` are None. A site's performance is its devices'.
    """
    end = start + timedelta(seconds=window_seconds)
    statement = select(
        func.count(),
        func.avg(DeviceMetrics.cpu_percent),
        func.avg(DeviceMetrics.memory_percent),
        func.avg(DeviceMetrics.error_rate),
        func.avg(DeviceMetrics.network_latency_ms),
        func.sum(DeviceMetrics.transaction_count),
    ).where(
        _devices_of(entity_type, entity_id),
        DeviceMetrics.timestamp >= start,
        DeviceMetrics.timestamp < end,
    )
    samples, cpu, memory, error_rate, latency, transactions = (
        await session.execute(statement)
    ).one()
    return {
        "window_seconds": window_seconds,
        "samples": int(samples),
        "avg_cpu_percent": _rounded(cpu),
        "avg_memory_percent": _rounded(memory),
        "avg_error_rate": _rounded(error_rate),
        "avg_network_latency_ms": _rounded(latency),
        "transactions": None if transactions is None else int(transactions),
    }


async def change_config(
    session: AsyncSession,
    recorder: Recorder,
    *,
    entity_type: EntityType,
    entity: Configurable,
    patch: Mapping[str, Any],
    changed_by: str,
    reason: str | None,
    change_type: ChangeType,
    settings: Settings,
    now: datetime | None = None,
) -> list[str]:
    """Merge ``patch`` into the entity's config, save it, and record each changed key.

    A key set to None is removed. Returns the changed keys (empty when nothing changed,
    and then nothing is written). The history events carry ``performance_before`` over the
    impact window ending at the change, and are queued when ``session`` commits: a change
    that is rolled back leaves no history. Services flush, the caller commits.
    """
    if change_type not in CHANGE_TYPES:
        raise ValueError(
            f"change_type must be one of {', '.join(CHANGE_TYPES)}; got {change_type!r}"
        )
    entity_id = entity_id_of(entity_type, entity)
    old = dict(entity.config)
    new = merge_config(old, patch)
    changed = changed_keys(old, new)
    if not changed:
        return []
    now = now or utcnow()
    window = settings.fleet.impact_window_seconds
    performance_before = await measure_performance(
        session,
        entity_type=entity_type,
        entity_id=entity_id,
        start=now - timedelta(seconds=window),
        window_seconds=window,
    )
    entity.config = new
    await session.flush()
    for key in changed:
        recorder.record_after_commit(
            session,
            ConfigurationHistory,
            timestamp=now,
            entity_type=entity_type,
            entity_id=entity_id,
            parameter_name=key,
            old_value=history_value(key, old),
            new_value=history_value(key, new),
            changed_by=changed_by,
            change_reason=reason,
            change_type=change_type,
            performance_before=performance_before,
            source=entity.source,
        )
    return changed
