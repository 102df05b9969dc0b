"""analytics.js in a real browser: batching, delivery on close, privacy, sessions, errors.

The tracker runs on a small page of the test's own, served from the live server's origin
(so its API calls are same-origin, as on the dashboard), loading the real /static/analytics.js.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page, Request, Route

from homepot.analytics.models import ErrorLog, UserActivity
from homepot.auth.models import Role
from tests.helpers import db_rows
from tests.web.conftest import API, LiveServer

pytestmark = pytest.mark.asyncio(loop_scope="session")

CANARY = "CANARY-7f3a"
TEST_PAGE = "/__tracker-test"
PAGE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tracker test</title></head>
<body>
  <header>
    <label><input type="checkbox" id="analytics-optout"> Don't track my activity</label>
    <button type="button" id="logout">Log out</button>
  </header>
  <main id="content">
    <input type="search" id="thing-search" aria-label="Search things">
    <button type="button" id="plain-button">Plain</button>
    <a href="#top" data-track="named-link">Named link</a>
    <div id="container"><span>not interactive</span></div>
    <form id="secret-form">
      <input id="secret-field" name="note">
      <input type="password" id="secret-password" name="password">
      <button type="submit" id="secret-submit">Send</button>
    </form>
  </main>
  <script>
    document.getElementById("secret-form").addEventListener("submit", (e) => e.preventDefault());
    document.getElementById("logout").addEventListener("click", () => {
      localStorage.removeItem("homepot.token");
    });
    window.HomepotAnalyticsConfig = __CONFIG__;
  </script>
  <script src="/static/analytics.js" defer></script>
</body></html>
"""
DNT_SCRIPT = "Object.defineProperty(Navigator.prototype, 'doNotTrack', {get: () => '1'});"


def is_ingestion(request: Request) -> bool:
    return request.method == "POST" and f"{API}/analytics/" in request.url


def is_batch(request: Request) -> bool:
    return is_ingestion(request) and request.url.endswith("/user-activities")


async def open_tracker(
    context: BrowserContext,
    live: LiveServer,
    token: str | None,
    *,
    dnt: bool = False,
    **config: Any,
) -> Page:
    """The test page with analytics.js loaded and its preference known (when logged in)."""
    html = PAGE_HTML.replace("__CONFIG__", json.dumps(config))
    await context.route(
        f"{live.base_url}{TEST_PAGE}",
        lambda route: route.fulfill(status=200, content_type="text/html", body=html),
    )
    if dnt:
        await context.add_init_script(DNT_SCRIPT)
    if token is not None:
        await context.add_init_script(
            "if (!sessionStorage.getItem('test.token-set')) {"
            f" localStorage.setItem('homepot.token', {json.dumps(token)});"
            " sessionStorage.setItem('test.token-set', '1'); }"
        )
    page = await context.new_page()
    await page.goto(f"{live.base_url}{TEST_PAGE}")
    await page.wait_for_function("window.HomepotAnalytics !== undefined")
    if token is not None and not dnt:
        await page.wait_for_function("!document.getElementById('analytics-optout').disabled")
    return page


async def activities(live: LiveServer, user_id: str, expected: int) -> list[UserActivity]:
    """The user's stored activities, oldest first, once at least ``expected`` arrived."""

    async def probe() -> list[UserActivity]:
        stored = await db_rows(live.app, UserActivity, user_id=user_id)
        return stored if len(stored) >= expected else []

    found = await live.wait_for(probe) or await db_rows(live.app, UserActivity, user_id=user_id)
    return sorted(found, key=lambda row: (row.timestamp, row.id))


def events_of(request: Request) -> list[dict[str, Any]]:
    body = request.post_data_json
    assert isinstance(body, dict)
    return list(body["events"])


async def test_events_go_in_batches_at_a_size_and_on_a_timer(
    context: BrowserContext, live: LiveServer
) -> None:
    user = await live.user(Role.viewer)
    page = await open_tracker(context, live, user["token"], batchSize=5, flushIntervalMs=1500)

    async with page.expect_request(is_batch) as size_triggered:
        # Five clicks at once, well inside the timer's 1.5 s, however slow the machine.
        await page.evaluate(
            "for (let i = 0; i < 5; i++) document.getElementById('plain-button').click()"
        )
    first = events_of(await size_triggered.value)
    assert [e["activity_type"] for e in first] == ["click"] * 5

    async with page.expect_request(is_batch, timeout=5000) as timer_triggered:
        await page.click("a[data-track=named-link]")
    (second,) = events_of(await timer_triggered.value)
    assert second["element_id"] == "named-link"

    stored = await activities(live, user["id"], 6)
    assert [row.element_id for row in stored] == ["plain-button"] * 5 + ["named-link"]
    assert len({row.session_id for row in stored}) == 1
    assert all(row.page_url == TEST_PAGE for row in stored)


async def test_closing_the_tab_delivers_every_event_and_no_typed_value(
    context: BrowserContext, live: LiveServer
) -> None:
    user = await live.user(Role.operator)
    # No timer and no size trigger: only the page going away sends the events.
    page = await open_tracker(
        context, live, user["token"], flushIntervalMs=600_000, batchSize=100, searchDebounceMs=50
    )
    sent: list[Request] = []
    page.on("request", lambda request: sent.append(request) if is_batch(request) else None)

    await page.click("#plain-button")
    await page.click("#container span")  # not interactive and no id of its own: ignored
    await page.fill("#thing-search", "camden")
    await page.wait_for_function(
        "(sessionStorage.getItem('homepot.analytics.queue') || '').includes('camden')"
    )
    await page.fill("#secret-field", CANARY)
    await page.fill("#secret-password", CANARY)
    await page.click("#secret-submit")
    await page.evaluate(
        "HomepotAnalytics.track('click', {element_id: 'scripted',"
        f" extra_data: {{value: '{CANARY}', note: 'kept', nested: {{password: '{CANARY}'}}}}}})"
    )
    await page.wait_for_timeout(100)
    assert sent == []  # everything is still queued
    await page.close(run_before_unload=True)

    stored = await activities(live, user["id"], 6)
    kinds = [(row.activity_type, row.element_id) for row in stored]
    assert ("click", "plain-button") in kinds
    assert ("search", "thing-search") in kinds
    assert ("form_submit", "secret-form") in kinds
    assert ("click", "secret-submit") in kinds
    (search,) = [row for row in stored if row.activity_type == "search"]
    assert search.search_query == "camden"
    (view,) = [row for row in stored if row.activity_type == "page_view"]
    assert view.duration_ms is not None
    assert view.duration_ms > 0
    (scripted,) = [row for row in stored if row.element_id == "scripted"]
    assert scripted.extra_data == {"note": "kept"}
    assert all(CANARY not in json.dumps(_row_text(row)) for row in stored)
    assert len({row.session_id for row in stored}) == 1


def _row_text(row: UserActivity) -> dict[str, Any]:
    return {column.key: str(getattr(row, column.key)) for column in row.__table__.columns}


async def test_do_not_track_sends_nothing(context: BrowserContext, live: LiveServer) -> None:
    user = await live.user(Role.viewer)
    page = await open_tracker(
        context, live, user["token"], dnt=True, flushIntervalMs=100, batchSize=1
    )
    sent: list[str] = []
    context.on(
        "request", lambda request: sent.append(request.url) if is_ingestion(request) else None
    )

    optout = page.locator("#analytics-optout")
    assert await optout.is_checked()
    assert await optout.is_disabled()
    await page.click("#plain-button")
    await page.fill("#thing-search", "anything")
    await page.press("#thing-search", "Enter")
    await page.click("#secret-submit")
    await page.evaluate("setTimeout(() => { throw new Error('dnt-boom') })")
    assert await page.evaluate("HomepotAnalytics.track('click', {element_id: 'x'})") is False
    await page.wait_for_timeout(300)
    await page.close(run_before_unload=True)

    assert sent == []
    assert await db_rows(live.app, UserActivity, user_id=user["id"]) == []
    assert await db_rows(live.app, ErrorLog, user_id=user["id"]) == []


async def test_the_opt_out_checkbox_stops_tracking_and_is_stored_on_the_server(
    context: BrowserContext, live: LiveServer
) -> None:
    user = await live.user(Role.viewer)
    headers = {"Authorization": f"Bearer {user['token']}"}
    page = await open_tracker(context, live, user["token"], flushIntervalMs=100, batchSize=1)
    optout = page.locator("#analytics-optout")
    assert not await optout.is_checked()

    async with page.expect_response(lambda r: r.url.endswith("/users/me/preferences")) as saved:
        await optout.check()
    assert (await saved.value).status == 200
    preference = await live.client.get(f"{API}/users/me/preferences", headers=headers)
    assert preference.json() == {"analytics_opt_out": True}

    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if is_batch(request) else None)
    await page.click("#plain-button")
    await page.fill("#thing-search", "hidden")
    await page.press("#thing-search", "Enter")
    await page.wait_for_timeout(300)
    assert sent == []

    # Another page load reads the stored choice and keeps quiet.
    await page.reload()
    await page.wait_for_function("!document.getElementById('analytics-optout').disabled")
    assert await optout.is_checked()
    await page.click("#plain-button")
    await page.wait_for_timeout(300)
    assert sent == []

    async with page.expect_response(lambda r: r.url.endswith("/users/me/preferences")):
        await optout.uncheck()
    async with page.expect_request(is_batch):
        await page.click("a[data-track=named-link]")
    await page.close(run_before_unload=True)

    stored = await activities(live, user["id"], 1)
    assert ("click", "named-link") in [(row.activity_type, row.element_id) for row in stored]
    assert all(row.element_id != "plain-button" for row in stored)
    assert all(row.activity_type != "search" for row in stored)


async def test_the_session_rotates_after_30_idle_minutes(
    context: BrowserContext, live: LiveServer
) -> None:
    user = await live.user(Role.viewer)
    page = await open_tracker(context, live, user["token"], flushIntervalMs=600_000)
    first = await page.evaluate("HomepotAnalytics.sessionId()")
    await page.click("#plain-button")

    async def idle_for(minutes: int) -> None:
        await page.evaluate(
            "(minutes) => { const key = 'homepot.analytics.session';"
            " const s = JSON.parse(localStorage.getItem(key));"
            " s.last_activity = Date.now() - minutes * 60 * 1000;"
            " localStorage.setItem(key, JSON.stringify(s)); }",
            minutes,
        )

    await idle_for(29)
    await page.click("#plain-button")
    assert await page.evaluate("HomepotAnalytics.sessionId()") == first
    await idle_for(31)
    await page.click("a[data-track=named-link]")
    second = await page.evaluate("HomepotAnalytics.sessionId()")
    assert second != first
    async with page.expect_response(lambda r: is_batch(r.request)):
        await page.evaluate("HomepotAnalytics.flush()")

    clicks = [row for row in await activities(live, user["id"], 3) if row.activity_type == "click"]
    assert [(row.element_id, row.session_id) for row in clicks] == [
        ("plain-button", first),
        ("plain-button", first),
        ("named-link", second),
    ]


async def test_events_before_login_wait_for_a_token(
    context: BrowserContext, live: LiveServer
) -> None:
    user = await live.user(Role.viewer)
    page = await open_tracker(context, live, None, flushIntervalMs=100, batchSize=1)
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if is_batch(request) else None)
    await page.click("#plain-button")
    await page.wait_for_timeout(300)
    assert sent == []

    await page.evaluate(f"localStorage.setItem('homepot.token', {json.dumps(user['token'])})")
    async with page.expect_request(is_batch):
        await page.reload()
    stored = await activities(live, user["id"], 2)
    kinds = {(row.activity_type, row.element_id) for row in stored}
    assert ("click", "plain-button") in kinds
    assert ("page_view", None) in kinds


async def test_browser_errors_reach_the_error_log(
    context: BrowserContext, live: LiveServer
) -> None:
    user = await live.user(Role.viewer)
    page = await open_tracker(context, live, user["token"])
    async with page.expect_response(lambda r: r.url.endswith("/analytics/errors")) as thrown:
        await page.evaluate("setTimeout(() => { throw new Error('tracker-boom') })")
    assert (await thrown.value).status == 202
    async with page.expect_response(lambda r: r.url.endswith("/analytics/errors")) as rejected:
        await page.evaluate("setTimeout(() => { Promise.reject(new Error('tracker-reject')) })")
    assert (await rejected.value).status == 202

    async def probe() -> list[ErrorLog]:
        found = await db_rows(live.app, ErrorLog, user_id=user["id"])
        return found if len(found) == 2 else []

    errors = {row.error_message: row for row in await live.wait_for(probe)}
    boom = errors["tracker-boom"]
    assert boom.category == "api"
    assert boom.error_code == "FRONTEND_ERROR"
    assert boom.stack_trace is not None
    assert "tracker-boom" in boom.stack_trace
    assert boom.context["source"] == "frontend"
    assert boom.context["page_url"] == TEST_PAGE
    assert "Chrome" in boom.context["user_agent"]
    assert "Unhandled promise rejection: tracker-reject" in errors


async def test_logging_out_sends_the_users_events_and_never_hands_them_to_the_next(
    context: BrowserContext, live: LiveServer
) -> None:
    first = await live.user(Role.operator)
    second = await live.user(Role.viewer)
    page = await open_tracker(context, live, first["token"], flushIntervalMs=600_000)
    first_session = await page.evaluate("HomepotAnalytics.sessionId()")
    await page.click("#plain-button")
    async with page.expect_request(is_batch) as sent:
        await page.click("#logout")
    assert (await sent.value).headers["authorization"] == f"Bearer {first['token']}"
    # Logged out, still on the page: this click is the first user's and is never sent.
    await page.click("a[data-track=named-link]")

    await page.evaluate(f"localStorage.setItem('homepot.token', {json.dumps(second['token'])})")
    await page.reload()
    await page.wait_for_function("!document.getElementById('analytics-optout').disabled")
    assert await page.evaluate("sessionStorage.getItem('homepot.analytics.queue')") is None
    second_session = await page.evaluate("HomepotAnalytics.sessionId()")
    assert second_session != first_session
    await page.close(run_before_unload=True)

    mine = await activities(live, first["id"], 3)
    assert [(row.activity_type, row.element_id) for row in mine] == [
        ("click", "plain-button"),
        ("click", "logout"),
        ("page_view", None),
    ]
    assert {row.session_id for row in mine} == {first_session}
    theirs = await activities(live, second["id"], 1)
    assert {row.activity_type for row in theirs} == {"page_view"}
    assert {row.session_id for row in theirs} == {second_session}


async def test_a_failed_send_is_retried_and_nothing_is_lost(
    context: BrowserContext, live: LiveServer
) -> None:
    user = await live.user(Role.viewer)
    page = await open_tracker(context, live, user["token"], flushIntervalMs=200, batchSize=2)
    attempts: list[int] = []

    async def unavailable_once(route: Route) -> None:
        attempts.append(len(events_of(route.request)))
        if len(attempts) == 1:
            await route.fulfill(status=503, json={"detail": "down for a moment"})
        else:
            await route.continue_()

    await page.route(f"{live.base_url}{API}/analytics/user-activities", unavailable_once)
    async with page.expect_response(lambda r: is_batch(r.request) and r.status == 202):
        # Both clicks in one task, so that they are one batch of two: as two page.click
        # calls they were once more than the 200 ms flush interval apart on a busy machine.
        await page.evaluate(
            "document.getElementById('plain-button').click();"
            " document.querySelector('a[data-track=named-link]').click()"
        )

    stored = await activities(live, user["id"], 2)
    assert [row.element_id for row in stored] == ["plain-button", "named-link"]
    assert attempts[:2] == [2, 2]


async def test_hiding_the_tab_sends_the_time_it_was_visible(
    context: BrowserContext, live: LiveServer
) -> None:
    user = await live.user(Role.viewer)
    page = await open_tracker(context, live, user["token"], flushIntervalMs=600_000)
    set_visibility = (
        "(state) => { Object.defineProperty(document, 'visibilityState',"
        " {value: state, configurable: true});"
        " document.dispatchEvent(new Event('visibilitychange')); }"
    )
    await page.wait_for_timeout(150)
    async with page.expect_request(is_batch) as hidden:
        await page.evaluate(set_visibility, "hidden")
    (view,) = events_of(await hidden.value)
    assert view["activity_type"] == "page_view"
    assert view["duration_ms"] >= 150
    assert "resumed" not in view.get("extra_data", {})

    await page.evaluate(set_visibility, "visible")
    async with page.expect_request(is_batch) as hidden_again:
        await page.evaluate(set_visibility, "hidden")
    (resumed,) = events_of(await hidden_again.value)
    assert resumed["extra_data"] == {"resumed": True}
    assert resumed["session_id"] == view["session_id"]

    stored = await activities(live, user["id"], 2)
    assert [row.activity_type for row in stored] == ["page_view", "page_view"]


async def test_events_the_server_refuses_are_dropped_and_the_rest_resent(
    context: BrowserContext, live: LiveServer
) -> None:
    user = await live.user(Role.viewer)
    page = await open_tracker(context, live, user["token"], flushIntervalMs=200, batchSize=2)
    attempts: list[list[str]] = []

    async def refuse_the_second(route: Route) -> None:
        attempts.append([event["element_id"] for event in events_of(route.request)])
        if len(attempts) == 1:
            detail = [{"loc": ["body", "events", 1, "element_id"], "msg": "refused"}]
            await route.fulfill(status=422, json={"detail": detail})
        else:
            await route.continue_()

    await page.route(f"{live.base_url}{API}/analytics/user-activities", refuse_the_second)
    async with page.expect_response(lambda r: is_batch(r.request) and r.status == 202):
        # Both clicks in one task: two separate page.click calls can straddle the 200 ms flush
        # on a busy machine and send the events in two batches.
        await page.evaluate(
            "() => { document.querySelector('#plain-button').click();"
            " document.querySelector('a[data-track=named-link]').click(); }"
        )

    assert attempts == [["plain-button", "named-link"], ["plain-button"]]
    stored = await activities(live, user["id"], 1)
    assert [row.element_id for row in stored] == ["plain-button"]
