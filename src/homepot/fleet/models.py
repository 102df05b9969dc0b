"""What the fleet package keeps in the database besides devices: the MQTT sessions of the
uplink's share group (homepot.fleet.mqtt_orphans)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from homepot.db import Base, utcnow


class MqttSession(Base):
    """A persistent MQTT session a server process read the uplink with, on one broker.

    Written when a bridge connects (and refreshed while it runs). The broker keeps the session
    after the process stops, and it stays a member of the shared subscription: the broker
    goes on giving it its round-robin share of the device messages, queued for nobody. A
    live process that finds a recorded session whose process is gone drains it and ends it
    (homepot.fleet.mqtt_orphans), then deletes its row.
    """

    __tablename__ = "mqtt_sessions"

    client_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # "host:port" as the server's broker URL names it: sessions live in one broker.
    broker: Mapped[str] = mapped_column(String(300), primary_key=True)
    share_group: Mapped[str] = mapped_column(String(64))
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)
