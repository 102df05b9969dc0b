"""The spec's documented import path for the analytics models (a thin re-export)."""

from homepot.analytics.models import (
    APIRequestLog,
    ConfigurationHistory,
    DeviceMetrics,
    DeviceStateHistory,
    ErrorLog,
    JobOutcome,
    SiteOperatingSchedule,
    UserActivity,
)

__all__ = [
    "APIRequestLog",
    "ConfigurationHistory",
    "DeviceMetrics",
    "DeviceStateHistory",
    "ErrorLog",
    "JobOutcome",
    "SiteOperatingSchedule",
    "UserActivity",
]
