"""Request bodies are read by pydantic-core with the standard library's answers kept."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from httpx import AsyncClient

from homepot.kit.routing import JsonRoute, parse_json_body
from tests.helpers import all_routes, create_registered_device

# Documents where a fast parser could easily differ from json.loads.
SAME_AS_JSON = [
    b'{"a": 1, "a": 2}',  # a repeated key keeps its last value
    b"18446744073709551616",  # beyond 64 bits: an exact int, not a float
    b"-9223372036854775809",
    b"123456789012345678901234567890",
    b"1e400",  # beyond a double: inf, as json gives it
    b"-1e400",
    b"1e-400",
    b"[NaN, Infinity, -Infinity]",
    b"-0.0",
    b"0.1",
    b"1.0000000000000000001",
    b'"\\ud800"',  # a lone surrogate escape: json takes it, the schemas refuse it
    b'"\\ud83d\\ude00"',
    "\ufeff{}".encode(),  # a UTF-8 byte order mark
    '{"k": "x"}'.encode("utf-16"),
    '{"é": "€ \\u00e9"}'.encode(),
    b'  {"nested": [1, [2, {"x": null}], true, false]}  ',
]


@pytest.mark.parametrize("document", SAME_AS_JSON)
def test_a_body_reads_as_json_loads_reads_it(document: bytes) -> None:
    expected, got = json.loads(document), parse_json_body(document)
    # repr tells 1 from 1.0 and -0.0 from 0.0; NaN is not equal to itself.
    assert repr(got) == repr(expected)
    assert _types(got) == _types(expected)


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_types(item) for item in value]
    return "nan" if isinstance(value, float) and math.isnan(value) else type(value).__name__


@pytest.mark.parametrize(
    "document", [b"", b"{", b'{"a": 1}x', b"[1,]", b"{'a': 1}", b"\xff\xfe\x00", b"nul"]
)
def test_a_body_that_is_not_json_fails_as_json_loads_fails(document: bytes) -> None:
    try:
        json.loads(document)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        expected: Exception = exc
    else:
        pytest.fail(f"json.loads took {document!r}")
    with pytest.raises(type(expected)) as raised:
        parse_json_body(document)
    assert str(raised.value) == str(expected)


def test_every_api_route_reads_its_body_with_the_fast_parser(app: FastAPI) -> None:
    routes = [route for route in all_routes(app) if isinstance(route, APIRoute)]
    assert len(routes) > 50
    slow = sorted(route.path for route in routes if not isinstance(route, JsonRoute))
    assert not slow, f"routes made with APIRouter instead of homepot.kit.routing.api_router: {slow}"


async def test_invalid_json_is_a_422_that_names_the_position(
    app: FastAPI, client: AsyncClient
) -> None:
    _, headers = await create_registered_device(app, client)
    response = await client.post(
        "/api/v1/agent/telemetry",
        content=b'{"samples": [}',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["type"] == "json_invalid"
    assert error["loc"] == ["body", 13]
    assert error["ctx"]["error"] == "Expecting value"
