"""Rows of ``api_request_logs``, built by the recorder's writer rather than on the request.

The request middleware (:mod:`homepot.analytics.middleware`) hands each request over as a
:data:`RequestEntry`: the raw values it saw, in a plain tuple, queued with
:meth:`~homepot.analytics.recorder.Recorder.record_unbuilt`. Everything that costs something
(reading the User-Agent and Content-Length headers, the error detail of an error body,
redacting the query string and free text, the event id, the timestamp as a datetime) is
done here, when the writer takes a batch: a recorded request costs its request an append,
and the writer builds hundreds of rows in one go (one ``os.urandom`` for all their event
ids).

The row is exactly the one :meth:`Recorder.record` made from :func:`request_fields`: the
same columns, values, redaction and cuts (``tests/analytics/test_request_log.py`` holds the
builder to that, value for value).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from homepot.analytics.models import APIRequestLog
from homepot.analytics.recorder import _SHAPES, Row, register_row_builder
from homepot.db import new_event_ids
from homepot.kit.redaction import mask_text, redact_pairs

TABLE = APIRequestLog.__tablename__

# What the middleware queues for one request, in this order:
#   at            float, time.time() when the request was answered (the row's timestamp)
#   request_id    str, the X-Request-Id given to the client
#   path          str, scope["path"]
#   route         str | None, the route template ("/api/v1/devices/{device_id}")
#   method        str
#   status        int, the status sent (500 when the app failed before answering)
#   elapsed       float, seconds from the request's start to its end
#   user_id       str | None, the authenticated user (request.state.user_id)
#   client_ip     str | None
#   headers       the request's headers as ASGI gives them: [(name, value), ...] in bytes
#   error         str | None, "<ExceptionType>: <message>" when the app raised
#   error_body    bytes | None, the start of an error response's body (status >= 400)
#   received      int, body bytes the app read
#   sent          int, body bytes sent
#   source        "device" or "simulated"
#   query_string  bytes
RequestEntry = tuple[Any, ...]

_SHAPE = _SHAPES[TABLE]


def describe_error_detail(body: bytes) -> str | None:
    """A one-line message from a JSON error body's ``detail`` (FastAPI's convention)."""
    try:
        payload = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:1000] or None
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                location = ".".join(str(p) for p in item.get("loc", ()))
                parts.append(f"{location}: {item.get('msg', '')}".strip(": "))
        return "; ".join(parts) or None
    return None if detail is None else json.dumps(detail)[:1000]


def _headers(headers: Sequence[tuple[bytes, bytes]]) -> tuple[str | None, int]:
    """The User-Agent (cut to its column) and the Content-Length of a request."""
    user_agent = None
    content_length = 0
    for name, value in headers:
        if name == b"user-agent":
            user_agent = value.decode("latin-1")[:512]
        elif name == b"content-length" and value.isdigit():
            content_length = int(value)
    return user_agent, content_length


def _error_message(status: int, error: str | None, error_body: bytes | None) -> str | None:
    if error is not None:
        return error
    if status >= 400 and error_body is not None:
        return describe_error_detail(error_body)
    return None


def _query_params(query_string: bytes) -> dict[str, Any] | None:
    if not query_string:
        return None
    return redact_pairs(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))


def request_fields(entry: RequestEntry) -> Row:
    """The fields of one request's row before completion: what ``Recorder.record`` is given
    for it (the reference :func:`build_request_rows` is held to)."""
    (at, request_id, path, route, method, status, elapsed, user_id, client_ip, headers) = entry[:10]
    (error, error_body, received, sent, source, query_string) = entry[10:]
    user_agent, content_length = _headers(headers)
    return {
        "timestamp": datetime.fromtimestamp(at, UTC),
        "request_id": request_id,
        "endpoint": path[:2048],
        "route": route,
        "method": method,
        "status_code": status,
        "response_time_ms": round(elapsed * 1000, 3),
        "user_id": user_id,
        "ip_address": client_ip,
        "user_agent": user_agent,
        "error_message": _error_message(status, error, error_body),
        # A body the handler never read still crossed the wire: fall back to its length.
        "request_size_bytes": received or content_length,
        "response_size_bytes": sent,
        "source": source,
        "query_params": _query_params(query_string),
    }


_LIMITS = _SHAPE.plain_text_limits
_storable = _SHAPE.storable_value


def _plain(name: str, value: Any) -> Any:
    """An identifier column's value as ``complete()`` stores it (nearly always as it is)."""
    if value is None or (
        type(value) is str and len(value) <= _LIMITS[name] and "\x00" not in value
    ):
        return value
    return _storable(name, value)


def _user_agent(value: str | None) -> str | None:
    """``_free("user_agent", value)``, inline for the common agent (short, NUL-free)."""
    if value is None:
        return None
    masked = mask_text(value)  # cached for short texts: agents repeat
    if len(masked) > _USER_AGENT_LIMIT or "\x00" in masked:
        return _storable("user_agent", value)
    return masked


_USER_AGENT_LIMIT = _SHAPE.max_lengths["user_agent"]


def _free(name: str, value: Any) -> Any:
    """A free-text or JSON column's value: masked, redacted, NUL-free and cut."""
    return None if value is None else _storable(name, value)


def build_request_rows(entries: list[RequestEntry]) -> list[Row]:
    """Complete, redacted ``api_request_logs`` rows for ``entries``, in order."""
    rows: list[Row] = []
    fromtimestamp = datetime.fromtimestamp
    for entry, event_id in zip(entries, new_event_ids(len(entries)), strict=True):
        (at, request_id, path, route, method, status, elapsed, user_id, client_ip) = entry[:9]
        (headers, error, error_body, received, sent, source, query_string) = entry[9:]
        user_agent, content_length = _headers(headers)
        rows.append(
            {
                "event_id": event_id,
                "timestamp": fromtimestamp(at, UTC),
                "request_id": _plain("request_id", request_id),
                "endpoint": _plain("endpoint", path[:2048]),
                "route": _plain("route", route),
                "method": _plain("method", method),
                "status_code": status,
                "response_time_ms": round(elapsed * 1000, 3),
                "user_id": _plain("user_id", user_id),
                "ip_address": _plain("ip_address", client_ip),
                "user_agent": _user_agent(user_agent),
                "error_message": _free("error_message", _error_message(status, error, error_body)),
                "request_size_bytes": received or content_length,
                "response_size_bytes": sent,
                "query_params": _free("query_params", _query_params(query_string)),
                "source": _plain("source", source),
            }
        )
    return rows


register_row_builder(TABLE, build_request_rows)
