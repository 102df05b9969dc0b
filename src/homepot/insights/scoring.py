"""Training the failure-risk model from history, and scoring the active devices with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.insights.models import DeviceRisk


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
) -> TrainingReport:
    """Fit a model on ``[since, until]`` of this database and write it to ``out``.

    Raises :class:`homepot.insights.risk.ModelError` when the history holds too few failures.
    """
    from homepot.insights.features import load_history, training_samples
    from homepot.insights.risk import train

    history = await load_history(session, since, until)
    samples = training_samples(history, horizon)
    model = train(samples, horizon=horizon, since=since, until=until, now=now, seed=seed)
    model.save(out)
    return TrainingReport(
        path=out,
        samples=int(samples.labels.size),
        failures=int(samples.labels.sum()),
        validation=model.validation,
    )


async def score_devices(session: AsyncSession, model_path: Path, now: datetime) -> int:
    """Score every device that reported in the last 6 h; one ``device_risk`` row each.

    Returns how many devices were scored. Raises ModelError for an unusable model file.
    """
    from homepot.insights.features import current_features, load_history
    from homepot.insights.risk import load_model

    model = load_model(model_path)
    history = await load_history(session, now - timedelta(hours=1), now)
    samples = current_features(history, sorted(history.devices), now)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        risks = model.predict(samples.matrix)
    horizon_minutes = int(model.horizon.total_seconds() // 60)
    for index, device_id in enumerate(samples.device_ids):
        session.add(
            DeviceRisk(
                device_id=device_id,
                site_id=history.devices[device_id].site_id,
                computed_at=now,
                horizon_minutes=horizon_minutes,
                risk=round(float(risks[index]), 4),
                factors=model.factors(samples.matrix[index]),
                model=model.name,
            )
        )
    await session.flush()
    return len(samples.device_ids)


async def latest_risks(
    session: AsyncSession, device_ids: Sequence[str] | None = None
) -> dict[str, DeviceRisk]:
    """The newest ``device_risk`` row of each device (of the given ones, if any)."""
    newest = select(DeviceRisk.device_id, func.max(DeviceRisk.computed_at).label("at")).group_by(
        DeviceRisk.device_id
    )
    if device_ids is not None:
        newest = newest.where(DeviceRisk.device_id.in_(device_ids))
    latest = newest.subquery()
    statement = select(DeviceRisk).join(
        latest,
        (DeviceRisk.device_id == latest.c.device_id) & (DeviceRisk.computed_at == latest.c.at),
    )
    return {row.device_id: row for row in await session.scalars(statement)}
