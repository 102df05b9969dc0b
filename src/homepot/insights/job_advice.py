"""Job success odds as the API serves them: the history read from the database, the context
model fitted on it (kept for a few minutes), and the estimate for each target device."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics.models import (
    ConfigurationHistory,
    DeviceStateHistory,
    ErrorLog,
    JobOutcome,
    source_of,
)
from homepot.device.models import Device
from homepot.insights.job_success import (
    COUNTED,
    ContextModel,
    JobHistory,
    counts_until,
    fit,
    outcome_from_row,
    reasons,
    replay,
)
from homepot.insights.models import Anomaly
from homepot.insights.schemas import JobSuccessAdvice, JobSuccessQuery, JobSuccessTarget
from homepot.job.models import Job
from homepot.kit.offload import compute
from homepot.site.models import Site
from homepot.site.service import SiteNotFound

# How long a fitted context model is reused while the history grows by less than REFIT_GROWTH.
MODEL_TTL_SECONDS = 600.0
REFIT_GROWTH = 0.05
# The state history read before the lookback, so that the first jobs know the device's state.
STATE_CONTEXT = timedelta(days=7)
ERROR_SEVERITIES = ("error", "critical")


class DeviceNotFound(LookupError):
    pass


@dataclass
class _Fitted:
    model: ContextModel
    outcomes: int
    identity: tuple[Any, ...]
    fitted_at: float


_fitted: dict[tuple[str, int], _Fitted] = {}


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


async def load_job_history(
    session: AsyncSession,
    since: datetime,
    until: datetime,
    source: str | None = None,
    health_of: Collection[str] | None = None,
) -> JobHistory:
    """Job outcomes in ``[since, until]`` and what the model knows around them.

    ``source`` keeps only rows of that provenance (``device`` or ``simulated``), so that real
    terminals are not judged by the simulation's history; None reads both. The devices'
    recent health is read for ``health_of`` (None: every device; empty: none yet).
    """

    def of_source(model: Any) -> list[Any]:
        return [] if source is None else [model.source == source]

    device_sites: dict[str, str | None] = {}
    device_types: dict[str, str] = {}
    for device_id, site_id, device_type in await session.execute(
        select(Device.device_id, Device.site_id, Device.device_type)
    ):
        device_sites[device_id] = site_id
        device_types[device_id] = device_type
    site_zones = {
        site_id: _zone(zone)
        for site_id, zone in (await session.execute(select(Site.site_id, Site.timezone)))
    }
    rows = await session.execute(
        select(
            JobOutcome.timestamp,
            JobOutcome.duration_ms,
            JobOutcome.job_type,
            JobOutcome.device_id,
            JobOutcome.status,
        )
        .where(
            JobOutcome.timestamp >= since,
            JobOutcome.timestamp <= until,
            JobOutcome.device_id.is_not(None),
            JobOutcome.status.in_(sorted(COUNTED)),
            *of_source(JobOutcome),
        )
        .order_by(JobOutcome.timestamp)
    )
    outcomes = sorted(
        (
            outcome_from_row(finished, duration, job_type, device_id or "", status)
            for finished, duration, job_type, device_id, status in rows
        ),
        key=lambda outcome: outcome.started,
    )
    history = JobHistory(outcomes, device_sites, site_zones, device_types)

    firmware: defaultdict[str, list[tuple[float, str]]] = defaultdict(list)
    for device_id, moment, payload in await session.execute(
        select(JobOutcome.device_id, JobOutcome.timestamp, Job.payload)
        .join(Job, Job.job_id == JobOutcome.job_id)
        .where(
            JobOutcome.job_type == "firmware_update",
            JobOutcome.status == "success",
            JobOutcome.device_id.is_not(None),
            JobOutcome.timestamp <= until,
            *of_source(JobOutcome),
        )
    ):
        version = (payload or {}).get("version") or (payload or {}).get("firmware_version")
        if isinstance(version, str) and version:
            firmware[device_id].append((moment.timestamp(), version))
    config: defaultdict[str, list[tuple[float, str]]] = defaultdict(list)
    for device_id, moment, value in await session.execute(
        select(
            ConfigurationHistory.entity_id,
            ConfigurationHistory.timestamp,
            ConfigurationHistory.new_value,
        ).where(
            ConfigurationHistory.entity_type == "device",
            ConfigurationHistory.parameter_name == "config_version",
            ConfigurationHistory.timestamp <= until,
            *of_source(ConfigurationHistory),
        )
    ):
        if isinstance(value, dict) and value.get("value") is not None:
            config[device_id].append((moment.timestamp(), str(value["value"])))
    for table in (firmware, config):
        for changes in table.values():
            changes.sort()
    history.firmware, history.config = dict(firmware), dict(config)
    if health_of is None or health_of:
        await add_health(session, history, since, until, source, health_of)
    return history


async def add_health(
    session: AsyncSession,
    history: JobHistory,
    since: datetime,
    until: datetime,
    source: str | None = None,
    devices: Collection[str] | None = None,
) -> None:
    """Errors, state changes and anomaly episodes around ``[since, until]``, of ``devices``
    (None: every device)."""

    def of_source(model: Any) -> list[Any]:
        return [] if source is None else [model.source == source]

    def of_devices(column: Any) -> list[Any]:
        return [] if devices is None else [column.in_(sorted(devices))]

    errors: defaultdict[str, list[float]] = defaultdict(list)
    for reporter, moment in await session.execute(
        select(ErrorLog.device_id, ErrorLog.timestamp).where(
            ErrorLog.device_id.is_not(None),
            *of_devices(ErrorLog.device_id),
            ErrorLog.severity.in_(ERROR_SEVERITIES),
            ErrorLog.timestamp >= since - timedelta(hours=6),
            ErrorLog.timestamp <= until,
            *of_source(ErrorLog),
        )
    ):
        errors[reporter or ""].append(moment.timestamp())
    states: defaultdict[str, list[tuple[float, str]]] = defaultdict(list)
    for device_id, moment, state in await session.execute(
        select(
            DeviceStateHistory.device_id,
            DeviceStateHistory.timestamp,
            DeviceStateHistory.new_state,
        ).where(
            DeviceStateHistory.timestamp >= since - STATE_CONTEXT,
            *of_devices(DeviceStateHistory.device_id),
            DeviceStateHistory.timestamp <= until,
            *of_source(DeviceStateHistory),
        )
    ):
        states[device_id].append((moment.timestamp(), state))
    anomalies: defaultdict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for subject, started, ended, metric in await session.execute(
        select(Anomaly.device_id, Anomaly.started_at, Anomaly.ended_at, Anomaly.metric).where(
            Anomaly.device_id.is_not(None),
            *of_devices(Anomaly.device_id),
            Anomaly.started_at <= until,
            or_(Anomaly.ended_at.is_(None), Anomaly.ended_at >= since),
        )
    ):
        end = float("inf") if ended is None else ended.timestamp()
        anomalies[subject or ""].append((started.timestamp(), end, metric))
    for changes in states.values():
        changes.sort()
    for times in errors.values():
        times.sort()
    history.errors, history.states, history.anomalies = dict(errors), dict(states), dict(anomalies)


def cached_model(history: JobHistory, key: tuple[str, int]) -> ContextModel | None:
    """The context model fitted on a similar history within the last few minutes, if any."""
    outcomes = history.outcomes
    identity = (outcomes[0].device_id, outcomes[0].started) if outcomes else ()
    cached = _fitted.get(key)
    if (
        cached is not None
        and cached.identity == identity
        and time.monotonic() - cached.fitted_at < MODEL_TTL_SECONDS
        and abs(len(outcomes) - cached.outcomes) <= REFIT_GROWTH * cached.outcomes
    ):
        return cached.model
    return None


def fit_model(history: JobHistory, key: tuple[str, int]) -> ContextModel:
    """Fit the context model on ``history`` (every device's health loaded) and keep it."""
    outcomes = history.outcomes
    identity = (outcomes[0].device_id, outcomes[0].started) if outcomes else ()
    matrix, labels, _ = replay(history)
    model = fit(matrix, labels)
    _fitted[key] = _Fitted(model, len(outcomes), identity, time.monotonic())
    return model


async def _targets(session: AsyncSession, params: JobSuccessQuery) -> list[Device]:
    if params.device_id is not None:
        device = await session.get(Device, params.device_id)
        if device is None:
            raise DeviceNotFound(f"no device {params.device_id}")
        return [device]
    assert params.site_id is not None
    if await session.get(Site, params.site_id) is None:
        raise SiteNotFound(f"no site {params.site_id}")
    found = await session.scalars(
        select(Device).where(Device.site_id == params.site_id).order_by(Device.device_id)
    )
    return list(found)


async def job_success(
    session: AsyncSession, params: JobSuccessQuery, now: datetime
) -> JobSuccessAdvice:
    """Raises DeviceNotFound or SiteNotFound for an unknown target."""
    devices = await _targets(session, params)
    sources = {source_of(device.simulated) for device in devices}
    # A site mixing real and simulated terminals is judged on both histories.
    source = sources.pop() if len(sources) == 1 else None
    since = now - timedelta(days=params.lookback_days)
    history = await load_job_history(session, since, now, source, health_of=())
    key = (source or "all", params.lookback_days)
    model = cached_model(history, key)
    if model is None:
        await add_health(session, history, since, now, source)
        # Replaying every outcome of the lookback is seconds of Python: off the event loop.
        model = await compute(fit_model, history, key)
    else:
        # The fit is reused: only the targets' own health is needed now.
        await add_health(session, history, since, now, source, [d.device_id for d in devices])
    counts = await compute(counts_until, history, now.timestamp())
    items = []
    for device in devices:
        history.device_sites[device.device_id] = device.site_id
        history.device_types[device.device_id] = device.device_type
        found = counts.evidence(params.job_type.value, device.device_id, now.timestamp())
        items.append(
            JobSuccessTarget(
                device_id=device.device_id,
                site_id=device.site_id,
                probability=round(model.probability(found.features), 4),
                basis=found.basis,
                reasons=reasons(model, found),
            )
        )
    type_tally = counts.by_type.get(params.job_type.value)
    items.sort(key=lambda item: (item.probability, item.device_id))
    expected = sum(item.probability for item in items) / len(items) if items else None
    return JobSuccessAdvice(
        job_type=params.job_type.value,
        computed_at=now,
        lookback_days=params.lookback_days,
        model=model.name,
        trained_on=model.samples,
        job_type_rate=round(type_tally.successes / type_tally.outcomes, 4)
        if type_tally is not None and type_tally.outcomes
        else None,
        expected_success_rate=None if expected is None else round(expected, 4),
        items=items,
    )
