"""Training the failure-risk model from history, and scoring the active devices with it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.insights.models import Anomaly, AnomalyStatus, DeviceRisk
from homepot.kit.offload import compute, fetch_in_slices

if TYPE_CHECKING:
    from homepot.insights.features import History
    from homepot.insights.risk import RiskModel
    from homepot.insights.risk_reads import BaselineCache


@dataclass(frozen=True)
class TrainingReport:
    path: Path
    samples: int
    failures: int
    validation: dict[str, object]


async def train_from_history(
    session: AsyncSession,
    *,
    since: datetime,
    until: datetime,
    horizon: timedelta,
    out: Path,
    now: datetime,
    seed: int = 0,
    include_simulated: bool = False,
) -> TrainingReport:
    """Fit a model on ``[since, until]`` of this database and write it to ``out``.

    Real rows only unless ``include_simulated``. Raises
    :class:`homepot.insights.risk.ModelError` when the history holds too few failures.
    """
    from homepot.analytics.provenance import INCLUDE_FLAG
    from homepot.insights.features import load_history, training_samples
    from homepot.insights.risk import ModelError, train

    history = await load_history(session, since, until, include_simulated=include_simulated)
    if not include_simulated and not any(
        entry.metric_times.size for entry in history.devices.values()
    ):
        everything = await load_history(session, since, until, include_simulated=True)
        if any(entry.metric_times.size for entry in everything.devices.values()):
            raise ModelError(
                "every metric row in the range is simulated, so there is nothing real to learn "
                f"from; pass {INCLUDE_FLAG.split(' (')[0]} to train on the simulation's rows"
            )
    samples = training_samples(history, horizon)
    model = train(samples, horizon=horizon, since=since, until=until, now=now, seed=seed)
    model.save(out)
    return TrainingReport(
        path=out,
        samples=int(samples.labels.size),
        failures=int(samples.labels.sum()),
        validation=model.validation,
    )


# A device's risk is stored again when it moved this much, its explanation changed, or its
# last row is this old; in between the newest row stands (5,000 devices scored every minute
# would otherwise write 7 million rows a day).
RISK_CHANGE = 0.02
RISK_REFRESH = timedelta(hours=6)
ANOMALY_HORIZON_MINUTES = 120


@dataclass(frozen=True)
class Score:
    device_id: str
    site_id: str | None
    risk: float
    factors: list[dict[str, str]]


async def _store_changed(
    session: AsyncSession, scores: Sequence[Score], *, now: datetime, horizon: int, model: str
) -> int:
    """Add a ``device_risk`` row for each score that differs from the device's newest one.

    Core rows both ways, not ORM objects: a fleet is 5,000 of them, and building them held
    the event loop for a quarter of a second."""
    newest = _newest_risks(
        [score.device_id for score in scores],
        DeviceRisk.device_id,
        DeviceRisk.model,
        DeviceRisk.risk,
        DeviceRisk.factors,
        DeviceRisk.computed_at,
    )
    previous = {row.device_id: row for row in (await session.execute(newest)).all()}
    rows = await compute(_changed_rows, scores, previous, now, horizon, model)
    for start in range(0, len(rows), _INSERT_BATCH):
        await session.execute(insert(DeviceRisk), rows[start : start + _INSERT_BATCH])
    return len(rows)


# Rows per INSERT: the loop gets its turn between two batches.
_INSERT_BATCH = 500


def _changed_rows(
    scores: Sequence[Score], previous: dict[str, Any], now: datetime, horizon: int, model: str
) -> list[dict[str, Any]]:
    rows = []
    for score in scores:
        last = previous.get(score.device_id)
        if (
            last is not None
            and last.model == model
            and abs(last.risk - score.risk) < RISK_CHANGE
            and last.factors[:1] == score.factors[:1]
            and now - last.computed_at < RISK_REFRESH
        ):
            continue
        rows.append(
            {
                "device_id": score.device_id,
                "site_id": score.site_id,
                "computed_at": now,
                "horizon_minutes": horizon,
                "risk": score.risk,
                "factors": score.factors,
                "model": model,
            }
        )
    return rows


async def score_from_anomalies(session: AsyncSession, now: datetime) -> int:
    """Without a model: each device's risk from its active anomaly episodes alone.

    Episodes combine as independent chances, ``1 − Π(1 − score/100)``; an episode inside a
    maintenance window counts for nothing. A device whose episodes ended drops to 0. Returns
    how many rows were stored. The rows say ``model = "anomalies"``.
    """
    from homepot.device.models import Device

    devices = dict((await session.execute(select(Device.device_id, Device.site_id))).all())
    # Plain columns, not ORM objects, handed to the compute thread.
    active = await fetch_in_slices(
        session,
        select(Anomaly.device_id, Anomaly.score, Anomaly.metric, Anomaly.explanation)
        .where(
            Anomaly.device_id.is_not(None),
            Anomaly.ended_at.is_(None),
            Anomaly.status != AnomalyStatus.resolved.value,
            Anomaly.expected_maintenance.is_(False),
        )
        .order_by(Anomaly.id),
    )
    scores = await compute(_anomaly_scores, devices, active)
    return await _store_changed(
        session, scores, now=now, horizon=ANOMALY_HORIZON_MINUTES, model="anomalies"
    )


def _anomaly_scores(devices: Mapping[str, str | None], active: Sequence[Any]) -> list[Score]:
    """Each device's risk from its active episodes (device_id, score, metric, explanation)."""
    episodes: dict[str, list[Any]] = {}
    for episode in active:
        episodes.setdefault(episode.device_id, []).append(episode)
    scores = []
    for device_id, site_id in sorted(devices.items()):
        found = sorted(episodes.get(device_id, []), key=lambda e: -e.score)
        calm = 1.0
        for episode in found:
            calm *= 1 - min(episode.score, 100) / 100
        scores.append(
            Score(
                device_id=device_id,
                site_id=site_id,
                risk=round(1 - calm, 4),
                factors=[
                    {"factor": episode.metric, "value": episode.explanation}
                    for episode in found[:3]
                ],
            )
        )
    return scores


async def score_devices(
    session: AsyncSession,
    model: RiskModel,
    now: datetime,
    *,
    baselines: BaselineCache | None = None,
) -> int:
    """Score every device that reported in the last 6 h with the trained model.

    ``baselines``: the devices' baselines kept from this process's earlier passes (the
    server's), so that the pass reads the last 3 h of raw samples and the day before only
    for the devices whose baseline moves on (homepot.insights.risk_reads); without it, or
    cold, it reads every device's day. Returns how many rows were stored (a device whose
    risk did not move keeps its row).
    """
    from homepot.insights.risk_reads import BaselineCache, load_scoring_history

    # Every device is scored, simulated ones too: the demo's operators see its risk.
    cache = baselines if baselines is not None else BaselineCache()
    history = await load_scoring_history(session, now, cache)
    # Features, prediction and explanations are pure computation (~0.7 ms a device), done
    # off the event loop; the history is this pass's own.
    scores = await compute(_model_scores, history, model, now)
    return await _store_changed(
        session,
        scores,
        now=now,
        horizon=int(model.horizon.total_seconds() // 60),
        model=model.name,
    )


def _model_scores(history: History, model: RiskModel, now: datetime) -> list[Score]:
    """``model``'s risk and its top factors for every device of ``history`` that reported in
    the last 6 h."""
    from threadpoolctl import threadpool_limits

    from homepot.insights.features import current_features

    samples = current_features(history, sorted(history.devices), now)
    with threadpool_limits(limits=1):
        risks = model.predict(samples.matrix)
    return [
        Score(
            device_id=device_id,
            site_id=history.devices[device_id].site_id,
            risk=round(float(risks[index]), 4),
            factors=model.factors(samples.matrix[index]),
        )
        for index, device_id in enumerate(samples.device_ids)
    ]


def _newest_risks(device_ids: Sequence[str] | None, *columns: Any) -> Select[Any]:
    """The newest ``device_risk`` row of each device (of the given ones, if any): the whole
    row, or the row's ``columns``."""
    newest = select(DeviceRisk.device_id, func.max(DeviceRisk.computed_at).label("at")).group_by(
        DeviceRisk.device_id
    )
    if device_ids is not None:
        newest = newest.where(DeviceRisk.device_id.in_(device_ids))
    latest = newest.subquery()
    return select(*(columns or (DeviceRisk,))).join(
        latest,
        (DeviceRisk.device_id == latest.c.device_id) & (DeviceRisk.computed_at == latest.c.at),
    )


async def latest_risks(
    session: AsyncSession, device_ids: Sequence[str] | None = None
) -> dict[str, DeviceRisk]:
    """The newest ``device_risk`` row of each device (of the given ones, if any)."""
    statement = _newest_risks(device_ids)
    return {row.device_id: row for row in await session.scalars(statement)}
