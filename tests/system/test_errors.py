"""Input a client can send never produces a 500, on either database."""

from __future__ import annotations

from fastapi import FastAPI
from httpx import AsyncClient

from homepot.auth.models import Role
from homepot.site.models import Site
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
