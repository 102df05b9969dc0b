"""The body of ``POST /api/v1/analytics/exports``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from homepot.export.service import ExportError, ExportFormat, ExportRequest, time_range_of
from homepot.export.tables import ACCEPTED_NAMES, resolve_tables
from homepot.kit.timeranges import TimeBound


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tables: list[str] = Field(
        default_factory=list,
        description=f"Tables to export, by stream name ({ACCEPTED_NAMES}) or table name "
        "(e.g. api_request_logs); empty or left out: all eight.",
        examples=[["requests", "device-metrics"]],
    )
    since: TimeBound | None = Field(default=None, description="Rows at or after this moment.")
    until: TimeBound | None = Field(
        default=None, description="Rows up to this moment; a date includes that whole UTC day."
    )
    format: ExportFormat = "parquet"
    include_simulated: bool = Field(
        default=False,
        description="Also export rows of the simulation (source 'simulated': demo, backfill, "
        "sample data, simulated terminals). Left out by default; the manifest says how many.",
    )

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, names: list[str]) -> list[str]:
        resolve_tables(names)  # raises ValueError naming the unknown ones
        return names

    @model_validator(mode="after")
    def _ordered_range(self) -> ExportCreate:
        try:
            time_range_of(self.since, self.until)
        except ExportError as exc:
            raise ValueError(str(exc)) from None
        return self

    def to_request(self) -> ExportRequest:
        return ExportRequest(
            tables=resolve_tables(self.tables),
            time_range=time_range_of(self.since, self.until),
            format=self.format,
            include_simulated=self.include_simulated,
        )
