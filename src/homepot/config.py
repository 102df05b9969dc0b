"""The one settings object: environment variables with the HOMEPOT_ prefix and an optional .env.

Nested groups use a double underscore, e.g. ``HOMEPOT_ANALYTICS__BATCH_SIZE=500``.
"""

from __future__ import annotations

import ipaddress
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Every API route lives under this prefix. Routers carry it in their own api_router(prefix=...),
# because FastAPI does not bake an include_router prefix into route.path, and the request log
# reads the route template from route.path.
API_PREFIX = "/api/v1"

# Token secrets that were ever published (in this repository's history or documentation):
# a token signed with one of them could be forged by anyone, so they are refused everywhere.
PUBLISHED_SECRET_KEYS = frozenset({"homepot-development-secret-change-me"})
# HS256 wants a key at least as long as its output; production refuses anything shorter.
MIN_PRODUCTION_SECRET_BYTES = 32

DEFAULT_SKIP_PATHS = (
    "/api/v1/health",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/static",
    "/favicon.ico",
)


class DatabaseSettings(BaseModel):
    """How long the server waits for the database before it calls it an outage.

    Without these limits a database that stops answering (a black-holed network, a stuck
    server) holds a request or the recorder for minutes; with them a request answers 503 and
    the recorder spools within seconds. SQLite ignores the network ones and has its own
    busy timeout. Raise ``command_timeout_seconds`` where single reads are expected to run
    longer (very large analytics tables).
    """

    # Opening a connection, TCP and authentication included (asyncpg ``timeout``).
    connect_timeout_seconds: float = Field(default=5, gt=0, le=300)
    # One statement (asyncpg ``command_timeout``).
    command_timeout_seconds: float = Field(default=10, gt=0, le=3600)
    # SQLite: how long a writer waits for another's lock before it gives up.
    sqlite_busy_timeout_seconds: float = Field(default=30, gt=0, le=3600)
    # Waiting for a free connection of the pool before the request is answered 503.
    pool_timeout_seconds: float = Field(default=5, gt=0, le=300)
    # Connections kept open per server process: as many as requests admitted at once
    # (limits.max_concurrent_requests defaults to it), plus the overflow for the recorder,
    # the MQTT bridge and the background tasks. 30 per process leaves PostgreSQL's default
    # max_connections (100) room for three processes and the tools.
    pool_size: int = Field(default=20, ge=1, le=500)
    pool_max_overflow: int = Field(default=10, ge=0, le=500)
    # A pooled connection idle at least this long is pinged before it is handed out (a
    # dropped one is replaced, and the pool with it, without failing the request); one used
    # more recently is trusted. 0 pings at every checkout: on asyncpg that is three round
    # trips (BEGIN, ping, ROLLBACK), most of the database work of a device report.
    pool_ping_after_idle_seconds: float = Field(default=2, ge=0, le=3600)


class AnalyticsSettings(BaseModel):
    """Switches and tuning for analytics recording."""

    enabled: bool = True
    record_requests: bool = True
    # Paths (prefixes) whose requests are not written to api_request_logs.
    skip_paths: list[str] = Field(default_factory=lambda: list(DEFAULT_SKIP_PATHS))
    # Only requests under these prefixes are API requests; the dashboard's pages are not.
    request_path_prefixes: list[str] = Field(default_factory=lambda: ["/api/"])
    queue_max_events: int = Field(default=100_000, ge=10)
    # Rows per write; on PostgreSQL a batch grows while a backlog waits (recorder._batch_rows).
    batch_size: int = Field(default=500, ge=1, le=10_000)
    flush_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    retry_attempts: int = Field(default=3, ge=0, le=20)
    retry_backoff_seconds: float = Field(default=0.2, ge=0)
    # No new attempt at a batch starts after this long: then it goes to the spool. With the
    # database's timeouts, a hanging database sends events to the spool within ~10 s.
    retry_max_seconds: float = Field(default=3.0, ge=0, le=300)
    spool_dir: Path = Path("var/spool")
    # How often a spooled backlog is retried while the database stays unreachable.
    spool_replay_interval_seconds: float = Field(default=2.0, gt=0)


class FleetSettings(BaseModel):
    """The device protocol, the orchestrator and the watchdog."""

    # e.g. mqtt://127.0.0.1:1883; empty: no broker, jobs are pushed through an in-process
    # channel (the embedded demo) and devices fall back to polling.
    mqtt_url: str = ""
    # The broker's password_file HOMEPOT keeps in step with the devices' keys (a device's
    # entry is written when it registers or gets a new key, removed when its key is revoked),
    # and the broker's pid file, to make it reload (SIGHUP). Empty: the broker's accounts
    # are managed elsewhere. See README "Reliability and security / MQTT".
    mqtt_password_file: Path | None = None
    mqtt_broker_pid_file: Path | None = None
    # CA certificate(s) to check the broker's TLS certificate (mqtts://); empty: the system's.
    mqtt_ca_file: Path | None = None
    # The server's MQTT client id: the broker keeps its session (subscriptions, messages not
    # yet acknowledged) under it while the server restarts. Empty: derived from the database
    # URL and the host name; give each server process on one host its own.
    mqtt_client_id: str = Field(default="", max_length=128)
    # How long the broker keeps that session while the server is away (MQTT 5; with 3.1.1
    # the broker keeps it until the client comes back, or as long as its own limit says).
    mqtt_session_expiry_seconds: int = Field(default=86_400, ge=60, le=4_294_967_295)
    # The protocol the server speaks to the broker: "5" (Mosquitto, EMQX, HiveMQ) or "3.1.1"
    # for brokers that speak nothing newer (NATS's MQTT side refuses an MQTT 5 connect).
    # Devices speak 3.1.1 either way.
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    # Several server processes share the uplink through an MQTT shared subscription
    # ($share/...; Mosquitto also for 3.1.1 clients). False for brokers without them (NATS):
    # then one server process at a time reads the uplink (the holder of its lock, see
    # homepot.kit.singleton) under one persistent session, which the next holder takes over
    # with the messages not yet acknowledged; every process still pushes jobs.
    mqtt_shared_subscription: bool = True
    # Device messages received and not yet stored or spooled (the broker holds the rest); with
    # the JetStream uplink, messages one process has fetched and not yet stored.
    mqtt_max_unacknowledged: int = Field(default=4_000, ge=10, le=65_535)
    # Where the server reads the devices' messages. "mqtt": the bridge's subscription (shared
    # between processes through $share/... on Mosquitto). "jetstream": a NATS cluster's
    # JetStream, through one durable consumer every server process fetches from (see
    # homepot.fleet.jetstream); devices still publish over MQTT, and jobs are still pushed
    # over MQTT (mqtt_url, with mqtt_protocol "3.1.1" on NATS).
    uplink: Literal["mqtt", "jetstream"] = "mqtt"
    # NATS client URLs of the cluster (nats://[user:password@]host:4222), a JSON list or
    # comma-separated; one is enough (the client learns the others from the cluster), more
    # let a process start while a node is down.
    nats_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A NATS cluster's users file (an ``authorization { users = [...] }`` block every node
    # includes) HOMEPOT keeps in step with the devices' keys, as it keeps Mosquitto's
    # password file (homepot.fleet.nats_accounts), and the nodes' pid files, to make each
    # reload (SIGHUP; comma-separated or a JSON list). Empty: NATS's users are managed
    # elsewhere.
    nats_auth_file: Path | None = None
    nats_pid_files: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # The durable consumer the server processes share (all processes on one database use one).
    jetstream_consumer: str = Field(default="homepot-uplink", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # A message fetched and not acknowledged within this long (its process or node died) is
    # delivered again, to any process; a process storing slowly keeps its messages meanwhile.
    jetstream_ack_wait_seconds: float = Field(default=30, ge=1, le=3600)
    # Messages asked for in one fetch.
    jetstream_fetch_batch: int = Field(default=200, ge=1, le=10_000)
    # Messages delivered and not yet acknowledged, all processes together (NATS holds the rest).
    jetstream_max_ack_pending: int = Field(default=20_000, ge=10, le=1_000_000)
    heartbeat_interval_seconds: float = Field(default=30, gt=0)
    telemetry_interval_seconds: float = Field(default=30, gt=0)
    # A device whose heartbeats stop for this long is marked offline by the watchdog.
    offline_after_seconds: float = Field(default=90, gt=0)
    watchdog_interval_seconds: float = Field(default=5, gt=0)
    # A site's bootstrap key registers terminals for this long after it is issued.
    bootstrap_key_ttl_hours: float = Field(default=24, gt=0, le=24 * 365)
    # How long a pushed job waits for the device's acknowledgement before it is left for
    # the device to poll.
    ack_timeout_seconds: float = Field(default=10, gt=0)
    # Pushes in flight at once: a slow or silent device delays none of the others.
    push_concurrency: int = Field(default=16, ge=1, le=1000)
    orchestrator_interval_seconds: float = Field(default=1, gt=0)
    retry_backoff_seconds: float = Field(default=30, ge=0)
    # Configuration impact: metrics windows before and after a change, and the rollback policy.
    impact_window_seconds: float = Field(default=600, gt=0)
    impact_evaluator_interval_seconds: float = Field(default=30, gt=0)
    # A pass judges at most this many changes (newest first), so that a backlog (a database
    # imported or upgraded with history, a server down for days) is worked off over passes
    # instead of holding the process's CPU for minutes; see homepot.device.impact.
    impact_max_changes_per_pass: int = Field(default=200, ge=1, le=100_000)
    # Changes older than this are not judged by the server: each pass marks up to
    # impact_max_changes_per_pass of them "not evaluated: too old" (was_successful stays None).
    impact_max_age_seconds: float = Field(default=7 * 86_400, gt=0)
    rollback_enabled: bool = True
    # A change is unsuccessful when the error rate rises by more than this many points
    # (absolute) and this fraction (relative), or latency by more than latency_margin.
    error_rate_margin_points: float = Field(default=0.5, ge=0)
    error_rate_margin_ratio: float = Field(default=0.2, ge=0)
    latency_margin_ratio: float = Field(default=0.2, ge=0)

    @field_validator("nats_urls", "nats_pid_files", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [url.strip() for url in value.split(",") if url.strip()]
        return value

    @model_validator(mode="after")
    def _jetstream_needs_nats(self) -> FleetSettings:
        if self.uplink == "jetstream" and not self.nats_urls:
            raise ValueError(
                "HOMEPOT_FLEET__UPLINK=jetstream reads the devices' messages from NATS: set"
                " HOMEPOT_FLEET__NATS_URLS (e.g. nats://node-a:4222,nats://node-b:4222)"
            )
        return self


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
    # PostgreSQL: how often the server creates the coming time partitions (and moves rows
    # out of the default partitions); once at start too (homepot.retention.partitions).
    partition_interval_seconds: float = Field(default=3600, gt=0)


class RollupSettings(BaseModel):
    """The chart rollups (homepot.analytics.rollups): one pass every ``interval_seconds``."""

    enabled: bool = True
    interval_seconds: float = Field(default=60, gt=0)


class LimitsSettings(BaseModel):
    """Request body limits in bytes: a body over its route's limit is refused with 413.

    Telemetry batches (``/api/v1/agent/telemetry`` and ``/api/v1/agent/report``, up to 500
    samples) get their own limit;
    the dashboard's ingestion endpoints (``/api/v1/analytics/user-activities`` and
    ``/api/v1/analytics/errors``) a smaller one; every other body ``max_body_bytes``.
    """

    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_telemetry_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_ingest_body_bytes: int = Field(default=256 * 1024, ge=1024)
    # Requests handled at once per server process; the others queue in arrival order (see
    # homepot.system.admission). None: the database pool's size (4 on SQLite, one writer).
    max_concurrent_requests: int | None = Field(default=None, ge=1, le=10_000)
    # A request that waited this long for its turn is answered 503 with Retry-After.
    admission_timeout_seconds: float = Field(default=30, gt=0, le=600)


class InsightsSettings(BaseModel):
    """The anomaly scanner the server runs over the newest metrics (see homepot.insights)."""

    enabled: bool = True
    interval_seconds: float = Field(default=60, gt=0)
    # Devices whose bins are loaded and scanned together (whole sites per chunk).
    chunk_devices: int = Field(default=250, ge=1, le=10_000)
    # How far back a server's pass may reach: its first pass scans this window, and after
    # an outage it does not catch up further (older ranges: `homepot insights scan --since`).
    server_window_seconds: float = Field(default=6 * 3600, ge=900, le=7 * 86_400)
    # The failure-risk model written by `homepot insights train`; without one, risk comes
    # from the active anomaly episodes alone (device_risk.model = "anomalies").
    model_path: Path | None = None
    risk_interval_seconds: float = Field(default=300, gt=0)


class AuthSettings(BaseModel):
    # None: the server generates a random secret once and keeps it in the data directory
    # (see homepot.auth.secret), so no installation ever signs with a published value.
    secret_key: SecretStr | None = None
    algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    access_token_expire_minutes: int = Field(default=60, ge=1, le=60 * 24 * 30)
    # Threads that hash and verify passwords (argon2 takes ~50 ms of CPU each): logins
    # queue for them instead of stalling the event loop that serves every other request.
    password_hash_threads: int = Field(default=2, ge=1, le=64)


class RateLimitSettings(BaseModel):
    """In-process limits (per server process, see homepot.kit.ratelimit); 429 beyond them."""

    enabled: bool = True
    # Failed logins counted per client address and per account within the window.
    login_window_seconds: float = Field(default=300, gt=0)
    login_failures_per_address: int = Field(default=20, ge=1)
    login_failures_per_account: int = Field(default=10, ge=1)
    # Failed device registrations per client address within a minute.
    registration_failures_per_minute: int = Field(default=20, ge=1)
    # Dashboard activity/error batches per user, and device error reports per device.
    ingest_requests_per_minute: int = Field(default=300, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HOMEPOT_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
    )

    environment: Literal["development", "production"] = "development"
    # Where the server keeps what it generates for itself (the token secret); made on start.
    data_dir: Path = Path("var")
    database_url: str = "sqlite+aiosqlite:///./homepot.db"
    # A streaming replica of that database (PostgreSQL): the analytics reads (the stream
    # endpoints, the overview, the data-quality report, exports) go there, everything else
    # (writes, logins, the audit rows of those reads) to database_url. Empty: one database.
    database_read_url: str = ""
    database_echo: bool = False
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    # Addresses (or CIDR networks) of reverse proxies whose X-Forwarded-For is believed.
    trusted_proxies: list[str] = Field(default_factory=list)
    retention_days: int = Field(default=90, ge=1)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    rollups: RollupSettings = Field(default_factory=RollupSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    # Origins (e.g. https://ops.example.com) whose pages may call the API from a browser.
    # Empty: no CORS headers at all, so only the dashboard's own pages can.
    cors_allowed_origins: list[str] = Field(default_factory=list)
    insights: InsightsSettings = Field(default_factory=InsightsSettings)
    # HOMEPOT_EXPORT_KEY: the secret behind the user pseudonyms of analytics exports. There is
    # no default: without it, exports are refused.
    export_key: SecretStr | None = None

    @field_validator("database_url", "database_read_url")
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
    def _refuse_weak_secret(self) -> Settings:
        if self.auth.secret_key is None:
            return self
        secret = self.auth.secret_key.get_secret_value()
        if secret in PUBLISHED_SECRET_KEYS:
            raise ValueError(
                "HOMEPOT_AUTH__SECRET_KEY is a published value anyone can sign tokens with; "
                "unset it (the server then generates its own) or set a long random secret"
            )
        if self.environment == "production" and len(secret.encode()) < MIN_PRODUCTION_SECRET_BYTES:
            raise ValueError(
                f"HOMEPOT_AUTH__SECRET_KEY is {len(secret.encode())} bytes; production needs"
                f" at least {MIN_PRODUCTION_SECRET_BYTES} (e.g. python -c 'import secrets;"
                " print(secrets.token_urlsafe(48))'), or unset it to have one generated"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
