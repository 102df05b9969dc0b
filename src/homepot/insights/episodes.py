"""Reading and updating the stored episodes: the anomaly stream, acknowledging and resolving,
the fleet ranked by risk, and one device's episodes next to its expected bands.

The scan that writes the episodes is :mod:`homepot.insights.service`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.device.models import Device
from homepot.insights import detectors as det
from homepot.insights.models import Anomaly, AnomalyStatus, DeviceRisk
from homepot.insights.schemas import (
    AnomalyQuery,
    AnomalyRead,
    BaselineBand,
    DeviceInsights,
    FleetDevice,
    FleetRanking,
    RiskRead,
)
from homepot.insights.service import ScanState, load_fleet, prepare_chunk
from homepot.kit.pagination import CursorPage
from homepot.kit.streams import Stream, at_least, equals, read_page


async def set_status(
    session: AsyncSession, anomaly_id: int, status: AnomalyStatus
) -> tuple[Anomaly, str] | None:
    """Acknowledge or resolve an episode; (the row, its previous status) or None if unknown."""
    row = await session.get(Anomaly, anomaly_id)
    if row is None:
        return None
    previous = row.status
    row.status = status.value
    await session.flush()
    return row, previous


def active_filter() -> Any:
    """Episodes an operator should look at: under way, not resolved, not maintenance."""
    return and_(
        Anomaly.ended_at.is_(None),
        Anomaly.status != AnomalyStatus.resolved.value,
        Anomaly.expected_maintenance.is_(False),
    )


def utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


ANOMALIES: Final = Stream(
    Anomaly,
    AnomalyQuery,
    AnomalyRead,
    {
        "device_id": equals(Anomaly.device_id),
        "site_id": equals(Anomaly.site_id),
        "metric": equals(Anomaly.metric),
        "status": equals(Anomaly.status),
        "min_score": at_least(Anomaly.score),
        "expected_maintenance": equals(Anomaly.expected_maintenance),
    },
    time_column="started_at",
)


async def list_anomalies(session: AsyncSession, params: AnomalyQuery) -> CursorPage[AnomalyRead]:
    """A page of episodes, the most recently started first."""
    return await read_page(session, ANOMALIES, params)


# A device without active episodes is listed when its risk is at least this.
LISTED_RISK: Final = 0.05


def _risk_source(risks: Iterable[DeviceRisk]) -> Literal["model", "anomalies"]:
    return "model" if any(row.model != "anomalies" for row in risks) else "anomalies"


async def fleet_ranking(session: AsyncSession, limit: int) -> FleetRanking:
    """Devices at risk, the riskiest first: by their newest risk score when the server has
    scored them (a trained model, or the anomaly episodes), then by their worst active
    episode. A device is listed with an active episode or a risk of at least 5 %."""
    from homepot.insights.scoring import latest_risks

    rows = (
        await session.scalars(
            select(Anomaly)
            .where(active_filter(), Anomaly.device_id.is_not(None))
            .order_by(Anomaly.score.desc(), Anomaly.started_at.desc(), Anomaly.id.desc())
        )
    ).all()
    by_device: dict[str, list[Anomaly]] = {}
    for row in rows:
        assert row.device_id is not None
        by_device.setdefault(row.device_id, []).append(row)
    risks = await latest_risks(session)
    listed = set(by_device) | {d for d, r in risks.items() if r.risk >= LISTED_RISK}

    def order(device_id: str) -> tuple[float, int, int, str]:
        risk = risks.get(device_id)
        episodes = by_device.get(device_id, [])
        return (
            -(risk.risk if risk is not None else 0.0),
            -(episodes[0].score if episodes else 0),
            -len(episodes),
            device_id,
        )

    devices = []
    for device_id in sorted(listed, key=order)[:limit]:
        episodes = by_device.get(device_id, [])
        risk = risks.get(device_id)
        devices.append(
            FleetDevice(
                device_id=device_id,
                site_id=episodes[0].site_id if episodes else risk.site_id if risk else None,
                worst_severity=det.severity_of(episodes[0].score) if episodes else None,
                top_score=episodes[0].score if episodes else None,
                risk=RiskRead.model_validate(risk) if risk is not None else None,
                active_anomalies=[AnomalyRead.model_validate(row) for row in episodes],
            )
        )
    return FleetRanking(risk_source=_risk_source(risks.values()), devices=devices)


# Bands drawn around the expected value: this many spreads either side.
BAND_SPREADS: Final = 3.0


async def device_insights(
    session: AsyncSession, device_id: str, hours: int, now: datetime
) -> DeviceInsights | None:
    """A device's episodes over the last ``hours`` (and any still under way), and for each
    metric its 5-minute means next to the expected band; None for an unknown device."""
    np = det.numpy()
    device = await session.get(Device, device_id)
    if device is None:
        return None
    end_bin = det.bin_of(now) + 1  # the bin under way too: a chart wants the newest sample
    first_bin = end_bin - hours * det.BINS_PER_HOUR
    fleet = await load_fleet(session, now, None)
    peers = [d for d in fleet.devices if d.site_id == device.site_id]
    row = next(index for index, d in enumerate(peers) if d.device_id == device_id)
    chunk, day_baselines = await prepare_chunk(
        session, fleet, peers, (first_bin, end_bin), ScanState(), [None], {}
    )
    start = det.CONTEXT_BINS
    times = [det.bin_start(first_bin + column) for column in range(end_bin - first_bin)]
    bands = []
    for spec in det.METRICS:
        base = det.baseline(chunk, spec, day_baselines.get(spec.name, []), start)
        expected = base.expected[row, start:]
        spread = base.scale[row, start:] * BAND_SPREADS
        bands.append(
            BaselineBand(
                metric=spec.name,
                times=times,
                observed=_floats(chunk.values[spec.name][row, start:]),
                expected=_floats(expected),
                lower=_floats(np.maximum(expected - spread, 0)),
                upper=_floats(expected + spread),
                source=[det.SOURCE_NAMES[code] for code in base.source[row, start:]],
            )
        )
    since = det.bin_start(first_bin)
    episodes = await session.scalars(
        select(Anomaly)
        .where(
            Anomaly.device_id == device_id,
            or_(Anomaly.ended_at.is_(None), Anomaly.ended_at >= since),
        )
        .order_by(Anomaly.started_at.desc(), Anomaly.id.desc())
        .limit(200)
    )
    from homepot.insights.scoring import latest_risks

    risk = (await latest_risks(session, [device_id])).get(device_id)
    return DeviceInsights(
        device_id=device_id,
        site_id=device.site_id,
        risk_source=_risk_source([risk] if risk is not None else []),
        risk=RiskRead.model_validate(risk) if risk is not None else None,
        anomalies=[AnomalyRead.model_validate(episode) for episode in episodes],
        bands=bands,
    )


def _floats(values: Any) -> list[float | None]:
    return [None if value != value else round(float(value), 3) for value in values.tolist()]
