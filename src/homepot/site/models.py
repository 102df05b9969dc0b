from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, String, false
from sqlalchemy.orm import Mapped, mapped_column

from homepot.analytics.models import Source, source_of
from homepot.db import Base, utcnow


class Site(Base):
    __tablename__ = "sites"

    site_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # IANA zone; a site's schedule times are local to it.
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    address: Mapped[str | None] = mapped_column(String(500))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # SHA-256 of the key new terminals of this site register with (see homepot.fleet.auth).
    bootstrap_key_hash: Mapped[str | None] = mapped_column(String(64))
    # The bootstrap key registers terminals until then (fleet.bootstrap_key_ttl_hours).
    bootstrap_key_expires_at: Mapped[datetime | None]
    # An admin issued the key to re-register devices that already exist (replacing their
    # keys); a key from an operator only registers new devices.
    bootstrap_key_replaces_devices: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # A store of the simulation: its schedules and configuration changes are "simulated".
    simulated: Mapped[bool] = mapped_column(default=False, server_default=false())

    @property
    def source(self) -> Source:
        """The ``source`` of the analytics rows about this site."""
        return source_of(self.simulated)

    @property
    def config_entity(self) -> tuple[str, str]:
        """How configuration_history names this site."""
        return "site", self.site_id
