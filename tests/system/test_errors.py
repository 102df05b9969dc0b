"""Input a client can send never produces a 500, on either database."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from httpx import ASGITransport, AsyncClient

from homepot.auth.models import Role
from homepot.site.models import Site
from homepot.system.errors import install_error_handlers
from tests.helpers import auth_headers, create_site, db_rows


async def test_non_finite_numbers_in_json_are_a_422(app: FastAPI, client: AsyncClient) -> None:
    headers = await auth_headers(app, client, Role.operator)
    for literal in ("NaN", "Infinity", "-Infinity"):
        response = await client.post(
            "/api/v1/sites",
            content=f'{{"site_id": "site-nan", "name": "x", "config": {{"k": {literal}}}}}',
            headers={**headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text
    assert await db_rows(app, Site) == []


async def test_nul_characters_are_a_4xx_and_store_nothing(
    app: FastAPI, client: AsyncClient
) -> None:
    headers = await auth_headers(app, client, Role.operator)
    site_id = await create_site(app)
    for url in ("/api/v1/sites/a%00b", "/api/v1/sites?q=a%00b"):
        response = await client.get(url, headers=headers)
        assert response.status_code == 422, response.text
        assert "NUL" in response.json()["detail"][0]["msg"]
    response = await client.patch(
        f"/api/v1/sites/{site_id}", json={"name": "bad\u0000name"}, headers=headers
    )
    assert response.status_code == 422, response.text
    assert "NUL" in response.json()["detail"][0]["msg"]
    (site,) = await db_rows(app, Site)
    assert "\x00" not in site.name


def _app_raising(exc: Exception) -> FastAPI:
    """A bare app with HOMEPOT's error handlers whose one route raises ``exc``."""
    application = FastAPI()
    install_error_handlers(application)

    @application.get("/boom")
    async def boom() -> None:
        raise exc

    return application


async def _get(application: FastAPI) -> Any:
    transport = ASGITransport(app=application)
    async with AsyncClient(transport=transport, base_url="http://testserver") as http:
        return await http.get("/boom")


async def test_a_422_never_echoes_what_json_cannot_carry() -> None:
    deep: Any = "bottom"
    for _ in range(900):
        deep = [deep]
    error = RequestValidationError(
        [
            {"type": "string_type", "loc": ("body", "name"), "msg": "bad", "input": "x\ud800y"},
            {"type": "list_type", "loc": ("body", "deep"), "msg": "bad", "input": deep},
            {"type": "float_type", "loc": ("body", "n"), "msg": "bad", "input": math.nan},
        ]
    )
    response = await _get(_app_raising(error))
    assert response.status_code == 422
    surrogate, nested, nan = response.json()["detail"]
    assert surrogate["input"] == "x\ufffdy"
    assert "[nested too deep to show]" in json.dumps(nested["input"])
    assert nan["input"] == "nan"


async def test_a_422_with_a_text_detail_gets_the_documented_list_shape() -> None:
    response = await _get(_app_raising(HTTPException(422, "since must be before until")))
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"type": "value_error", "loc": [], "msg": "since must be before until", "input": None}
    ]
    other = await _get(_app_raising(HTTPException(409, "already exists")))
    assert other.json() == {"detail": "already exists"}
