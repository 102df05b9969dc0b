"""The dashboard's security headers, the absence of inline script, and CORS only on request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from homepot.config import Settings
from homepot.main import create_app
from homepot.web.router import WEB_DIR

PAGES = [
    "/login",
    "/",
    "/sites",
    "/sites/site-001",
    "/devices",
    "/devices/pos-1",
    "/jobs",
    "/jobs/job-1",
    "/errors",
    "/analytics",
]


def directives(policy: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for part in policy.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


class InlineCode(HTMLParser):
    """Collects inline scripts, inline event handlers and style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script":
            self._in_script = "src" not in names
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{tag}[{name}]" for name in names if name.startswith("on")]
        if "style" in names:
            self.found.append(f"{tag}[style]")
        for name, value in attrs:
            if value and value.strip().lower().startswith("javascript:"):
                self.found.append(f"{tag}[{name}=javascript:]")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append("inline <script>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_carries_a_strict_policy(client: AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = directives(response.headers["content-security-policy"])
    assert policy["script-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    assert not any("unsafe" in value for values in policy.values() for value in values)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["x-frame-options"] == "DENY"

    parser = InlineCode()
    parser.feed(response.text)
    assert parser.found == []


def test_no_template_holds_inline_script_or_handlers() -> None:
    for template in sorted((WEB_DIR / "templates").glob("*.html")):
        parser = InlineCode()
        parser.feed(template.read_text())
        assert parser.found == [], f"{template.name}: {parser.found}"


async def test_api_answers_and_static_files_are_not_sniffed(client: AsyncClient) -> None:
    for path in ("/api/v1/health", "/static/app.js", "/api/v1/sites"):
        response = await client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff", path


async def test_without_configured_origins_there_is_no_cors(client: AsyncClient) -> None:
    origin = {"Origin": "https://evil.example"}
    response = await client.get("/api/v1/health", headers=origin)
    assert "access-control-allow-origin" not in response.headers
    preflight = await client.options(
        "/api/v1/sites",
        headers=origin | {"Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


@pytest.fixture
async def cors_client(settings: Settings, tmp_path: Path) -> AsyncIterator[AsyncClient]:
    configured = settings.model_copy(update={"cors_allowed_origins": ["https://ops.example.com"]})
    app: FastAPI = create_app(configured)
    async with LifespanManager(app):
        transport = ASGITransport(app=app)
        async with AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def test_configured_origins_and_only_those_may_call_the_api(
    cors_client: AsyncClient,
) -> None:
    allowed = await cors_client.options(
        "/api/v1/sites",
        headers={
            "Origin": "https://ops.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://ops.example.com"
    other = await cors_client.get("/api/v1/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
