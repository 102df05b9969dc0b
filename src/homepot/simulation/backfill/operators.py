"""Head-office staff in the history: their dashboard sessions, the API requests and audit rows
they leave, and the site settings they change.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine

from homepot.analytics.models import APIRequestLog, ConfigurationHistory, UserActivity
from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from homepot.auth.service import ensure_user, generate_password
from homepot.db import create_session_factory
from homepot.simulation.backfill.history import History, Row

_BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36"
)


def operator_sessions(history: History, site_ids: list[str], device_ids: list[str]) -> None:
    """Head office (London) staff: a few dashboard sessions per working day each."""
    zone = ZoneInfo("Europe/London")
    people = history.users["operator"] + history.users["admin"]
    first = history.start.astimezone(zone).date()
    for offset in range(int(history.config.days) + 2):
        local_day = first + timedelta(days=offset)
        for user_id in people:
            for _ in range(history.rng.randint(2, 4)):
                minute = history.rng.randint(8 * 60, 18 * 60)
                begin = datetime.combine(local_day, time(minute // 60, minute % 60), zone)
                begin = begin.astimezone(UTC)
                if history.start <= begin < history.end - timedelta(hours=1):
                    operator_session(history, user_id, begin, site_ids, device_ids)


def operator_session(
    history: History, user_id: str, begin: datetime, site_ids: list[str], device_ids: list[str]
) -> None:
    rng = history.rng
    session_id = f"{rng.getrandbits(128):032x}"
    moment = begin
    staff = history.users["operator"] + history.users["admin"]
    ip = f"192.0.2.{10 + staff.index(user_id)}"
    browser_request(history, moment, "POST", "/api/v1/auth/token", None, 200, user_id, ip, 312)
    history.add_core(
        AuditLog,
        {"timestamp": moment, "user_id": user_id, "action": "user.login",
         "resource_type": "user", "resource_id": user_id, "ip_address": ip, "details": None},
    )  # fmt: skip
    for _ in range(rng.randint(6, 22)):
        moment += timedelta(seconds=rng.uniform(3, 120))
        device = rng.choice(device_ids)
        site = rng.choice(site_ids)
        kind = rng.choices(
            ("dashboard", "devices", "device", "search", "analytics", "site_config"),
            weights=(3, 3, 3, 2, 2, 1),
        )[0]
        if kind == "dashboard":
            user_activity(
                history, moment, user_id, session_id, "page_view", "/dashboard", None, None
            )
            browser_request(
                history,
                moment,
                "GET",
                "/api/v1/analytics/device-metrics",
                None,
                200,
                user_id,
                ip,
                18_250,
            )
        elif kind == "devices":
            user_activity(history, moment, user_id, session_id, "page_view", "/devices", None, None)
            browser_request(
                history, moment, "GET", "/api/v1/devices", None, 200, user_id, ip, 5_230
            )
        elif kind == "device":
            user_activity(
                history,
                moment,
                user_id,
                session_id,
                "click",
                "/devices",
                f"device-row-{device}",
                None,
            )
            found = rng.random() > 0.03
            browser_request(
                history,
                moment,
                "GET",
                f"/api/v1/devices/{device if found else device + 'x'}",
                "/api/v1/devices/{device_id}",
                200 if found else 404,
                user_id,
                ip,
                512,
            )
            user_activity(
                history, moment, user_id, session_id, "page_view", f"/devices/{device}", None, None
            )
        elif kind == "search":
            query = device.split("-pos")[0]
            user_activity(
                history, moment, user_id, session_id, "search", "/devices", "device-search", query
            )
            browser_request(
                history,
                moment,
                "GET",
                "/api/v1/devices",
                None,
                200,
                user_id,
                ip,
                2_048,
                {"q": query},
            )
        elif kind == "analytics":
            user_activity(
                history, moment, user_id, session_id, "page_view", "/analytics", None, None
            )
            bad = rng.random() < 0.05
            browser_request(
                history,
                moment,
                "GET",
                "/api/v1/analytics/errors",
                None,
                422 if bad else 200,
                user_id,
                ip,
                164 if bad else 9_400,
                {"start_date": "yesterday" if bad else "2025-12-01"},
            )
        else:
            user_activity(
                history,
                moment,
                user_id,
                session_id,
                "form_submit",
                f"/sites/{site}",
                "site-form",
                None,
            )
            browser_request(
                history,
                moment,
                "PATCH",
                f"/api/v1/sites/{site}",
                "/api/v1/sites/{site_id}",
                200,
                user_id,
                ip,
                640,
            )
            footer = rng.choice(("Thank you!", "See you soon!", "Thanks for shopping with us"))
            history.record(
                ConfigurationHistory,
                timestamp=moment,
                entity_type="site",
                entity_id=site,
                parameter_name="receipt_footer",
                old_value={"value": "Thank you!"},
                new_value={"value": footer},
                changed_by=user_id,
                change_type="manual",
                change_reason="Receipt wording for the season",
            )
            history.add_core(
                AuditLog,
                {"timestamp": moment, "user_id": user_id, "action": "site.update",
                 "resource_type": "site", "resource_id": site, "ip_address": ip,
                 "details": {"config": ["receipt_footer"]}},
            )  # fmt: skip


def user_activity(
    history: History, moment: datetime, user_id: str, session_id: str, kind: str, page: str,
    element: str | None, query: str | None,
) -> None:  # fmt: skip
    history.record(
        UserActivity,
        timestamp=moment,
        user_id=user_id,
        session_id=session_id,
        activity_type=kind,
        page_url=page,
        element_id=element,
        search_query=query,
        duration_ms=round(history.rng.uniform(2_000, 95_000)) if kind == "page_view" else None,
        extra_data={"viewport": "1440x900"} if kind == "page_view" else None,
    )


def browser_request(
    history: History, moment: datetime, method: str, endpoint: str, route: str | None, status: int,
    user_id: str, ip: str, size: int, query: Row | None = None,
) -> None:  # fmt: skip
    history.record(
        APIRequestLog,
        timestamp=moment + timedelta(milliseconds=history.rng.uniform(30, 400)),
        request_id=f"{history.rng.getrandbits(64):016x}",
        endpoint=endpoint,
        route=route or endpoint,
        method=method,
        status_code=status,
        response_time_ms=round(history.rng.lognormvariate(3.0, 0.5), 2),
        user_id=user_id,
        ip_address=ip,
        user_agent=_BROWSER,
        error_message=None
        if status < 400
        else ("not found" if status == 404 else "invalid start_date"),
        request_size_bytes=0 if method == "GET" else 180,
        response_size_bytes=size,
        query_params=query,
    )


async def ensure_users(engine: AsyncEngine, operators: int) -> dict[str, list[str]]:
    """Head-office staff who act in the history (passwords random: nobody logs in as them)."""
    ids: dict[str, list[str]] = {"admin": [], "operator": []}
    async with create_session_factory(engine)() as session, session.begin():
        user, _ = await ensure_user(
            session, email="backfill-admin@homepot.example", password=generate_password(),
            role=Role.admin,
        )  # fmt: skip
        ids["admin"].append(user.id)
        for number in range(1, operators + 1):
            user, _ = await ensure_user(
                session, email=f"backfill-operator-{number}@homepot.example",
                password=generate_password(), role=Role.operator,
            )  # fmt: skip
            ids["operator"].append(user.id)
    return ids
