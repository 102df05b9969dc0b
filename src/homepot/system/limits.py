"""Request bodies are checked at the door, before any route reads them.

- A body over its route's limit (:class:`homepot.config.LimitsSettings`) is answered 413
  without being read further: by its Content-Length when it declares one, else as soon as the
  bytes received pass the limit.
- A body holding a NUL character (raw or as ``\\u0000``), which PostgreSQL cannot store in
  text or JSON, is answered 422 on every backend alike.
- A JSON body holding a lone UTF-16 surrogate (``"\\ud800"``, or its raw UTF-8 bytes), which
  no database can store and no JSON answer can echo, is answered 422 naming where it is.

The body is read once here and handed on to the application unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from homepot.config import API_PREFIX, LimitsSettings
from homepot.kit.jsonlimits import has_lone_surrogate, replace_lone_surrogates

TELEMETRY_PATHS = frozenset({f"{API_PREFIX}/agent/telemetry", f"{API_PREFIX}/agent/report"})
INGEST_PATHS = frozenset(
    {f"{API_PREFIX}/analytics/user-activities", f"{API_PREFIX}/analytics/errors"}
)
# Cheap signs that a JSON body may hold a surrogate: an escape of one (\ud800-\udfff, any
# case) or the lead byte of its raw UTF-8 form. Only bodies showing one are parsed here.
_SURROGATE_SIGNS = (b"\\ud", b"\\uD", b"\xed")


def body_limit(limits: LimitsSettings, path: str) -> int:
    """The body limit of the route at ``path``, in bytes."""
    if path in TELEMETRY_PATHS:
        return limits.max_telemetry_body_bytes
    if path in INGEST_PATHS:
        return limits.max_ingest_body_bytes
    return limits.max_body_bytes


def lone_surrogate_at(value: Any) -> list[str | int] | None:
    """The path to the first string or key in ``value`` holding a lone surrogate, or None."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if has_lone_surrogate(node):
                return path
        elif isinstance(node, dict):
            for key, item in node.items():
                if has_lone_surrogate(key):
                    return path
                stack.append((item, [*path, key]))
        elif isinstance(node, list):
            stack.extend((item, [*path, index]) for index, item in enumerate(node))
    return None


def _lone_surrogate_in_body(body: bytes) -> list[str | int] | None:
    if not any(sign in body for sign in _SURROGATE_SIGNS):
        return None
    try:
        # Like the application's own parsing: UTF-8 with surrogates let through.
        value = json.loads(body.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError):
        return None  # not JSON: the route's own parsing refuses it
    return lone_surrogate_at(value)


def _is_json(headers: Headers) -> bool:
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return content_type == "application/json" or content_type.endswith("+json")


class RequestBodyGuard:
    def __init__(self, app: ASGIApp, limits: LimitsSettings) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(self.limits, scope["path"])
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(int(declared), limit)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away before sending its body: nothing left to answer.
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(None, limit)(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if b"\x00" in body or b"\\u0000" in body:
            await _nul_in_body()(scope, receive, send)
            return
        if body and _is_json(headers) and (where := _lone_surrogate_in_body(body)) is not None:
            await _lone_surrogate(where)(scope, receive, send)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_large(size: int | None, limit: int) -> JSONResponse:
    what = f"{size} bytes" if size is not None else f"over {limit} bytes"
    return JSONResponse(
        status_code=413,
        content={
            "detail": f"the request body is {what}; at most {limit} are accepted by this "
            "endpoint: send less data per request (e.g. smaller batches)"
        },
    )


def _nul_in_body() -> JSONResponse:
    # PostgreSQL stores no NUL in text or JSON: refused on every backend alike.
    return JSONResponse(
        status_code=422,
        content={
            "detail": [
                {
                    "type": "nul_character",
                    "loc": ["body"],
                    "msg": "the request body must not contain NUL (\\u0000) characters",
                    "input": None,
                }
            ]
        },
    )


def _lone_surrogate(where: list[str | int]) -> JSONResponse:
    # The location's keys are shown with their surrogates replaced, so that the answer
    # itself can be encoded.
    loc = [replace_lone_surrogates(part) if isinstance(part, str) else part for part in where]
    place = ".".join(str(part) for part in loc) or "the body"
    return JSONResponse(
        status_code=422,
        content={
            "detail": [
                {
                    "type": "string_unicode",
                    "loc": ["body", *loc],
                    "msg": f"{place} holds a lone UTF-16 surrogate (such as \\ud800), which is "
                    "not valid Unicode text",
                    "input": None,
                }
            ]
        },
    )
