"""Browser tests: the real app behind uvicorn, driven by a real headless Chromium.

Chromium is Debian's (/usr/bin/chromium; scripts/ensure-services.sh installs it when
missing), driven by the playwright package, which never downloads browsers of its own here.
The server and the browser share the test's event loop (one loop for the whole run, so that
one browser serves every test); the server runs on both storage backends like every other
test, through the ``settings`` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI
from httpx import AsyncClient
from playwright.async_api import Browser, BrowserContext, async_playwright

from homepot.auth.models import Role
from homepot.config import Settings
from homepot.main import create_app
from tests.helpers import create_user, flush, login

CHROMIUM = os.environ.get("HOMEPOT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API = "/api/v1"
# How long the live server may take to stop (its lifespan's shutdown included).
STOP_SECONDS = 60


@dataclass
class LiveServer:
    app: FastAPI
    base_url: str
    client: AsyncClient

    async def user(self, role: Role) -> dict[str, str]:
        """A user of ``role``; returns id, email, password and a bearer token."""
        user = await create_user(self.app, role=role)
        headers = await login(self.client, user["email"], user["password"])
        return user | {"token": headers["Authorization"].removeprefix("Bearer ")}

    async def wait_for(self, probe: Callable[[], Awaitable[Any]], *, within: float = 10.0) -> Any:
        """Poll ``probe`` (after draining the analytics recorder) until it returns truth."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            await flush(self.app)
            result = await probe()
            if result or asyncio.get_running_loop().time() > deadline:
                return result
            await asyncio.sleep(0.05)


def _require_chromium() -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run scripts/ensure-services.sh (as root it installs "
            "Debian's chromium package) or set HOMEPOT_TEST_CHROMIUM"
        )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    _require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def live(settings: Settings) -> AsyncIterator[LiveServer]:
    """The app served over HTTP on a free local port, with its lifespan running."""
    async with serve(create_app(settings)) as server:
        yield server


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[LiveServer]:
    """Serve ``app`` over HTTP on a free local port, its lifespan running, until exit."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            # The browser may still hold a request when the server stops: close it after 5 s.
            timeout_graceful_shutdown=5,
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with AsyncClient(base_url=base_url, timeout=10) as client:
            yield LiveServer(app=app, base_url=base_url, client=client)
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(serving), STOP_SECONDS)
        except TimeoutError:
            # Say what still runs (a hung shutdown once held a whole CI worker), then fail.
            for task in asyncio.all_tasks():
                task.print_stack(file=sys.stderr)
            serving.cancel()
            pytest.fail(f"the live server did not stop within {STOP_SECONDS} s; tasks on stderr")


@pytest_asyncio.fixture(loop_scope="session")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile (its own localStorage and sessionStorage) per test."""
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(10_000)
    yield ctx
    await ctx.close()
