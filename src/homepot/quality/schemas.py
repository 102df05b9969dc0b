"""The quality gate's query parameters; the report itself is :class:`service.QualityReport`."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from homepot.kit.query import StrictQuery
from homepot.quality.service import (
    DEFAULT_MAX_NULL_RATE,
    DEFAULT_MAX_STALENESS,
    DEFAULT_MIN_ROWS,
    DEFAULT_STOPPED_AFTER,
    Thresholds,
)


class QualityQuery(StrictQuery):
    """Thresholds of the gate; any other parameter is refused (422)."""

    min_rows: int = Field(
        default=DEFAULT_MIN_ROWS, ge=0, description="Rows each table needs (the spec's target)"
    )
    max_staleness_hours: float = Field(
        default=DEFAULT_MAX_STALENESS.total_seconds() / 3600,
        gt=0,
        le=24 * 365,
        description="An event table whose newest row is older than this fails",
    )
    max_null_rate: float = Field(
        default=DEFAULT_MAX_NULL_RATE,
        ge=0,
        le=1,
        description="Highest share (0-1) of NULLs allowed in a table's required columns",
    )
    stopped_after_minutes: float = Field(
        default=DEFAULT_STOPPED_AFTER.total_seconds() / 60,
        gt=0,
        le=7 * 24 * 60,
        description="A terminal silent this long while its site's others report has stopped",
    )
    include_simulated: bool = Field(
        default=False,
        description="Also judge rows of the simulation (source 'simulated': demo, backfill, "
        "sample data, simulated terminals); left out by default, and counted in "
        "simulated_rows_left_out",
    )

    def thresholds(self) -> Thresholds:
        return Thresholds(
            min_rows=self.min_rows,
            max_staleness=timedelta(hours=self.max_staleness_hours),
            max_null_rate=self.max_null_rate,
            stopped_after=timedelta(minutes=self.stopped_after_minutes),
        )
