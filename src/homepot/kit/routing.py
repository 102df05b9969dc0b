"""The project's API routers: FastAPI's, with request bodies parsed by pydantic-core.

FastAPI reads a JSON body with Starlette's ``Request.json``, i.e. the standard library's
``json.loads``: for a terminal's 500-sample telemetry batch that was ~8 µs of the server's
CPU per sample, the largest single part of taking it (benchmarks/profile_ingest.py).
``pydantic_core.from_json`` (the parser pydantic itself uses, a dependency already) reads the
same documents into the same Python values in well under half that: integers of any size
stay exact integers, ``NaN``, ``Infinity`` and numbers beyond a double's range come out as
``json`` gives them, and a repeated key keeps its last value.

What it refuses that ``json`` takes (a lone UTF-16 surrogate escape such as ``"\\ud800"``, a
UTF-8 byte order mark, UTF-16 or UTF-32 text) and everything that is not JSON at all is read
again by ``json.loads``, so every body gets exactly the answer it got before: the same
values, or the same 422 ``json_invalid`` naming the position, or the same clear refusal of a
lone surrogate by the schema that holds it (homepot.kit.jsonlimits).

Every router is made by :func:`api_router` (tests/kit/test_routing.py checks each route of the
app), so no endpoint is left on the slower parser.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic_core import from_json
from starlette.requests import Request
from starlette.responses import Response


def parse_json_body(body: bytes) -> Any:
    """``json.loads(body)``, the same values and the same errors, faster for valid UTF-8
    JSON (see the module's docstring)."""
    try:
        # Keys only in pydantic-core's process-wide string cache (the repeated field names
        # are what it saves on); values, which may be passwords or keys, are never kept.
        return from_json(body, cache_strings="keys")
    except ValueError:
        return json.loads(body)  # the standard library's answer, value or error


class JsonRequest(Request):
    """A request whose ``json()`` is :func:`parse_json_body`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json_body(await self.body())
        return self._json


class JsonRoute(APIRoute):
    """An API route whose endpoint sees a :class:`JsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def json_route_handler(request: Request) -> Response:
            return await handler(JsonRequest(request.scope, request.receive, request._send))

        return json_route_handler


def api_router(**options: Any) -> APIRouter:
    """``APIRouter(**options)`` whose routes read JSON bodies with :func:`parse_json_body`."""
    return APIRouter(route_class=JsonRoute, **options)
