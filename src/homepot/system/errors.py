"""Application-wide error answers: every failure a client can cause is a 4xx with a message.

Unhandled exceptions are answered (JSON 500 with a request id) and logged by the request-log
middleware; the handlers here turn known failure classes into the status they deserve.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from homepot.analytics.error_logger import record_error
from homepot.analytics.models import DEVICE
from homepot.db import Failure, classify_failure, sqlstate_of
from homepot.kit.jsonlimits import clip_stored_json, replace_lone_surrogates
from homepot.kit.redaction import TOO_DEEP
from homepot.kit.urls import mask_url_credentials

logger = logging.getLogger(__name__)


# How deep an echoed ``input`` is shown; deeper parts become TOO_DEEP.
_MAX_ECHO_DEPTH = 8


def _json_safe(value: Any, depth: int = 0) -> Any:
    """An error's ``input`` as something JSON can carry, whatever the client sent.

    NaN and Infinity become text, lone surrogates (which UTF-8 cannot encode) become U+FFFD,
    and structures are cut at a small depth: an echo must never make the answer fail.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return replace_lone_surrogates(value)
    if isinstance(value, dict | list) and depth > _MAX_ECHO_DEPTH + 2:
        return TOO_DEEP
    if isinstance(value, dict):
        return {_json_safe(str(key)): _json_safe(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item, depth + 1) for item in value]
    return value


def _safe_error(error: Mapping[str, Any]) -> Any:
    error = dict(error)
    if "input" in error:
        error["input"] = clip_stored_json(error["input"], _MAX_ECHO_DEPTH)
    return _json_safe(jsonable_encoder(error))


def validation_detail(
    message: str, loc: Sequence[str | int] = (), error_type: str = "value_error"
) -> list[dict[str, Any]]:
    """A 422 ``detail`` in the documented shape (a list of errors) for a single problem."""
    return [{"type": error_type, "loc": list(loc), "msg": message, "input": None}]


async def _validation_failed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        content={"detail": [_safe_error(error) for error in exc.errors()]},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answer, except that a 422 with a text detail gets the documented list shape."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_422_UNPROCESSABLE_CONTENT and isinstance(exc.detail, str):
        return JSONResponse(
            status_code=exc.status_code,
            content={"detail": validation_detail(_json_safe(exc.detail))},
            headers=exc.headers,
        )
    return await http_exception_handler(request, exc)


def _first_line(exc: BaseException) -> str:
    # Shown to the client and recorded: never with a password from a URL in the driver's text.
    orig = getattr(exc, "orig", None)
    text = mask_url_credentials(str(orig if orig is not None else exc))
    return text.splitlines()[0][:300] if text else type(exc).__name__


# Seconds a client is asked to wait after a 503 for a database outage.
OUTAGE_RETRY_AFTER_SECONDS = 5
# An outage is written to error_logs once per this many seconds, not once per request.
_OUTAGE_LOG_INTERVAL_SECONDS = 10.0


def outage_reason(exc: BaseException) -> str:
    """What a person is told about an outage: its kind, never the server's address."""
    code = sqlstate_of(exc) or ""
    if isinstance(exc, PoolTimeoutError):
        return "no database connection became free in time (the server is overloaded)"
    if code.startswith("57P"):
        return "the database is starting up or shutting down"
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, TimeoutError) or code == "57014":
        return "the database did not answer in time"
    return "the database cannot be reached"


async def _database_failed(request: Request, exc: Exception) -> JSONResponse:
    failure = classify_failure(exc)
    if failure is Failure.OUTAGE:
        reason = outage_reason(exc)
        _log_outage(request, exc, reason)
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={"detail": f"{reason}; nothing was stored, send the same request again"},
            headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)},
        )
    if failure is not Failure.DATA or not isinstance(exc, DBAPIError):
        raise exc  # a bug (or a schema not migrated): the middleware answers 500 and logs it
    if isinstance(exc, IntegrityError):
        return JSONResponse(
            status_code=status.HTTP_409_CONFLICT,
            content={"detail": f"the change conflicts with stored data: {_first_line(exc)}"},
        )
    message = _first_line(exc)
    if "0x00" in message or "\\u0000" in message:
        message = "text must not contain NUL (\\u0000) characters"
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        content={
            "detail": validation_detail(
                f"a value was refused by the database: {message}", ("body",), "database_refused"
            )
        },
    )


def _log_outage(request: Request, exc: Exception, reason: str) -> None:
    """One error_logs row per outage interval (a 40 s outage is not thousands of rows)."""
    recorder = request.app.state.recorder
    now = time.monotonic()
    last = getattr(request.app.state, "database_outage_logged_at", None)
    if recorder is None or (last is not None and now - last < _OUTAGE_LOG_INTERVAL_SECONDS):
        return
    request.app.state.database_outage_logged_at = now
    record_error(
        category="database",
        severity="critical",
        error_code="DB_UNAVAILABLE",
        error_message=f"database unavailable: {reason}: {_first_line(exc)}",
        exception=exc,
        endpoint=request.url.path,
        user_id=getattr(request.state, "user_id", None),
        recorder=recorder,
        source=getattr(request.state, "source", DEVICE),
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_failed)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_failed)
    # Raised unwrapped by the driver (a refused connection, a timed-out ping); answered 503
    # only when they came out of the database layer, re-raised (500) otherwise.
    app.add_exception_handler(PoolTimeoutError, _database_failed)
    app.add_exception_handler(OSError, _database_failed)
    app.add_exception_handler(TimeoutError, _database_failed)
