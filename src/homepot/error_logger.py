"""The spec's documented import path: ``from homepot.error_logger import log_error``."""

from homepot.analytics.error_logger import CATEGORIES, SEVERITIES, log_error, record_error

__all__ = ["CATEGORIES", "SEVERITIES", "log_error", "record_error"]
