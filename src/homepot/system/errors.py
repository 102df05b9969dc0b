"""Application-wide error answers: every failure a client can cause is a 4xx with a message.

Unhandled exceptions are answered (JSON 500 with a request id) and logged by the request-log
middleware; the handlers here turn known failure classes into the status they deserve.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)

from homepot.analytics.error_logger import record_error
from homepot.kit.urls import mask_url_credentials

logger = logging.getLogger(__name__)


def _json_safe(value: Any) -> Any:
    """NaN and Infinity are not JSON: show them as text in the error's ``input``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


async def _validation_failed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        content={"detail": _json_safe(jsonable_encoder(exc.errors()))},
    )


def _first_line(exc: DBAPIError) -> str:
    # Shown to the client and recorded: never with a password from a URL in the driver's text.
    text = mask_url_credentials(str(exc.orig if exc.orig is not None else exc))
    return text.splitlines()[0][:300] if text else type(exc).__name__


async def _database_refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    if isinstance(exc, IntegrityError):
        return JSONResponse(
            status_code=status.HTTP_409_CONFLICT,
            content={"detail": f"the change conflicts with stored data: {_first_line(exc)}"},
        )
    if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
        recorder = request.app.state.recorder
        if recorder is not None:
            record_error(
                category="database",
                severity="critical",
                error_code="DB_UNAVAILABLE",
                error_message=f"database unavailable: {_first_line(exc)}",
                exception=exc,
                endpoint=request.url.path,
                user_id=getattr(request.state, "user_id", None),
                recorder=recorder,
            )
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={"detail": "the database is unavailable; try again shortly"},
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, ProgrammingError):
        raise exc  # a bug (or a schema not migrated): the middleware answers 500 and logs it
    message = _first_line(exc)
    if "0x00" in message or "\\u0000" in message:
        message = "text must not contain NUL (\\u0000) characters"
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        content={"detail": f"a value was refused by the database: {message}"},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_failed)
    app.add_exception_handler(DBAPIError, _database_refused)
