"""Configuration impact: judge each configuration change by the metrics after it, and roll
back the ones that made things worse.

Every ``configuration_history`` row carries ``performance_before``: the entity's device
metrics (a site's: its devices') averaged over the impact window that ends at the change
(``HOMEPOT_FLEET__IMPACT_WINDOW_SECONDS``, 10 minutes by default). Once a change is older
than one window, the evaluator measures the window that starts at the change the same way,
stores it as ``performance_after`` and sets ``was_successful``:

- The error rate (a percentage) made things worse when it rose by more than
  ``error_rate_margin_points`` points (0.5) AND by more than ``error_rate_margin_ratio`` (20 %)
  of its value before: 0.4 % to 3.1 % is worse, 10 % to 10.8 % is not.
- The network latency made things worse when it rose by more than ``latency_margin_ratio``
  (20 %) of its value before.
- ``was_successful`` is False when either made things worse, True when neither did, and
  None when no metric was reported both before and after the change (with a ``note`` in
  ``performance_after``). A change with no samples after it is left undecided until three
  windows have passed, so that late telemetry (an agent sending its backlog) still counts.

When a change made things worse, it is rolled back: its old value is restored through
:func:`homepot.analytics.config_history.change_config` as an ``automated`` change by
``system`` whose reason starts with ``automatic rollback:``, and the original row gets
``was_rolled_back`` and a ``rollback_reason`` a person can read. Rollback is skipped, with the
reason in the ``note`` of ``performance_after``, when the policy is off
(``HOMEPOT_FLEET__ROLLBACK_ENABLED``),
when the change is itself a rollback, when the entity no longer exists or its value was
changed again since, when the old value was withheld from history as a secret, and when the
verdict comes more than three windows after the change (the server was down, or the history
was imported): a late verdict is recorded, acting on it is left to an operator.

A pass does a bounded amount of work: at most ``HOMEPOT_FLEET__IMPACT_MAX_CHANGES_PER_PASS``
changes (200), newest first, so that a backlog (a database imported or upgraded with months
of history, a server down for days) is worked off over the following passes while fresh
changes, the only ones a rollback can still act on, are judged first. A change older than
``HOMEPOT_FLEET__IMPACT_MAX_AGE_SECONDS`` (7 days) that never got a verdict is not judged:
its metrics may be gone to retention and nobody would act on the answer. It is marked instead
(``performance_after`` holds only the note ``not evaluated: too old``, ``was_successful``
stays None), up to 2,000 per pass. A server that stops ends its pass between two changes.

This is the one place where analytics rows are updated after they were written: the
verdict and the rollback commit in one transaction, by ``event_id``, and only while
``performance_after`` is still empty, so two server processes never judge (or roll back) the
same change twice. A change that cannot be evaluated is logged to ``error_logs``
(``database`` / ``error`` / ``IMPACT_EVAL_FAILED``; a rollback that fails:
``database`` / ``critical`` / ``CONFIG_ROLLBACK_FAILED``) and the pass goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI
from sqlalchemy import JSON, ColumnElement, CursorResult, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from homepot.analytics.config_history import (
    ENTITY_TYPES,
    change_config,
    measure_performance,
)
from homepot.analytics.models import SIMULATED, ConfigurationHistory, source_of
from homepot.analytics.recorder import Recorder
from homepot.audit.service import same_value
from homepot.config import FleetSettings, Settings
from homepot.db import utcnow
from homepot.device.models import Device
from homepot.error_logger import record_error
from homepot.kit.periodic import run_periodically
from homepot.kit.redaction import REDACTED, mask_text
from homepot.site.models import Site

logger = logging.getLogger(__name__)

ROLLBACK_REASON_PREFIX = "automatic rollback: "
# A change with no samples after it waits this many windows for late telemetry; a verdict
# reached later than this many windows after the change is not acted on.
SETTLE_WINDOWS = 3
# Changes older than fleet.impact_max_age_seconds marked per pass (one UPDATE by id).
_TOO_OLD_BATCH = 2_000
TOO_OLD_NOTE = "not evaluated: too old"


@dataclass(frozen=True)
class Verdict:
    was_successful: bool | None
    # What got worse, readable: "error rate rose from 0.4 % to 3.1 %".
    regressions: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class ImpactEvaluation:
    """What one pass decided about one change."""

    event_id: str
    entity_type: str
    entity_id: str
    parameter_name: str
    was_successful: bool | None
    rolled_back: bool
    note: str | None


class _RollbackFailed(Exception):
    pass


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _both(before: dict[str, Any], after: dict[str, Any], key: str) -> tuple[float, float] | None:
    old, new = before.get(key), after.get(key)
    if old is None or new is None:
        return None
    return float(old), float(new)


def judge(before: dict[str, Any], after: dict[str, Any], fleet: FleetSettings) -> Verdict:
    """The documented rule (module docstring) applied to two performance summaries."""
    if not before.get("samples"):
        return Verdict(None, note="no metrics were reported before the change")
    if not after.get("samples"):
        return Verdict(None, note="no metrics were reported after the change")
    regressions: list[str] = []
    error_rate = _both(before, after, "avg_error_rate")
    latency = _both(before, after, "avg_network_latency_ms")
    if error_rate is not None:
        old, new = error_rate
        rise = new - old
        if rise > fleet.error_rate_margin_points and rise > fleet.error_rate_margin_ratio * old:
            regressions.append(f"error rate rose from {_number(old)} % to {_number(new)} %")
    if latency is not None:
        old, new = latency
        if new > old * (1 + fleet.latency_margin_ratio):
            regressions.append(f"network latency rose from {_number(old)} ms to {_number(new)} ms")
    if error_rate is None and latency is None:
        return Verdict(
            None, note="neither error rate nor latency was reported both before and after"
        )
    return Verdict(not regressions, tuple(regressions))


def _unset(column: Any) -> ColumnElement[bool]:
    # A JSON column written as None holds SQL NULL or JSON null, depending on the writer.
    return or_(column.is_(None), column == JSON.NULL)


def _is_rollback(row: ConfigurationHistory) -> bool:
    return (
        row.change_type == "automated"
        and row.changed_by == "system"
        and (row.change_reason or "").startswith(ROLLBACK_REASON_PREFIX)
    )


def _withheld(value: Any) -> bool:
    """True when the recorder replaced any part of a stored value (a secret, a card number)."""
    if isinstance(value, dict):
        return any(_withheld(item) for item in value.values())
    if isinstance(value, list):
        return any(_withheld(item) for item in value)
    return isinstance(value, str) and (REDACTED in value or "****" in value)


def _shown(stored: dict[str, Any] | None) -> str:
    if stored is None:
        return "(not set)"
    text = repr(stored.get("value"))
    return text if len(text) <= 60 else text[:57] + "..."


def _stored(stored: dict[str, Any] | None) -> Any:
    return None if stored is None else stored.get("value")


async def _entity(session: AsyncSession, row: ConfigurationHistory) -> Device | Site | None:
    model: type[Device] | type[Site] = Device if row.entity_type == "device" else Site
    return await session.get(model, row.entity_id, with_for_update=True)


async def _rollback_refusal(
    session: AsyncSession, row: ConfigurationHistory, fleet: FleetSettings, now: datetime
) -> tuple[str | None, Device | Site | None]:
    """Why the change may not be rolled back (None when it may), and the locked entity."""
    window = timedelta(seconds=fleet.impact_window_seconds)
    if not fleet.rollback_enabled:
        return "the automatic rollback policy is off", None
    if _is_rollback(row):
        return "the change is itself an automatic rollback", None
    if now > row.timestamp + SETTLE_WINDOWS * window:
        return "the verdict came too long after the change; an operator should decide", None
    if _withheld(row.old_value) or _withheld(row.new_value):
        return "the value is a secret and was not stored in history", None
    entity = await _entity(session, row)
    if entity is None:
        return f"the {row.entity_type} no longer exists", None
    config = entity.config
    key = row.parameter_name
    still_new = (
        key not in config
        if row.new_value is None
        else key in config and same_value(config[key], _stored(row.new_value))
    )
    if not still_new:
        return f"{row.parameter_name} was changed again since", None
    return None, entity


async def _evaluate_change(
    session: AsyncSession,
    recorder: Recorder,
    settings: Settings,
    row: ConfigurationHistory,
    now: datetime,
) -> ImpactEvaluation | None:
    fleet = settings.fleet
    seconds = fleet.impact_window_seconds
    window = timedelta(seconds=seconds)
    recorded_before = row.performance_before
    # Rows written by other producers may lack it, or carry another shape: measure it then.
    before = (
        recorded_before
        if recorded_before and "samples" in recorded_before
        else await measure_performance(
            session,
            entity_type=row.entity_type,
            entity_id=row.entity_id,
            start=row.timestamp - window,
            window_seconds=seconds,
        )
    )
    after = await measure_performance(
        session,
        entity_type=row.entity_type,
        entity_id=row.entity_id,
        start=row.timestamp,
        window_seconds=seconds,
    )
    if not after["samples"] and now < row.timestamp + SETTLE_WINDOWS * window:
        return None  # undecided: telemetry for the window may still arrive
    verdict = judge(before, after, fleet)
    notes = [verdict.note] if verdict.note else []
    entity: Device | Site | None = None
    if verdict.was_successful is False:
        refusal, entity = await _rollback_refusal(session, row, fleet, now)
        if refusal is not None:
            notes.append(f"not rolled back: {refusal}")
    note = "; ".join(notes) or None
    values: dict[str, Any] = {
        "performance_after": {**after, "note": note} if note else after,
        "was_successful": verdict.was_successful,
    }
    if not recorded_before:
        values["performance_before"] = before
    regressions = "; ".join(verdict.regressions)
    minutes = _number(seconds / 60)
    if entity is not None:
        values["was_rolled_back"] = True
        values["rollback_reason"] = mask_text(
            f"{regressions} in the {minutes} min after the change; {row.parameter_name}"
            f" restored to {_shown(row.old_value)}"
        )
    claimed = await session.execute(
        update(ConfigurationHistory)
        .where(
            ConfigurationHistory.event_id == row.event_id,
            _unset(ConfigurationHistory.performance_after),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    assert isinstance(claimed, CursorResult)
    if claimed.rowcount != 1:
        return None  # judged by another server process in the meantime
    if entity is not None:
        try:
            await change_config(
                session,
                recorder,
                entity_type="device" if isinstance(entity, Device) else "site",
                entity=entity,
                patch={row.parameter_name: _stored(row.old_value)},
                changed_by="system",
                reason=f"{ROLLBACK_REASON_PREFIX}{regressions} after {row.parameter_name} was"
                f" changed from {_shown(row.old_value)} to {_shown(row.new_value)} at"
                f" {row.timestamp.isoformat()}",
                change_type="automated",
                settings=settings,
                now=now,
            )
        except Exception as exc:
            raise _RollbackFailed(str(exc)) from exc
        logger.warning(
            "rolled back %s of %s %s: %s",
            row.parameter_name,
            row.entity_type,
            row.entity_id,
            regressions,
        )
    return ImpactEvaluation(
        event_id=row.event_id,
        entity_type=row.entity_type,
        entity_id=row.entity_id,
        parameter_name=row.parameter_name,
        was_successful=verdict.was_successful,
        rolled_back=entity is not None,
        note=note,
    )


def _log_failure(
    recorder: Recorder, exc: Exception, row: ConfigurationHistory | None = None
) -> None:
    rollback = isinstance(exc, _RollbackFailed)
    cause = exc.__cause__ if rollback and isinstance(exc.__cause__, Exception) else exc
    what = f"configuration change {row.event_id}" if row is not None else "configuration changes"
    record_error(
        category="database",
        severity="critical" if rollback else "error",
        error_code="CONFIG_ROLLBACK_FAILED" if rollback else "IMPACT_EVAL_FAILED",
        error_message=(
            f"could not roll back {what}: {cause}"
            if rollback
            else f"could not evaluate the impact of {what}: {cause}"
        ),
        exception=cause,
        device_id=row.entity_id if row is not None and row.entity_type == "device" else None,
        source=source_of(row is not None and row.source == SIMULATED),
        context=(
            {
                "event_id": row.event_id,
                "entity_type": row.entity_type,
                "entity_id": row.entity_id,
                "parameter_name": row.parameter_name,
            }
            if row is not None
            else None
        ),
        recorder=recorder,
    )


def _awaiting_verdict() -> ColumnElement[bool]:
    return and_(
        _unset(ConfigurationHistory.performance_after),
        ConfigurationHistory.entity_type.in_(ENTITY_TYPES),
    )


async def _mark_too_old(
    session_factory: async_sessionmaker[AsyncSession], oldest: datetime, fleet: FleetSettings
) -> int:
    """Mark up to ``_TOO_OLD_BATCH`` changes older than ``oldest`` that have no verdict as not
    evaluated (one bounded statement); returns how many."""
    days = _number(fleet.impact_max_age_seconds / 86_400)
    ids = (
        select(ConfigurationHistory.id)
        .where(_awaiting_verdict(), ConfigurationHistory.timestamp < oldest)
        .limit(_TOO_OLD_BATCH)
        .scalar_subquery()
    )
    async with session_factory() as session, session.begin():
        marked = await session.execute(
            update(ConfigurationHistory)
            .where(ConfigurationHistory.id.in_(ids), _awaiting_verdict())
            .values(
                performance_after={"note": f"{TOO_OLD_NOTE} (older than {days} days)"},
                was_successful=None,
            )
            .execution_options(synchronize_session=False)
        )
    assert isinstance(marked, CursorResult)
    return int(marked.rowcount)


async def evaluate_due_changes(
    session_factory: async_sessionmaker[AsyncSession],
    recorder: Recorder,
    settings: Settings,
    now: datetime | None = None,
    *,
    stop: asyncio.Event | None = None,
) -> list[ImpactEvaluation]:
    """One pass: judge the newest ``fleet.impact_max_changes_per_pass`` changes older than
    the window that have no verdict yet; the next pass goes on with the rest.

    Newest first: a change can only be rolled back within ``SETTLE_WINDOWS`` windows of it,
    so a fresh change must not wait behind a backlog of old ones (history imported, a server
    down for days). Changes older than ``fleet.impact_max_age_seconds`` are not judged: each
    pass marks up to ``_TOO_OLD_BATCH`` of them with the note ``not evaluated: too old``.
    Each change is judged (and rolled back) in its own transaction; one that fails is logged
    to error_logs and left for the next pass. ``stop`` (set when the server stops) ends the
    pass between two changes. Returns what was decided.
    """
    fleet = settings.fleet
    now = now or utcnow()
    due_before = now - timedelta(seconds=fleet.impact_window_seconds)
    oldest = now - timedelta(seconds=fleet.impact_max_age_seconds)
    marked = await _mark_too_old(session_factory, oldest, fleet)
    if marked:
        logger.info("impact: %d configuration changes too old to judge, marked", marked)
    statement = (
        select(ConfigurationHistory)
        .where(
            _awaiting_verdict(),
            ConfigurationHistory.timestamp <= due_before,
            ConfigurationHistory.timestamp >= oldest,
        )
        .order_by(ConfigurationHistory.timestamp.desc(), ConfigurationHistory.id.desc())
        .limit(fleet.impact_max_changes_per_pass)
    )
    async with session_factory() as session:
        due = list(await session.scalars(statement))
    decided: list[ImpactEvaluation] = []
    for row in due:
        if stop is not None and stop.is_set():
            break
        try:
            async with session_factory() as session, session.begin():
                evaluation = await _evaluate_change(session, recorder, settings, row, now)
        except Exception as exc:
            _log_failure(recorder, exc, row)
            continue
        if evaluation is not None:
            decided.append(evaluation)
        await asyncio.sleep(0)  # the request handlers of this process come first
    return decided


@asynccontextmanager
async def run_impact_evaluator(app: FastAPI) -> AsyncIterator[None]:
    """Background service: a pass every ``fleet.impact_evaluator_interval_seconds``."""
    settings: Settings = app.state.settings

    stop = asyncio.Event()

    async def evaluation_pass() -> None:
        await evaluate_due_changes(
            app.state.session_factory, app.state.recorder, settings, stop=stop
        )

    async with run_periodically(
        "impact-evaluator",
        settings.fleet.impact_evaluator_interval_seconds,
        evaluation_pass,
        lambda exc: _log_failure(app.state.recorder, exc),  # the database is away: next pass
        leadership=app.state.leadership,
        stop=stop,
    ):
        yield
