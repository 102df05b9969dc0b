"""The one settings object: environment variables with the HOMEPOT_ prefix and an optional .env.

Nested groups use a double underscore, e.g. ``HOMEPOT_ANALYTICS__BATCH_SIZE=500``.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Every API route lives under this prefix. Routers carry it in their own APIRouter(prefix=...),
# because FastAPI does not bake an include_router prefix into route.path, and the request log
# reads the route template from route.path.
API_PREFIX = "/api/v1"

DEFAULT_SECRET_KEY = "homepot-development-secret-change-me"

DEFAULT_SKIP_PATHS = (
    "/api/v1/health",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/static",
    "/favicon.ico",
)


class AnalyticsSettings(BaseModel):
    """Switches and tuning for analytics recording."""

    enabled: bool = True
    record_requests: bool = True
    # Paths (prefixes) whose requests are not written to api_request_logs.
    skip_paths: list[str] = Field(default_factory=lambda: list(DEFAULT_SKIP_PATHS))
    # Only requests under these prefixes are API requests; the dashboard's pages are not.
    request_path_prefixes: list[str] = Field(default_factory=lambda: ["/api/"])
    queue_max_events: int = Field(default=100_000, ge=10)
    batch_size: int = Field(default=500, ge=1, le=10_000)
    flush_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    retry_attempts: int = Field(default=3, ge=0, le=20)
    retry_backoff_seconds: float = Field(default=0.2, ge=0)
    spool_dir: Path = Path("var/spool")
    # How often a spooled backlog is retried while the database stays unreachable.
    spool_replay_interval_seconds: float = Field(default=2.0, gt=0)


class FleetSettings(BaseModel):
    """The device protocol, the orchestrator and the watchdog."""

    # e.g. mqtt://127.0.0.1:1883; empty: no broker, jobs are pushed through an in-process
    # channel (the embedded demo) and devices fall back to polling.
    mqtt_url: str = ""
    heartbeat_interval_seconds: float = Field(default=30, gt=0)
    telemetry_interval_seconds: float = Field(default=30, gt=0)
    # A device whose heartbeats stop for this long is marked offline by the watchdog.
    offline_after_seconds: float = Field(default=90, gt=0)
    watchdog_interval_seconds: float = Field(default=5, gt=0)
    # How long a pushed job waits for the device's acknowledgement before it is left for
    # the device to poll.
    ack_timeout_seconds: float = Field(default=10, gt=0)
    orchestrator_interval_seconds: float = Field(default=1, gt=0)
    retry_backoff_seconds: float = Field(default=30, ge=0)
    # Configuration impact: metrics windows before and after a change, and the rollback policy.
    impact_window_seconds: float = Field(default=600, gt=0)
    impact_evaluator_interval_seconds: float = Field(default=30, gt=0)
    rollback_enabled: bool = True
    # A change is unsuccessful when the error rate rises by more than this many points
    # (absolute) and this fraction (relative), or latency by more than latency_margin.
    error_rate_margin_points: float = Field(default=0.5, ge=0)
    error_rate_margin_ratio: float = Field(default=0.2, ge=0)
    latency_margin_ratio: float = Field(default=0.2, ge=0)


class RetentionSettings(BaseModel):
    """How long rows are kept (see homepot.retention.policy); ``retention_days`` is the default.

    ``tables`` overrides single tables in days, null keeping a table forever, e.g.
    ``HOMEPOT_RETENTION__TABLES='{"device_metrics": 30, "audit_logs": null}'``.
    """

    enabled: bool = True
    tables: dict[str, Annotated[int, Field(ge=1)] | None] = Field(default_factory=dict)
    interval_seconds: float = Field(default=3600, gt=0)
    # Rows deleted per transaction, so that no delete holds locks that block ingestion long.
    batch_size: int = Field(default=5000, ge=1, le=100_000)


class InsightsSettings(BaseModel):
    """The anomaly scanner the server runs over the newest metrics (see homepot.insights)."""

    enabled: bool = True
    interval_seconds: float = Field(default=60, gt=0)
    # Devices whose bins are loaded and scanned together (whole sites per chunk).
    chunk_devices: int = Field(default=250, ge=1, le=10_000)


class AuthSettings(BaseModel):
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    access_token_expire_minutes: int = Field(default=60, ge=1, le=60 * 24 * 30)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HOMEPOT_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
    )

    environment: Literal["development", "production"] = "development"
    database_url: str = "sqlite+aiosqlite:///./homepot.db"
    database_echo: bool = False
    # Addresses (or CIDR networks) of reverse proxies whose X-Forwarded-For is believed.
    trusted_proxies: list[str] = Field(default_factory=list)
    retention_days: int = Field(default=90, ge=1)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    insights: InsightsSettings = Field(default_factory=InsightsSettings)
    # HOMEPOT_EXPORT_KEY: the secret behind the user pseudonyms of analytics exports. There is
    # no default: without it, exports are refused.
    export_key: SecretStr | None = None

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, url: str) -> str:
        """Accept the plain scheme people type and pick the async driver for it."""
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            return "postgresql+asyncpg://" + url.split("://", 1)[1]
        if url.startswith("sqlite://"):
            return "sqlite+aiosqlite://" + url.split("://", 1)[1]
        return url

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(
                    f"trusted_proxies: {value!r} is not an IP address or network"
                ) from exc
        return values

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        if (
            self.environment != "development"
            and self.auth.secret_key.get_secret_value() == DEFAULT_SECRET_KEY
        ):
            raise ValueError(
                "HOMEPOT_AUTH__SECRET_KEY is still the development default; "
                "set a long random secret before running in production"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
