"""What the insights API reads and returns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from homepot.analytics.schemas import Id64
from homepot.job.schemas import JobType
from homepot.kit.localtime import LocalTime
from homepot.kit.streams import StreamQuery
from homepot.site.schemas import DAY_NAMES

MetricName = Literal[
    "cpu", "memory", "disk", "network_latency", "error_rate", "transactions", "reporting"
]
StatusName = Literal["active", "acknowledged", "resolved"]
# An API route's episodes: "api:" and the route template, e.g. api:/api/v1/devices/{device_id}.
ApiMetricName = Annotated[str, StringConstraints(pattern=r"^api:/", max_length=520)]


class AnomalyQuery(StreamQuery):
    """Filters of GET /api/v1/insights/anomalies; the dates apply to ``started_at``."""

    device_id: Id64 | None = Field(default=None, description="Device, e.g. pos-terminal-001")
    site_id: Id64 | None = Field(default=None, description="Site, e.g. site-001")
    metric: MetricName | ApiMetricName | None = Field(
        default=None, description="The metric, reporting, or api:<route template>"
    )
    status: StatusName | None = Field(default=None, description="Where the operator is with it")
    min_score: int | None = Field(default=None, ge=0, le=100, description="Score at least this")
    expected_maintenance: bool | None = Field(
        default=None, description="true: only episodes inside a maintenance window; false: none"
    )


class AnomalyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    device_id: str | None = Field(
        description="Null for a whole site that stopped reporting, and for an API route"
    )
    site_id: str | None
    metric: str
    detector: str = Field(
        description="level, trend or silence; api_error_rate or api_p95_latency for an API route"
    )
    started_at: datetime
    ended_at: datetime | None = Field(description="Null while the episode is under way")
    last_seen_at: datetime = Field(description="End of the last anomalous 5-minute bin")
    score: int = Field(description="0 to 100: how far from normal, or how soon the limit")
    severity: str = Field(description="info (< 45), warning (45 to 74), critical (75+)")
    observed: float | None
    expected: float | None
    explanation: str
    status: str
    expected_maintenance: bool = Field(
        description="Began inside the site's maintenance window: stored, never alerts"
    )
    created_at: datetime
    updated_at: datetime


class AnomalyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: StatusName = Field(
        description="acknowledged (someone is on it), resolved (handled), or active again"
    )


RiskSource = Literal["model", "anomalies"]


class RiskRead(BaseModel):
    """A device's newest failure-risk score (``device_risk``)."""

    model_config = ConfigDict(from_attributes=True)

    risk: float = Field(description="Chance of a failure within the horizon, 0 to 1")
    horizon_minutes: int
    factors: list[dict[str, str]] = Field(
        description="What pushes the score most, as readable pairs {factor, value}"
    )
    model: str = Field(description='The trained model that scored it, or "anomalies"')
    computed_at: datetime


class FleetDevice(BaseModel):
    device_id: str
    site_id: str | None
    worst_severity: str | None = Field(description="Of its active episodes; null without any")
    top_score: int | None = Field(description="Of its active episodes; null without any")
    risk: RiskRead | None = Field(description="Its newest risk score; null before the first")
    active_anomalies: list[AnomalyRead]


class FleetRanking(BaseModel):
    risk_source: RiskSource = Field(
        description="What the ranking rests on: a trained risk model (`model`), or the active "
        "anomaly episodes alone (`anomalies`, until `homepot insights train` has made one)"
    )
    devices: list[FleetDevice]


class BaselineBand(BaseModel):
    """A metric's 5-minute means next to what is normal for each bin (for charts)."""

    metric: str
    times: list[datetime]
    observed: list[float | None]
    expected: list[float | None]
    lower: list[float | None]
    upper: list[float | None]
    source: list[str] = Field(description="hour_of_week, hour_of_day, recent, cohort or none")


class DeviceInsights(BaseModel):
    device_id: str
    site_id: str
    risk_source: RiskSource
    risk: RiskRead | None
    anomalies: list[AnomalyRead]
    bands: list[BaselineBand]


# --- recommended maintenance windows --------------------------------------------------------


class WindowRead(BaseModel):
    start: LocalTime = Field(description="Local start time (the site's time zone)")
    end: LocalTime = Field(description="Local end time; 00:00 is midnight at the end of the day")
    expected_transactions: float = Field(
        description="Transactions that fell in this window on an average observed day"
    )


class MaintenanceWindowRead(BaseModel):
    weekday: int = Field(description="0 = Monday ... 6 = Sunday")
    day_name: str
    recommended: WindowRead | None = Field(
        description="The window disturbing the fewest transactions; null when no window of "
        "this length fits inside the day's closed hours"
    )
    inside_closed_hours: bool = Field(
        description="True when the day has declared closed hours and the window respects them"
    )
    basis_days: int = Field(
        description="How many days of this weekday had telemetry in the lookback; 0 means the "
        "recommendation rests on the declared hours alone"
    )
    declared: WindowRead | None = Field(
        description="A job of the same length at the start of the declared maintenance window "
        "that day (null when the declared rules open no window that day)"
    )
    transactions_saved: float | None = Field(
        description="declared.expected_transactions − recommended.expected_transactions"
    )


class MaintenanceWindowAdvice(BaseModel):
    site_id: str
    timezone: str
    duration_minutes: int
    lookback_days: int
    computed_at: datetime
    items: list[MaintenanceWindowRead]


class MaintenanceWindowQuery(BaseModel):
    """Parameters of GET /insights/maintenance-windows; unknown names are refused."""

    model_config = ConfigDict(extra="forbid")

    site_id: str = Field(min_length=1, max_length=64, description="The site to advise on")
    duration_minutes: int = Field(
        default=60, ge=15, le=24 * 60, description="Length of the window (15 minutes to 24 h)"
    )
    lookback_days: int = Field(
        default=28, ge=1, le=90, description="Days of observed transactions to learn from"
    )


def day_name(weekday: int) -> str:
    return DAY_NAMES[weekday]


def window_read(window: Any) -> WindowRead | None:
    if window is None:
        return None
    return WindowRead(
        start=window.start, end=window.end, expected_transactions=window.expected_transactions
    )


# --- job success odds -----------------------------------------------------------------------


class JobSuccessQuery(BaseModel):
    """Parameters of GET /insights/job-success: a job type and one device or one site."""

    model_config = ConfigDict(extra="forbid")

    job_type: JobType = Field(description="restart, config_change, firmware_update, health_check")
    device_id: str | None = Field(
        default=None, min_length=1, max_length=64, description="One target device"
    )
    site_id: str | None = Field(
        default=None, min_length=1, max_length=64, description="Every device of this site"
    )
    lookback_days: int = Field(
        default=60, ge=1, le=365, description="Days of job outcomes to learn from"
    )

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.device_id is None) == (self.site_id is None):
            raise ValueError("give exactly one of device_id and site_id")
        return self


class JobSuccessBasis(BaseModel):
    device: int = Field(description="Past outcomes of this job type on the device")
    site: int = Field(description="... at the device's site")
    job_type: int = Field(description="... in the fleet")
    fleet: int = Field(description="Past outcomes of every job type in the fleet")


class JobSuccessTarget(BaseModel):
    device_id: str
    site_id: str | None
    probability: float = Field(description="Chance that the job succeeds on it, 0 to 1")
    basis: JobSuccessBasis
    reasons: list[str] = Field(description="The evidence that moved the estimate most, first")


class JobSuccessAdvice(BaseModel):
    job_type: str
    computed_at: datetime
    lookback_days: int
    model: str = Field(
        description="shrinkage+context (the logistic context model is fitted), or shrinkage "
        "(too few failures in the history to fit it: the shrunk success rate alone)"
    )
    trained_on: int = Field(description="Past outcomes the context model was fitted on")
    job_type_rate: float | None = Field(
        description="Observed success rate of this job type in the lookback; null without any"
    )
    expected_success_rate: float | None = Field(
        description="Mean probability over the targets: the expected share that succeeds"
    )
    items: list[JobSuccessTarget] = Field(description="Per target device, the riskiest first")


# -- configuration impact ---------------------------------------------------------------------

ImpactVerdict = Literal["regression", "improvement", "no_effect", "not_enough_data"]
MAX_IMPACT_DAYS = 92


class ConfigImpactRange(BaseModel):
    """The changes analysed: made in ``[since, until)``, each measured over ``window_minutes``
    before and after."""

    model_config = ConfigDict(extra="forbid")

    since: datetime | None = Field(
        default=None, description="ISO 8601; default 30 days before `until`"
    )
    until: datetime | None = Field(default=None, description="ISO 8601; default now")
    window_minutes: int = Field(
        default=30, ge=10, le=240, description="Minutes measured before and after each change"
    )

    @model_validator(mode="after")
    def _aware_and_ordered(self) -> ConfigImpactRange:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                setattr(self, name, value.replace(tzinfo=UTC))
        if self.since is not None and self.until is not None:
            if self.since >= self.until:
                raise ValueError("since must be before until")
            if self.until - self.since > timedelta(days=MAX_IMPACT_DAYS):
                raise ValueError(f"since to until spans at most {MAX_IMPACT_DAYS} days")
        return self

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        until = self.until or now
        since = self.since or until - timedelta(days=30)
        if since >= until:
            raise ValueError("since must be before until")
        if until - since > timedelta(days=MAX_IMPACT_DAYS):
            raise ValueError(f"since to until spans at most {MAX_IMPACT_DAYS} days")
        return since, until


class ConfigImpactQuery(ConfigImpactRange):
    parameter: str | None = Field(
        default=None, min_length=1, max_length=128, description="Only this parameter"
    )


class MetricImpact(BaseModel):
    metric: str = Field(description="error_rate, network_latency_ms or cpu_percent")
    unit: str
    effect: float | None = Field(
        description="Mean difference in differences over the devices (positive: worse)"
    )
    ci_low: float | None = Field(description="95 % confidence interval, low end")
    ci_high: float | None
    devices: int = Field(description="Devices whose effect on this metric was measurable")


class RestoreGroup(BaseModel):
    value: Any = Field(description="The value the devices had before (null: the key was absent)")
    devices: list[str]


class ConfigImpactRead(BaseModel):
    id: str = Field(description="Stable id of (parameter, value): the same in every answer")
    parameter: str
    value: Any = Field(description="The new value the devices received")
    verdict: ImpactVerdict
    harm: float = Field(description="Largest effect of any metric in units of its material size")
    devices: int = Field(description="Devices that received the value")
    changes: int
    first_at: datetime
    last_at: datetime
    metrics: list[MetricImpact]
    explanation: str
    rollback: list[RestoreGroup] | None = Field(
        description="For a regression: what accepting the proposal restores on which devices"
    )


class ConfigImpactReport(BaseModel):
    since: datetime
    until: datetime
    window_minutes: int
    rows: list[ConfigImpactRead]


class ConfigImpactApplied(BaseModel):
    impact: ConfigImpactRead
    job_ids: list[str] = Field(description="One config_change job per device")
    devices: list[str]
    already_pending: list[str] = Field(
        description="Devices that already have an unfinished rollback job of this proposal"
    )
