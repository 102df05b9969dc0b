"""In the dashboard, a simulated terminal or store wears a "simulated" badge; a real one none."""

from __future__ import annotations

import pytest
from playwright.async_api import BrowserContext, expect

from homepot.auth.models import Role
from tests.helpers import create_bootstrap_key, create_device
from tests.web.conftest import API, LiveServer
from tests.web.test_browser import sign_in, visit

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_simulated_terminals_and_stores_wear_a_badge(
    context: BrowserContext, live: LiveServer
) -> None:
    admin = await live.user(Role.admin)
    headers = {"Authorization": f"Bearer {admin['token']}"}
    created = await live.client.post(
        f"{API}/sites",
        json={"site_id": "sim-site-001", "name": "Simulated store 1", "simulated": True},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    registered = await live.client.post(
        f"{API}/agent/register",
        json={
            "site_id": "sim-site-001",
            "device_id": "sim-pos-0001",
            "bootstrap_key": await create_bootstrap_key(live.app, "sim-site-001"),
            "name": "Simulated till",
            "simulated": True,
        },
    )
    assert registered.status_code == 200, registered.text
    real_id = await create_device(live.app, site_id="sim-site-001", name="Real till")
    page = await context.new_page()
    await sign_in(page, live, admin["email"], admin["password"])

    await visit(page, live, "/devices", "/devices")
    simulated_row = page.locator("#devices-table tr", has_text="sim-pos-0001")
    await expect(simulated_row.locator(".badge-simulated")).to_have_text("simulated")
    real_row = page.locator("#devices-table tr", has_text=real_id)
    await expect(real_row).to_be_visible()
    await expect(real_row.locator(".badge-simulated")).to_have_count(0)

    await visit(page, live, "/devices/sim-pos-0001", "/devices/sim-pos-0001")
    await expect(page.locator("#device-provenance .badge-simulated")).to_be_visible()
    await expect(page.locator("h1 .badge-simulated")).to_be_visible()

    await visit(page, live, f"/devices/{real_id}", f"/devices/{real_id}")
    await expect(page.locator("#device-provenance")).to_have_text("real terminal")
    await expect(page.locator(".badge-simulated")).to_have_count(0)

    await visit(page, live, "/sites", "/sites")
    site_row = page.locator("#sites-table tr", has_text="sim-site-001")
    await expect(site_row.locator(".badge-simulated")).to_be_visible()
