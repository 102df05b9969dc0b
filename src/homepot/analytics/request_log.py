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


_storable = _SHAPE.storable_value
_LIMITS = _SHAPE.plain_text_limits
_REQUEST_ID, _ENDPOINT, _ROUTE = _LIMITS["request_id"], _LIMITS["endpoint"], _LIMITS["route"]
_METHOD, _USER_ID, _IP = _LIMITS["method"], _LIMITS["user_id"], _LIMITS["ip_address"]
_USER_AGENT = _SHAPE.max_lengths["user_agent"]
_SOURCES = frozenset({"device", "simulated"})


def build_request_rows(entries: list[RequestEntry]) -> list[Row]:
    """Complete, redacted ``api_request_logs`` rows for ``entries``, in order.

    An ordinary request (text values of the expected types, within their columns, without
    NUL) takes the short way written out below; any other goes through ``complete()``, the
    reference, so that an odd request is stored exactly as before too.
    """
    rows: list[Row] = []
    fromtimestamp = datetime.fromtimestamp
    for entry, event_id in zip(entries, new_event_ids(len(entries)), strict=True):
        (at, request_id, path, route, method, status, elapsed, user_id, client_ip) = entry[:9]
        (headers, error, error_body, received, sent, source, query_string) = entry[9:]
        if not (
            type(path) is str
            and len(path) <= _ENDPOINT
            and "\x00" not in path
            and type(method) is str
            and len(method) <= _METHOD
            and "\x00" not in method
            and type(request_id) is str
            and len(request_id) <= _REQUEST_ID
            and "\x00" not in request_id
            and (
                route is None
                or (type(route) is str and len(route) <= _ROUTE and "\x00" not in route)
            )
            and (
                user_id is None
                or (type(user_id) is str and len(user_id) <= _USER_ID and "\x00" not in user_id)
            )
            and (
                client_ip is None
                or (type(client_ip) is str and len(client_ip) <= _IP and "\x00" not in client_ip)
            )
            and source in _SOURCES
            and type(at) is float
            and type(elapsed) is float
            and type(status) is int
            and type(received) is int
            and type(sent) is int
        ):
            rows.append(_SHAPE.complete({**request_fields(entry), "event_id": event_id}))
            continue
        user_agent = None
        content_length = 0
        for name, value in headers:
            if name == b"user-agent":
                user_agent = mask_text(value.decode("latin-1")[:512])  # cached: agents repeat
                if len(user_agent) > _USER_AGENT or "\x00" in user_agent:
                    user_agent = _storable("user_agent", value.decode("latin-1")[:512])
            elif name == b"content-length" and value.isdigit():
                content_length = int(value)
        error_message = None
        if error is not None or (status >= 400 and error_body is not None):
            error_message = _error_message(status, error, error_body)
            if error_message is not None:
                error_message = _storable("error_message", error_message)
        rows.append(
            {
                "event_id": event_id,
                "timestamp": fromtimestamp(at, UTC),
                "request_id": request_id,
                "endpoint": path,
                "route": route,
                "method": method,
                "status_code": status,
                "response_time_ms": round(elapsed * 1000, 3),
                "user_id": user_id,
                "ip_address": client_ip,
                "user_agent": user_agent,
                "error_message": error_message,
                "request_size_bytes": received or content_length,
                "response_size_bytes": sent,
                "query_params": (
                    _storable("query_params", _query_params(query_string)) if query_string else None
                ),
                "source": source,
            }
        )
    return rows


register_row_builder(TABLE, build_request_rows)
