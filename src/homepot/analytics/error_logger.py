"""Categorised error logging into ``error_logs``, through the recorder (never blocking)."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics.models import DEVICE, ErrorLog, Source
from homepot.analytics.recorder import Recorder, get_recorder
from homepot.kit.urls import mask_url_credentials

CATEGORIES: Final = ("api", "database", "external_service", "validation")
SEVERITIES: Final = ("critical", "error", "warning", "info")


def _validated(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def record_error(
    *,
    category: str,
    severity: str,
    error_code: str | None,
    error_message: str,
    exception: BaseException | None = None,
    endpoint: str | None = None,
    user_id: str | None = None,
    device_id: str | None = None,
    context: dict[str, Any] | None = None,
    recorder: Recorder | None = None,
    timestamp: datetime | None = None,
    stack_trace: str | None = None,
    source: Source = DEVICE,
    event_id: str | None = None,
    after_commit_of: AsyncSession | None = None,
) -> str | None:
    """Synchronous form of :func:`log_error` for code that cannot await (middleware).

    ``timestamp`` is when the error happened (None = now), e.g. a device's own clock;
    ``stack_trace`` is a trace reported as text, used when there is no ``exception``;
    ``source`` is ``simulated`` for an error of (or caused by) the simulation;
    ``event_id`` makes recording idempotent: one derived from the reporter's own message id,
    so that a resend is stored once (the recorder skips an id it has);
    ``after_commit_of``: queue the row only when that session commits (nothing if it rolls
    back), for an error stored together with a change of that transaction.
    """
    _validated("category", category, CATEGORIES)
    _validated("severity", severity, SEVERITIES)
    context = dict(context or {})
    if exception is not None:
        stack_trace = "".join(
            traceback.format_exception(type(exception), exception, exception.__traceback__)
        )
        context.setdefault("exception_type", type(exception).__name__)
    recorder = recorder or get_recorder()
    fields: dict[str, Any] = dict(
        category=category,
        severity=severity,
        error_code=error_code,
        # A database or broker URL in an exception's text must not carry its password here.
        error_message=mask_url_credentials(error_message),
        stack_trace=mask_url_credentials(stack_trace) if stack_trace else stack_trace,
        endpoint=endpoint,
        user_id=user_id,
        device_id=device_id,
        context=context or None,
        timestamp=timestamp,
        source=source,
        event_id=event_id,
    )
    if after_commit_of is not None:
        return recorder.record_after_commit(after_commit_of, ErrorLog, **fields)
    return recorder.record(ErrorLog, **fields)


async def log_error(
    category: str,
    severity: str,
    error_code: str | None,
    error_message: str,
    exception: BaseException | None = None,
    endpoint: str | None = None,
    user_id: str | None = None,
    device_id: str | None = None,
    context: dict[str, Any] | None = None,
) -> str | None:
    """Log a categorised error (the spec's integration point); returns the event id.

    ``category`` is one of api, database, external_service, validation and ``severity`` one
    of critical, error, warning, info; anything else is a ValueError. The stack trace is
    taken from ``exception``. The row is queued, not written: this never waits on the
    database, so it is safe inside an exception handler whose database just failed.
    """
    return record_error(
        category=category,
        severity=severity,
        error_code=error_code,
        error_message=error_message,
        exception=exception,
        endpoint=endpoint,
        user_id=user_id,
        device_id=device_id,
        context=context,
    )


def failed_pass_logger(
    recorder: Recorder | None, error_code: str, what: str
) -> Callable[[Exception], None]:
    """The ``on_failure`` of a background loop: a failed pass of ``what`` as a database error.

    :func:`homepot.kit.periodic.run_periodically` calls it once per streak of failures.
    """

    def log_failure(exc: Exception) -> None:
        record_error(
            category="database",
            severity="error",
            error_code=error_code,
            error_message=f"{what} failed: {type(exc).__name__}: {exc}"[:1000],
            exception=exc,
            recorder=recorder,
        )

    return log_failure
