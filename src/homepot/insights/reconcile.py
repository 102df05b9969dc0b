"""Fold freshly detected episodes into the stored anomalies: one row per contiguous anomaly.

Shared by the device scan (homepot.insights.service) and the API-route scan
(homepot.insights.api_health): an episode that touches a stored row of the same subject,
metric and detector (within the detectors' gap) extends it, any other is a new row, and a
stored open row whose metric was normal in the scanned bins after it was last seen is closed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from homepot.insights import detectors as det
from homepot.insights.models import Anomaly, AnomalyStatus

if TYPE_CHECKING:
    from homepot.insights.service import ScanReport


class DetectedEpisode(Protocol):
    @property
    def subject(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def detector(self) -> str: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def last_seen_at(self) -> datetime: ...
    @property
    def open(self) -> bool: ...
    @property
    def score(self) -> int: ...
    @property
    def observed(self) -> float | None: ...
    @property
    def expected(self) -> float | None: ...
    @property
    def explanation(self) -> str: ...


E = TypeVar("E", bound=DetectedEpisode)


def new_anomaly(
    episode: DetectedEpisode,
    *,
    device_id: str | None = None,
    site_id: str | None = None,
    expected_maintenance: bool = False,
) -> Anomaly:
    """The stored row of an episode seen for the first time."""
    return Anomaly(
        subject=episode.subject,
        device_id=device_id,
        site_id=site_id,
        metric=episode.metric,
        detector=episode.detector,
        started_at=episode.started_at,
        ended_at=None if episode.open else episode.last_seen_at,
        last_seen_at=episode.last_seen_at,
        score=episode.score,
        severity=det.severity_of(episode.score),
        observed=episode.observed,
        expected=episode.expected,
        explanation=episode.explanation,
        status=(AnomalyStatus.active if episode.open else AnomalyStatus.resolved).value,
        expected_maintenance=expected_maintenance,
    )


def extend_anomaly(
    row: Anomaly, episode: DetectedEpisode, *, expected_maintenance: bool = False
) -> bool:
    """Fold ``episode`` into the stored ``row``; True when anything changed.

    A row stays ``expected_maintenance`` only while every episode folded into it is.
    """
    before = (
        row.started_at,
        row.ended_at,
        row.last_seen_at,
        row.score,
        row.explanation,
        row.expected_maintenance,
    )
    row.started_at = min(row.started_at, episode.started_at)
    row.expected_maintenance = row.expected_maintenance and expected_maintenance
    if episode.last_seen_at >= row.last_seen_at:
        row.last_seen_at = episode.last_seen_at
        row.observed, row.expected = episode.observed, episode.expected
        row.explanation = episode.explanation
        if episode.open:
            if row.ended_at is not None and row.status == AnomalyStatus.resolved:
                row.status = AnomalyStatus.active.value
            row.ended_at = None
        else:
            if row.ended_at is None and row.status == AnomalyStatus.active:
                row.status = AnomalyStatus.resolved.value
            row.ended_at = row.last_seen_at
    row.score = max(row.score, episode.score)
    row.severity = det.severity_of(row.score)
    return before != (
        row.started_at,
        row.ended_at,
        row.last_seen_at,
        row.score,
        row.explanation,
        row.expected_maintenance,
    )


def reconcile(
    session: AsyncSession,
    stored: Sequence[Anomaly],
    episodes: Sequence[E],
    span: tuple[int, int],
    report: ScanReport,
    *,
    new_row: Callable[[E], Anomaly],
    extend: Callable[[Anomaly, E], bool],
) -> None:
    """Match ``episodes`` (found in the bins ``span``) to ``stored`` rows and count it all."""
    first_bin, end_bin = span
    gap = det.BIN * (det.GAP_BINS + 1)
    by_key: dict[tuple[str, str, str], list[Anomaly]] = {}
    for row in stored:
        by_key.setdefault((row.subject, row.metric, row.detector), []).append(row)
    matched: set[int] = set()
    for episode in episodes:
        candidates = by_key.setdefault((episode.subject, episode.metric, episode.detector), [])
        found = next(
            (
                row
                for row in candidates
                if row.started_at <= episode.last_seen_at + gap
                and (row.ended_at is None or row.ended_at >= episode.started_at - gap)
            ),
            None,
        )
        if found is None:
            found = new_row(episode)
            session.add(found)
            candidates.append(found)
            report.inserted += 1
        elif extend(found, episode):
            report.updated += 1
        matched.add(id(found))
    # Open episodes whose metric was normal in the scanned bins after they were last seen.
    evaluated_end = det.bin_start(end_bin) - gap
    for row in stored:
        if (
            id(row) not in matched
            and row.ended_at is None
            and det.bin_start(first_bin) - gap <= row.last_seen_at <= evaluated_end
        ):
            row.ended_at = row.last_seen_at
            if row.status == AnomalyStatus.active:
                row.status = AnomalyStatus.resolved.value
            report.closed += 1
