"""Recommended maintenance windows for one site, as the API serves them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from homepot.insights.schemas import (
    MaintenanceWindowAdvice,
    MaintenanceWindowQuery,
    MaintenanceWindowRead,
    day_name,
    window_read,
)
from homepot.site import service as site_service
from homepot.site.recommended import site_recommendations


async def maintenance_windows(
    session: AsyncSession, params: MaintenanceWindowQuery, now: datetime
) -> MaintenanceWindowAdvice:
    """Raises SiteNotFound for an unknown site."""
    site = await site_service.get_site(session, params.site_id)
    schedules = await site_service.list_schedules(session, site)
    advice = await site_recommendations(
        session,
        site_id=site.site_id,
        timezone=site.timezone,
        schedules=schedules,
        now=now,
        duration_minutes=params.duration_minutes,
        lookback_days=params.lookback_days,
    )
    return MaintenanceWindowAdvice(
        site_id=site.site_id,
        timezone=site.timezone,
        duration_minutes=params.duration_minutes,
        lookback_days=params.lookback_days,
        computed_at=now,
        items=[
            MaintenanceWindowRead(
                weekday=item.weekday,
                day_name=day_name(item.weekday),
                recommended=window_read(item.window),
                inside_closed_hours=item.inside_closed_hours,
                basis_days=item.basis_days,
                declared=window_read(item.declared),
                transactions_saved=item.transactions_saved,
            )
            for item in advice
        ],
    )
