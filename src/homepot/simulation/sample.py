"""The sample fleet: `homepot db init --sample-data` and the history `homepot demo` starts from.

A small seeded fleet (3 sites in three time zones, 12 terminals) lived through the last two
days by the backfill (:mod:`homepot.simulation.backfill`), so that sample data, backfilled
history and the live simulator share one model of schedules, load and faults, and every
analytics row passes the recorder's redaction. The terminals are named and placed as the
live simulator names and places them (``pos-terminal-0001`` ... over ``site-001`` ...):
``homepot demo`` then runs these very terminals live, and their charts go on from their
history.

The set is loaded once: the backfill's marker for the chain (an audit-log entry, resource
``backfill``, id :attr:`SampleFleet.site_prefix`) says it is there, and loading again adds
nothing. Three users act in it and can log in: :data:`DEMO_ADMIN_EMAIL` (admin), an operator
and a viewer, each with a generated password shown once; an e-mail that exists keeps its user
and password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from homepot.auth.service import Credentials, ensure_user_with_generated_password
from homepot.db import create_session_factory, utcnow
from homepot.dbtools import count_rows
from homepot.device.models import Device, DeviceStatus
from homepot.simulation.backfill import BackfillConfig, history_loaded_at, run_backfill
from homepot.simulation.model import deal_terminals, site_ids

# The reserved .example domain (RFC 2606): no real mailbox, yet a valid e-mail for the API.
# (.local is refused by e-mail validation, so such a user could not be read back.)
DEMO_ADMIN_EMAIL: Final = "admin@homepot.example"
SAMPLE_USERS: Final = (
    (DEMO_ADMIN_EMAIL, Role.admin, "Demo Admin"),
    ("operator@homepot.example", Role.operator, "Olivia Operator"),
    ("viewer@homepot.example", Role.viewer, "Victor Viewer"),
)


@dataclass(frozen=True)
class SampleFleet:
    """The fleet of the sample data, and of the demo that runs it on."""

    sites: int = 3
    devices: int = 12
    days: float = 2.0
    seed: int = 1
    site_prefix: str = "site"
    device_prefix: str = "pos-terminal"
    interval_minutes: float = 5.0
    fault_rate: float = 0.5  # faults per terminal per day

    def terminals(self) -> list[tuple[str, str]]:
        """(device_id, site_id) of every terminal."""
        return deal_terminals(
            site_ids(self.site_prefix, self.sites), self.devices, self.device_prefix
        )

    def backfill(self, end: datetime) -> BackfillConfig:
        return BackfillConfig(
            days=self.days,
            sites=self.sites,
            devices=self.devices,
            interval_minutes=self.interval_minutes,
            fault_rate=self.fault_rate,
            seed=self.seed,
            end=end,
            site_prefix=self.site_prefix,
            device_prefix=self.device_prefix,
            always_on=True,  # as the live simulator's terminals, which the demo runs on
        )


@dataclass
class SampleDataResult:
    loaded: bool  # False when the set was already present
    loaded_at: datetime  # when the set was (or had been) loaded
    added: dict[str, int] = field(default_factory=dict)  # rows added per table
    credentials: list[Credentials] = field(default_factory=list)


async def ensure_demo_admin(session: AsyncSession) -> Credentials | None:
    """Create :data:`DEMO_ADMIN_EMAIL` with a generated password unless it exists."""
    _user, credentials = await ensure_user_with_generated_password(
        session, email=DEMO_ADMIN_EMAIL, role=Role.admin
    )
    return credentials


async def loaded_fleet_size(engine: AsyncEngine, site_prefix: str) -> tuple[int, int] | None:
    """(sites, terminals) of the sample fleet loaded into this database, None before."""
    async with engine.connect() as connection:
        details = await connection.scalar(
            select(AuditLog.details)
            .where(AuditLog.resource_type == "backfill", AuditLog.resource_id == site_prefix)
            .limit(1)
        )
    if not isinstance(details, dict):
        return None
    return int(details["sites"]), int(details["devices"])


async def _derive_insights(engine: AsyncEngine, since: datetime, until: datetime) -> None:
    """What the server would have derived from this history: anomaly episodes (a scan over
    it) and each terminal's risk from them, so the insights tables hold real findings."""
    from homepot.insights.scoring import score_from_anomalies
    from homepot.insights.service import scan

    await scan(engine, since, until)
    async with create_session_factory(engine)() as session, session.begin():
        await score_from_anomalies(session, until)


async def load_sample_data(
    engine: AsyncEngine, fleet: SampleFleet | None = None, *, now: datetime | None = None
) -> SampleDataResult:
    """Backfill the sample fleet's history up to ``now`` unless it is there already."""
    fleet = fleet or SampleFleet()
    loaded_at = await history_loaded_at(engine, fleet.site_prefix)
    if loaded_at is not None:
        return SampleDataResult(loaded=False, loaded_at=loaded_at)
    end = (now or utcnow()).astimezone(UTC).replace(microsecond=0)
    async with engine.connect() as connection:
        before = {count.table: count.rows for count in await count_rows(connection)}

    staff: dict[str, list[str]] = {"admin": [], "operator": []}
    credentials = []
    async with create_session_factory(engine)() as session, session.begin():
        for email, role, full_name in SAMPLE_USERS:
            user, created = await ensure_user_with_generated_password(
                session, email=email, role=role, full_name=full_name
            )
            if created is not None:
                credentials.append(created)
            if role.value in staff:
                staff[role.value].append(user.id)
    await run_backfill(engine, fleet.backfill(end), staff=staff)
    # The terminals online at the end went on heartbeating while their history was written
    # (seconds): the watchdog must not find them silent since the history's end.
    device_ids = [device_id for device_id, _site in fleet.terminals()]
    async with engine.begin() as connection:
        await connection.execute(
            update(Device)
            .where(Device.device_id.in_(device_ids), Device.status == DeviceStatus.online)
            .values(last_seen_at=utcnow())
        )

    await _derive_insights(engine, end - timedelta(days=fleet.days), end)

    async with engine.connect() as connection:
        after = await count_rows(connection)
    return SampleDataResult(
        loaded=True,
        loaded_at=end,
        added={count.table: count.rows - before[count.table] for count in after},
        credentials=credentials,
    )
