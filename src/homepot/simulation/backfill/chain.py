"""The chain of stores: their sites, weekly schedules and terminals, when the terminals take
firmware, and the stores' payment gateways.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from homepot.analytics.models import SIMULATED, SiteOperatingSchedule
from homepot.device.models import DeviceStatus
from homepot.simulation.backfill.config import AGENT_USER_AGENT, FIRMWARE_OLD
from homepot.simulation.backfill.history import History, Row, Terminal
from homepot.simulation.gateways import outage_rate, plan_store_gateway
from homepot.simulation.model import (
    SITE_TIMEZONES,
    DaySchedule,
    SiteProfile,
    TerminalModel,
    deal_terminals,
    default_week,
    site_ids,
)
from homepot.site.models import Site


def build_chain(history: History) -> list[tuple[SiteProfile, list[Terminal]]]:
    """The stores in their time zones, each with its week (volumes scaled per store) and its
    terminals."""
    config = history.config
    chain: list[tuple[SiteProfile, list[Terminal]]] = []
    ids = site_ids(config.site_prefix, config.sites)
    dealt: dict[str, list[str]] = {site_id: [] for site_id in ids}
    if config.device_prefix is not None:
        for device_id, site_id in deal_terminals(ids, config.devices, config.device_prefix):
            dealt[site_id].append(device_id)
    for number, site_id in enumerate(ids):
        timezone = SITE_TIMEZONES[number % len(SITE_TIMEZONES)]
        scale = history.rng.uniform(0.6, 1.6)
        week = tuple(
            DaySchedule(
                day.open_time,
                day.close_time,
                day.is_closed,
                day.peak_start,
                day.peak_end,
                round(day.expected_volume * scale),
                day.is_maintenance_window,
            )
            for day in default_week(number)
        )
        site = SiteProfile(site_id, timezone, week)
        # Terminals are dealt round-robin, so sites differ by one at most.
        tills = config.devices // config.sites + (number < config.devices % config.sites)
        names = dealt[site_id] or [f"{site_id}-pos-{till}" for till in range(1, tills + 1)]
        terminals = []
        for till, device_id in enumerate(names, start=1):
            model = TerminalModel(
                device_id, site, tills, random.Random(f"{config.seed}/{device_id}")
            )
            ip = f"10.{number // 250}.{number % 250}.{10 + till}"
            terminals.append(Terminal(device_id, site, model, ip))
        chain.append((site, terminals))
    return chain


def write_site(history: History, site: SiteProfile, number: int, terminals: list[Terminal]) -> None:
    """The store's site row and its weekly schedule, opened long before the window."""
    opened = history.start - timedelta(days=90)
    history.add_core(
        Site,
        {
            "site_id": site.site_id,
            "name": f"Store {number + 1:03d} ({_city(site.timezone)})",
            "timezone": site.timezone,
            "address": None,
            "config": {"receipt_footer": "Thank you!", "price_table_version": "pt-0"},
            "created_at": opened,
            "updated_at": opened,
            "simulated": True,
        },
    )
    for weekday, day in enumerate(site.days):
        history.add_core(
            SiteOperatingSchedule,
            {
                "site_id": site.site_id,
                "day_of_week": weekday,
                "open_time": day.open_time,
                "close_time": day.close_time,
                "is_closed": day.is_closed,
                "is_maintenance_window": day.is_maintenance_window,
                "expected_transaction_volume": day.expected_volume,
                "peak_hours_start": day.peak_start,
                "peak_hours_end": day.peak_end,
                "notes": "Closed" if day.is_closed else "Regular trading day",
                "special_considerations": {"maintenance_window": True}
                if day.is_maintenance_window
                else None,
                "created_at": opened,
                "updated_at": opened,
                "source": SIMULATED,
            },
        )


def firmware_windows(history: History, site: SiteProfile, number: int) -> list[datetime]:
    """When the site's terminals take the firmware update: in the maintenance window,
    25 minutes before opening, on every other site."""
    if number % 2:
        return []
    zone = ZoneInfo(site.timezone)
    first = history.start.astimezone(zone).date()
    windows = []
    for offset in range(int(history.config.days) + 2):
        local_day = first + timedelta(days=offset)
        day = site.day(local_day.weekday())
        if not day.is_maintenance_window or day.is_closed or day.open_time is None:
            continue
        opening = datetime.combine(local_day, day.open_time, zone).astimezone(UTC)
        window = opening - timedelta(minutes=25)
        if history.start <= window < history.end:
            windows.append(window)
    return windows


def plan_gateways(history: History, site: SiteProfile, terminals: list[Terminal]) -> None:
    """The store's gateway outages (faults of its terminals, planned ahead) and slow
    spells (trouble of every terminal)."""
    if not terminals:
        return
    store = plan_store_gateway(
        history.gateway_rng,
        site.site_id,
        [terminal.device_id for terminal in terminals],
        start=history.start,
        end=history.end,
        step=history.step,
        open_at=lambda moment: history.powered(site, moment),
        outages_per_day=outage_rate(history.config.fault_rate, history.gateway_share),
    )
    for terminal in terminals:
        terminal.gateway = store.gateway
        terminal.planned = store.faults[terminal.device_id]
        terminal.model.disturbances = list(store.spells)


def device_row(terminal: Terminal, start: datetime, end: datetime) -> Row:
    """The terminal's device row as the window ``[start, end)`` leaves it."""
    created = start - timedelta(days=60)
    # An online terminal heartbeats every 30 s between its samples: it was seen at the end.
    last_sample = terminal.samples[-1]["timestamp"] if terminal.samples else None
    last_seen = end if terminal.state == "online" else last_sample
    return {
        "device_id": terminal.device_id,
        "site_id": terminal.site.site_id,
        "name": f"{terminal.site.site_id} till {terminal.device_id.rsplit('-', 1)[-1]}",
        "device_type": terminal.model.device_type,
        "status": DeviceStatus(terminal.state),
        "config": {"config_version": FIRMWARE_OLD, "receipt_printer": True},
        "firmware_version": terminal.firmware,
        "agent_version": AGENT_USER_AGENT.split("/")[1],
        "ip_address": terminal.ip_address,
        "last_seen_at": last_seen,
        "created_at": created,
        "updated_at": created,
        "simulated": True,
    }


def _city(timezone: str) -> str:
    return timezone.split("/")[-1].replace("_", " ")
