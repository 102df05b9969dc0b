"""The operators' dashboard: HTML shells rendered from templates.

Pages carry no data and need no login to load: their scripts call the JSON API with the
bearer token kept in the browser, and go to /login when there is none. So every rule about
who may read or change what lives in the API, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Path as PathParam
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from homepot.kit.routing import api_router

WEB_DIR = Path(__file__).parent
STATIC_DIR = WEB_DIR / "static"
templates = Jinja2Templates(directory=WEB_DIR / "templates")

router = api_router(include_in_schema=False, default_response_class=HTMLResponse)

# Any text: an id that does not exist is the API's 404, shown by the page's script.
PublicId = Annotated[str, PathParam(min_length=1)]


@dataclass(frozen=True)
class NavLink:
    href: str
    label: str
    section: str
    admin_only: bool = False


NAV_LINKS = (
    NavLink("/", "Overview", "overview"),
    NavLink("/sites", "Sites", "sites"),
    NavLink("/devices", "Devices", "devices"),
    NavLink("/jobs", "Jobs", "jobs"),
    NavLink("/errors", "Errors", "errors"),
    NavLink("/insights", "Insights", "insights"),
    NavLink("/analytics", "Analytics", "analytics", admin_only=True),
)


def _page(
    request: Request, template: str, title: str, section: str, **context: object
) -> HTMLResponse:
    # Each template has a page script of its name: static/page-<template>.js.
    script = f"/static/page-{template.removesuffix('.html')}.js"
    return templates.TemplateResponse(
        request,
        template,
        {
            "title": title,
            "section": section,
            "script": script,
            "nav_links": NAV_LINKS,
            **context,
        },
    )


@router.get("/login")
async def login_page(request: Request) -> HTMLResponse:
    return _page(request, "login.html", "Sign in", "login")


@router.get("/")
async def overview_page(request: Request) -> HTMLResponse:
    return _page(request, "overview.html", "Fleet overview", "overview")


@router.get("/sites")
async def sites_page(request: Request) -> HTMLResponse:
    return _page(request, "sites.html", "Sites", "sites")


@router.get("/sites/{site_id}")
async def site_page(request: Request, site_id: PublicId) -> HTMLResponse:
    return _page(request, "site.html", f"Site {site_id}", "sites", site_id=site_id)


@router.get("/devices")
async def devices_page(request: Request) -> HTMLResponse:
    return _page(request, "devices.html", "Devices", "devices")


@router.get("/devices/{device_id}")
async def device_page(request: Request, device_id: PublicId) -> HTMLResponse:
    return _page(request, "device.html", f"Device {device_id}", "devices", device_id=device_id)


@router.get("/jobs")
async def jobs_page(request: Request) -> HTMLResponse:
    return _page(request, "jobs.html", "Jobs", "jobs")


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: PublicId) -> HTMLResponse:
    return _page(request, "job.html", f"Job {job_id}", "jobs", job_id=job_id)


@router.get("/errors")
async def errors_page(request: Request) -> HTMLResponse:
    return _page(request, "errors.html", "Errors", "errors")


@router.get("/analytics")
async def analytics_page(request: Request) -> HTMLResponse:
    return _page(request, "analytics.html", "Analytics", "analytics")


@router.get("/insights")
async def insights_page(request: Request) -> HTMLResponse:
    return _page(request, "insights.html", "Insights", "insights")
