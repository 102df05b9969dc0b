from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy.exc import IntegrityError

from homepot.analytics.models import ConfigurationHistory, SiteOperatingSchedule
from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from tests.helpers import (
    auth_headers,
    create_device,
    create_site,
    create_user,
    db_rows,
    flush,
    login,
    rows,
)

SITES = "/api/v1/sites"
CLIENT_IP = "203.0.113.7"


def messages(response: Any) -> str:
    """Every error message of a response, as one string to search."""
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else " | ".join(e["msg"] for e in detail)


async def user_and_headers(
    app: FastAPI, client: AsyncClient, role: Role
) -> tuple[str, dict[str, str]]:
    user = await create_user(app, role=role)
    return user["id"], await login(client, user["email"], user["password"])


# -- sites -----------------------------------------------------------------------------------


async def test_operator_creates_reads_updates_and_deletes_a_site(
    app: FastAPI, client: AsyncClient
) -> None:
    operator = await auth_headers(app, client, Role.operator)
    body = {
        "site_id": "site-001",
        "name": "Main Street",
        "timezone": "Europe/London",
        "address": "1 Main Street",
        "config": {"receipt_footer": "Thanks!"},
    }
    created = await client.post(SITES, json=body, headers=operator)
    assert created.status_code == 201, created.text
    assert created.json() | body == created.json()
    assert created.json()["created_at"].endswith(("+00:00", "Z"))

    read = await client.get(f"{SITES}/site-001", headers=operator)
    assert read.status_code == 200
    assert read.json()["name"] == "Main Street"

    patched = await client.patch(
        f"{SITES}/site-001", json={"name": "Main St.", "address": None}, headers=operator
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Main St."
    assert patched.json()["address"] is None
    assert patched.json()["timezone"] == "Europe/London"

    deleted = await client.delete(f"{SITES}/site-001", headers=operator)
    assert deleted.status_code == 204
    gone = await client.get(f"{SITES}/site-001", headers=operator)
    assert gone.status_code == 404
    assert gone.json()["detail"] == "site 'site-001' does not exist"


async def test_site_writes_need_operator_or_admin_and_reads_need_a_login(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    viewer = await auth_headers(app, client, Role.viewer)
    admin = await auth_headers(app, client, Role.admin)

    assert (await client.get(SITES)).status_code == 401
    assert (await client.get(f"{SITES}/{site_id}")).status_code == 401
    assert (await client.post(SITES, json={"site_id": "s-1", "name": "x"})).status_code == 401

    assert (await client.get(SITES, headers=viewer)).status_code == 200
    assert (await client.get(f"{SITES}/{site_id}", headers=viewer)).status_code == 200
    refused = [
        await client.post(SITES, json={"site_id": "s-1", "name": "x"}, headers=viewer),
        await client.patch(f"{SITES}/{site_id}", json={"name": "y"}, headers=viewer),
        await client.delete(f"{SITES}/{site_id}", headers=viewer),
    ]
    for response in refused:
        assert response.status_code == 403
        assert "admin, operator" in response.json()["detail"]

    created = await client.post(SITES, json={"site_id": "s-1", "name": "x"}, headers=admin)
    assert created.status_code == 201


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"site_id": "Site 1", "name": "x"}, "site_id", "lowercase letters"),
        ({"site_id": "-site", "name": "x"}, "site_id", "starting with a letter or digit"),
        ({"site_id": "s", "name": "x"}, "site_id", "2-63 characters"),
        ({"site_id": "s" * 64, "name": "x"}, "site_id", "2-63 characters"),
        (
            {"site_id": "site-1", "name": "x", "timezone": "Mars/Olympus"},
            "timezone",
            "unknown time zone 'Mars/Olympus'",
        ),
        ({"site_id": "site-1", "name": ""}, "name", "at least 1 character"),
        ({"site_id": "site-1", "name": "x", "config": [1]}, "config", "valid dictionary"),
    ],
)
async def test_invalid_site_fields_are_422_naming_the_field(
    app: FastAPI, client: AsyncClient, body: dict[str, Any], field: str, message: str
) -> None:
    operator = await auth_headers(app, client, Role.operator)
    response = await client.post(SITES, json=body, headers=operator)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(e["loc"][-1] == field and message in e["msg"] for e in errors), errors


async def test_patch_validates_the_timezone_and_refuses_null_for_required_fields(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    operator = await auth_headers(app, client, Role.operator)
    bad_zone = await client.patch(
        f"{SITES}/{site_id}", json={"timezone": "Europe/Atlantis"}, headers=operator
    )
    assert bad_zone.status_code == 422
    assert "unknown time zone 'Europe/Atlantis'" in messages(bad_zone)
    null_name = await client.patch(f"{SITES}/{site_id}", json={"name": None}, headers=operator)
    assert null_name.status_code == 422
    assert "may be omitted but not null" in messages(null_name)
    stray_reason = await client.patch(
        f"{SITES}/{site_id}", json={"change_reason": "why"}, headers=operator
    )
    assert stray_reason.status_code == 422
    assert "send it with config" in messages(stray_reason)


async def test_duplicate_site_id_is_409_and_unknown_sites_are_404(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    operator = await auth_headers(app, client, Role.operator)
    duplicate = await client.post(SITES, json={"site_id": site_id, "name": "x"}, headers=operator)
    assert duplicate.status_code == 409
    assert duplicate.json()["detail"] == f"a site with site_id '{site_id}' already exists"

    for response in [
        await client.get(f"{SITES}/nowhere", headers=operator),
        await client.patch(f"{SITES}/nowhere", json={"name": "y"}, headers=operator),
        await client.delete(f"{SITES}/nowhere", headers=operator),
    ]:
        assert response.status_code == 404
        assert response.json()["detail"] == "site 'nowhere' does not exist"


async def test_a_site_with_devices_cannot_be_deleted(app: FastAPI, client: AsyncClient) -> None:
    site_id = await create_site(app)
    device_id = await create_device(app, site_id=site_id)
    operator = await auth_headers(app, client, Role.operator)

    refused = await client.delete(f"{SITES}/{site_id}", headers=operator)
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"site '{site_id}' still has 1 device(s); delete them or move them to another site first"
    )
    assert (await client.get(f"{SITES}/{site_id}", headers=operator)).status_code == 200

    assert (
        await client.delete(f"/api/v1/devices/{device_id}", headers=operator)
    ).status_code == 204
    assert (await client.delete(f"{SITES}/{site_id}", headers=operator)).status_code == 204


async def test_deleting_a_site_deletes_its_schedules(app: FastAPI, client: AsyncClient) -> None:
    site_id = await create_site(app)
    other_site = await create_site(app)
    admin = await auth_headers(app, client, Role.admin)
    for site in (site_id, other_site):
        response = await client.put(
            f"{SITES}/{site}/schedules/0",
            json={"open_time": "08:00", "close_time": "18:00"},
            headers=admin,
        )
        assert response.status_code == 201
    assert (await client.delete(f"{SITES}/{site_id}", headers=admin)).status_code == 204
    assert await db_rows(app, SiteOperatingSchedule, site_id=site_id) == []
    assert len(await db_rows(app, SiteOperatingSchedule, site_id=other_site)) == 1


async def test_list_sites_filters_by_name_and_paginates(app: FastAPI, client: AsyncClient) -> None:
    for number, name in enumerate(["Harbour Café", "North Mall", "harbour kiosk", "100% Fresh"]):
        await create_site(app, site_id=f"site-{number:03d}", name=name)
    viewer = await auth_headers(app, client, Role.viewer)

    everything = await client.get(SITES, headers=viewer)
    assert [s["site_id"] for s in rows(everything)] == [
        "site-000",
        "site-001",
        "site-002",
        "site-003",
    ]
    assert everything.json() | {"total": 4, "limit": 50, "offset": 0} == everything.json()

    harbour = await client.get(SITES, params={"q": "HARBOUR"}, headers=viewer)
    assert [s["name"] for s in rows(harbour)] == ["Harbour Café", "harbour kiosk"]
    assert harbour.json()["total"] == 2
    # A LIKE wildcard in the search is a literal character.
    percent = await client.get(SITES, params={"q": "0%"}, headers=viewer)
    assert [s["name"] for s in rows(percent)] == ["100% Fresh"]

    page = await client.get(SITES, params={"limit": 2, "offset": 1}, headers=viewer)
    assert [s["site_id"] for s in rows(page)] == ["site-001", "site-002"]
    assert page.json()["total"] == 4
    assert page.json()["limit"] == 2
    assert page.json()["offset"] == 1

    for params in [{"limit": 0}, {"limit": 501}, {"offset": -1}]:
        bad = await client.get(SITES, params=params, headers=viewer)
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["query", next(iter(params))]


async def test_site_config_change_records_one_history_row_per_changed_key(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(
        app, config={"max_connections": 10, "currency": "EUR", "locale": "de"}
    )
    operator_id, operator = await user_and_headers(app, client, Role.operator)

    response = await client.patch(
        f"{SITES}/{site_id}",
        json={
            "config": {"max_connections": 15, "currency": "EUR", "locale": None, "tax": 0.2},
            "change_reason": "Increased load during peak hours",
        },
        headers=operator,
    )
    assert response.status_code == 200, response.text
    assert response.json()["config"] == {"max_connections": 15, "currency": "EUR", "tax": 0.2}

    await flush(app)
    history = {
        row.parameter_name: row
        for row in await db_rows(app, ConfigurationHistory, entity_id=site_id)
    }
    assert set(history) == {"max_connections", "locale", "tax"}
    assert history["max_connections"].old_value == {"value": 10}
    assert history["max_connections"].new_value == {"value": 15}
    assert history["locale"].old_value == {"value": "de"}
    assert history["locale"].new_value is None
    assert history["tax"].old_value is None
    assert history["tax"].new_value == {"value": 0.2}
    for row in history.values():
        assert row.entity_type == "site"
        assert row.changed_by == operator_id
        assert row.change_type == "manual"
        assert row.change_reason == "Increased load during peak hours"

    same_again = await client.patch(
        f"{SITES}/{site_id}", json={"config": {"max_connections": 15}}, headers=operator
    )
    assert same_again.status_code == 200
    await flush(app)
    assert len(await db_rows(app, ConfigurationHistory, entity_id=site_id)) == 3


async def test_secret_config_values_never_reach_history_or_audit(
    app: FastAPI, client: AsyncClient
) -> None:
    canary = "canary-7d1f9e0b5a"
    site_id = await create_site(app, config={"api_key": "old-value-1234"})
    operator = await auth_headers(app, client, Role.operator)
    response = await client.patch(
        f"{SITES}/{site_id}",
        json={"config": {"api_key": canary, "gateway": {"client_secret": canary, "port": 443}}},
        headers=operator,
    )
    assert response.status_code == 200

    await flush(app)
    history = await db_rows(app, ConfigurationHistory, entity_id=site_id)
    assert {row.parameter_name for row in history} == {"api_key", "gateway"}
    stored = json.dumps([[row.old_value, row.new_value] for row in history])
    assert canary not in stored
    assert "old-value-1234" not in stored
    assert '"port": 443' in stored
    audits = await db_rows(app, AuditLog, resource_id=site_id)
    assert audits
    assert canary not in json.dumps([row.details for row in audits])


async def test_site_changes_write_audit_rows(app: FastAPI, client: AsyncClient) -> None:
    operator_id, operator = await user_and_headers(app, client, Role.operator)
    await client.post(SITES, json={"site_id": "site-a", "name": "A"}, headers=operator)
    await client.patch(f"{SITES}/site-a", json={"name": "B"}, headers=operator)
    # Nothing changes: nothing to audit.
    await client.patch(f"{SITES}/site-a", json={"name": "B"}, headers=operator)
    await client.delete(f"{SITES}/site-a", headers=operator)

    audits = sorted(await db_rows(app, AuditLog, resource_id="site-a"), key=lambda r: r.id)
    assert [row.action for row in audits] == ["site.create", "site.update", "site.delete"]
    for row in audits:
        assert row.user_id == operator_id
        assert row.resource_type == "site"
        assert row.ip_address == CLIENT_IP
    assert audits[0].details["name"] == "A"
    assert audits[1].details == {"name": {"old": "A", "new": "B"}}


# -- schedules -------------------------------------------------------------------------------

MONDAY = {
    "open_time": "08:00",
    "close_time": "22:00",
    "is_maintenance_window": False,
    "expected_transaction_volume": 500,
    "peak_hours_start": "12:00",
    "peak_hours_end": "14:00",
    "notes": "Regular business day",
    "special_considerations": {"holiday_rules": "close at 18:00"},
}


async def test_admin_puts_reads_and_deletes_a_day(app: FastAPI, client: AsyncClient) -> None:
    site_id = await create_site(app, timezone="America/New_York")
    admin = await auth_headers(app, client, Role.admin)
    url = f"{SITES}/{site_id}/schedules/0"

    created = await client.put(url, json=MONDAY, headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["site_id"] == site_id
    assert body["day_of_week"] == 0
    assert body["day_name"] == "Monday"
    assert body["timezone"] == "America/New_York"
    assert body["open_time"] == "08:00:00"
    assert body["close_time"] == "22:00:00"
    assert body["peak_hours_start"] == "12:00:00"
    assert body["expected_transaction_volume"] == 500
    assert body["special_considerations"] == {"holiday_rules": "close at 18:00"}

    read = await client.get(url, headers=admin)
    assert read.status_code == 200
    assert read.json() == body

    assert (await client.delete(url, headers=admin)).status_code == 204
    missing = await client.get(url, headers=admin)
    assert missing.status_code == 404
    assert missing.json()["detail"] == f"site '{site_id}' has no schedule for day 0 (Monday)"
    again = await client.delete(url, headers=admin)
    assert again.status_code == 404
    assert again.json()["detail"] == f"site '{site_id}' has no schedule for day 0 (Monday)"


async def test_schedule_times_conform_to_the_published_schema(
    app: FastAPI, client: AsyncClient
) -> None:
    """A site's hours are wall-clock times without an offset; the OpenAPI document must not
    call them RFC 3339 times (format "time" requires an offset: schema checkers refuse
    "08:00:00" against it)."""
    site_id = await create_site(app)
    admin = await auth_headers(app, client, Role.admin)
    assert (
        await client.put(f"{SITES}/{site_id}/schedules/0", json=MONDAY, headers=admin)
    ).status_code == 201
    schemas = app.openapi()["components"]["schemas"]
    read = {
        "ScheduleRead": (await client.get(f"{SITES}/{site_id}/schedules/0", headers=admin)).json(),
        "SiteOperatingScheduleRead": (
            await client.get("/api/v1/analytics/site-schedules", headers=admin)
        ).json()["items"][0],
    }
    for name, body in read.items():
        for field in ("open_time", "close_time", "peak_hours_start", "peak_hours_end"):
            schema = schemas[name]["properties"][field]
            validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
            assert validator.is_valid(body[field]), (name, field, body[field], schema)
            assert validator.is_valid(None)
            assert not validator.is_valid("8 o'clock")


async def test_schedules_are_admin_only(app: FastAPI, client: AsyncClient) -> None:
    site_id = await create_site(app)
    url = f"{SITES}/{site_id}/schedules"
    for role in (Role.viewer, Role.operator):
        headers = await auth_headers(app, client, role)
        for response in [
            await client.get(url, headers=headers),
            await client.put(url, json=[], headers=headers),
            await client.get(f"{url}/0", headers=headers),
            await client.put(f"{url}/0", json=MONDAY, headers=headers),
            await client.delete(f"{url}/0", headers=headers),
        ]:
            assert response.status_code == 403
            assert "needs the role admin" in response.json()["detail"]
    assert (await client.get(url)).status_code == 401
    assert (await client.put(f"{url}/0", json=MONDAY)).status_code == 401
    assert await db_rows(app, SiteOperatingSchedule) == []


async def test_unknown_site_is_404_for_schedules(app: FastAPI, client: AsyncClient) -> None:
    admin = await auth_headers(app, client, Role.admin)
    url = f"{SITES}/nowhere/schedules"
    for response in [
        await client.get(url, headers=admin),
        await client.put(url, json=[], headers=admin),
        await client.get(f"{url}/1", headers=admin),
        await client.put(f"{url}/1", json=MONDAY, headers=admin),
        await client.delete(f"{url}/1", headers=admin),
    ]:
        assert response.status_code == 404
        assert response.json()["detail"] == "site 'nowhere' does not exist"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"open_time": "22:00", "close_time": "08:00"}, "open_time (22:00) must be before"),
        ({"open_time": "08:00", "close_time": "08:00"}, "must be before close_time"),
        ({"close_time": None}, "give both open_time and close_time"),
        (
            {"open_time": None, "close_time": None, "peak_hours_start": None},
            "an open day needs open_time and close_time",
        ),
        ({"peak_hours_start": "15:00"}, "peak_hours_start (15:00) must be before"),
        ({"peak_hours_end": None}, "give both peak_hours_start and peak_hours_end"),
        ({"peak_hours_start": "07:00"}, "must lie within the opening hours 08:00-22:00"),
        ({"peak_hours_end": "23:00"}, "must lie within the opening hours"),
        ({"expected_transaction_volume": -1}, "greater than or equal to 0"),
        ({"open_time": "8am"}, "expected a local time as HH:MM or HH:MM:SS"),
        ({"open_time": "25:00"}, "expected a local time"),
        ({"open_time": "08:00+02:00"}, "expected a local time"),
        ({"open_time": 28800}, "expected a local time"),
    ],
)
async def test_invalid_schedules_are_422_with_the_rule_broken(
    app: FastAPI, client: AsyncClient, changes: dict[str, Any], message: str
) -> None:
    site_id = await create_site(app)
    admin = await auth_headers(app, client, Role.admin)
    body = {**MONDAY, **changes}
    response = await client.put(f"{SITES}/{site_id}/schedules/0", json=body, headers=admin)
    assert response.status_code == 422
    assert message in messages(response)
    assert await db_rows(app, SiteOperatingSchedule) == []


@pytest.mark.parametrize("day", ["7", "-1", "monday"])
async def test_day_of_week_outside_0_to_6_is_422(
    app: FastAPI, client: AsyncClient, day: str
) -> None:
    site_id = await create_site(app)
    admin = await auth_headers(app, client, Role.admin)
    for response in [
        await client.put(f"{SITES}/{site_id}/schedules/{day}", json=MONDAY, headers=admin),
        await client.get(f"{SITES}/{site_id}/schedules/{day}", headers=admin),
    ]:
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["path", "day_of_week"]


async def test_a_closed_day_needs_no_times_but_peak_hours_need_opening_hours(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    admin = await auth_headers(app, client, Role.admin)
    url = f"{SITES}/{site_id}/schedules/6"
    closed = await client.put(url, json={"is_closed": True, "notes": "Sunday"}, headers=admin)
    assert closed.status_code == 201, closed.text
    assert closed.json()["is_closed"] is True
    assert closed.json()["open_time"] is None

    peak_without_hours = await client.put(
        url,
        json={"is_closed": True, "peak_hours_start": "10:00", "peak_hours_end": "11:00"},
        headers=admin,
    )
    assert peak_without_hours.status_code == 422
    assert "peak hours need opening hours" in messages(peak_without_hours)


async def test_put_is_an_idempotent_upsert_of_one_row_per_day(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    admin = await auth_headers(app, client, Role.admin)
    url = f"{SITES}/{site_id}/schedules/2"

    first = await client.put(url, json=MONDAY, headers=admin)
    second = await client.put(url, json=MONDAY, headers=admin)
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["created_at"] == first.json()["created_at"]
    stored = await db_rows(app, SiteOperatingSchedule, site_id=site_id)
    assert len(stored) == 1

    changed = await client.put(url, json={**MONDAY, "close_time": "20:30:15"}, headers=admin)
    assert changed.status_code == 200
    assert changed.json()["close_time"] == "20:30:15"
    restored = await db_rows(app, SiteOperatingSchedule, site_id=site_id)
    assert [row.id for row in restored] == [stored[0].id]

    # The table itself refuses a second row for the same site and day.
    async with app.state.session_factory() as session:
        session.add(SiteOperatingSchedule(site_id=site_id, day_of_week=2, is_closed=True))
        with pytest.raises(IntegrityError):
            await session.commit()


async def test_the_week_is_listed_in_day_order_and_can_be_replaced(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app, timezone="Asia/Tokyo")
    admin = await auth_headers(app, client, Role.admin)
    url = f"{SITES}/{site_id}/schedules"
    for day in (4, 0, 2):
        await client.put(f"{url}/{day}", json=MONDAY, headers=admin)

    week = await client.get(url, headers=admin)
    assert week.status_code == 200
    assert week.json()["timezone"] == "Asia/Tokyo"
    assert [d["day_of_week"] for d in week.json()["days"]] == [0, 2, 4]
    assert {d["timezone"] for d in week.json()["days"]} == {"Asia/Tokyo"}

    replaced = await client.put(
        url,
        json=[
            {"day_of_week": 6, "is_closed": True},
            {**MONDAY, "day_of_week": 0, "close_time": "21:00"},
        ],
        headers=admin,
    )
    assert replaced.status_code == 200, replaced.text
    days = replaced.json()["days"]
    assert [d["day_of_week"] for d in days] == [0, 6]
    assert days[0]["close_time"] == "21:00:00"
    assert len(await db_rows(app, SiteOperatingSchedule, site_id=site_id)) == 2

    duplicate = await client.put(
        url, json=[{"day_of_week": 1, "is_closed": True}] * 2, headers=admin
    )
    assert duplicate.status_code == 422
    assert "day_of_week 1 is listed more than once" in messages(duplicate)
    invalid_day = await client.put(url, json=[{"day_of_week": 9, "is_closed": True}], headers=admin)
    assert invalid_day.status_code == 422
    assert invalid_day.json()["detail"][0]["loc"][-1] == "day_of_week"


async def test_schedule_changes_write_audit_rows(app: FastAPI, client: AsyncClient) -> None:
    site_id = await create_site(app)
    admin_id, admin = await user_and_headers(app, client, Role.admin)
    url = f"{SITES}/{site_id}/schedules/3"
    await client.put(url, json=MONDAY, headers=admin)
    await client.put(url, json={**MONDAY, "notes": "Late opening"}, headers=admin)
    await client.delete(url, headers=admin)

    audits = sorted(await db_rows(app, AuditLog, resource_type="site_schedule"), key=lambda r: r.id)
    assert [row.action for row in audits] == [
        "schedule.create",
        "schedule.update",
        "schedule.delete",
    ]
    assert {row.resource_id for row in audits} == {f"{site_id}/3"}
    assert {row.user_id for row in audits} == {admin_id}
    assert audits[0].details["open_time"] == "08:00:00"
    assert audits[1].details == {"notes": {"old": "Regular business day", "new": "Late opening"}}
