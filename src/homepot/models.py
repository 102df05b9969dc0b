"""Every ORM model, imported once so that the metadata (Alembic, the CLI) sees all 23 tables.

Besides them, the metadata holds ``mqtt_sessions`` (homepot.fleet.models.MqttSession): the
bridge's bookkeeping of its broker sessions, not data an operator inspects or exports.
"""

from homepot.analytics.models import (
    EVENT_MODELS,
    ROLLUP_MODELS,
    AnalyticsEvent,
    APIRequestLog,
    ConfigurationHistory,
    DeviceMetrics,
    DeviceStateHistory,
    ErrorLog,
    JobOutcome,
    SiteOperatingSchedule,
    UserActivity,
)
from homepot.audit.models import AuditLog
from homepot.auth.models import User
from homepot.db import Base
from homepot.device.models import Device, HealthCheck, MessageReceipt
from homepot.fleet.models import MqttSession
from homepot.insights.models import Anomaly, DeviceRisk
from homepot.job.models import Job, JobExecution
from homepot.site.models import Site

CORE_MODELS: tuple[type[Base], ...] = (Site, Device, User, Job, HealthCheck, AuditLog)
# Operational tables beyond the spec's 14: the orchestrator's per-device executions, and
# the receipts that keep a redelivered device message from being stored twice.
OPERATIONAL_MODELS: tuple[type[Base], ...] = (JobExecution, MessageReceipt)
ANALYTICS_MODELS: tuple[type[Base], ...] = (*EVENT_MODELS, SiteOperatingSchedule)
# Derived from the event tables for charts (homepot.analytics.rollups).
DERIVED_MODELS: tuple[type[Base], ...] = ROLLUP_MODELS
# What the insights package derives from the data: anomaly episodes, failure risk.
INSIGHTS_MODELS: tuple[type[Base], ...] = (Anomaly, DeviceRisk)
ALL_MODELS: tuple[type[Base], ...] = (
    CORE_MODELS + ANALYTICS_MODELS + OPERATIONAL_MODELS + INSIGHTS_MODELS + DERIVED_MODELS
)
MODELS_BY_TABLE: dict[str, type[Base]] = {m.__tablename__: m for m in ALL_MODELS}
metadata = Base.metadata

__all__ = [
    "ALL_MODELS",
    "ANALYTICS_MODELS",
    "CORE_MODELS",
    "DERIVED_MODELS",
    "INSIGHTS_MODELS",
    "MODELS_BY_TABLE",
    "OPERATIONAL_MODELS",
    "APIRequestLog",
    "AnalyticsEvent",
    "Anomaly",
    "AuditLog",
    "ConfigurationHistory",
    "Device",
    "DeviceMetrics",
    "DeviceStateHistory",
    "ErrorLog",
    "HealthCheck",
    "Job",
    "JobExecution",
    "JobOutcome",
    "MessageReceipt",
    "MqttSession",
    "Site",
    "SiteOperatingSchedule",
    "User",
    "UserActivity",
    "metadata",
]
