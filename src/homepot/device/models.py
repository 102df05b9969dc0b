from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Enum, Float, ForeignKey, Index, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from homepot.analytics.models import Source, source_of
from homepot.db import Base, BigIntId, utcnow


class DeviceStatus(enum.StrEnum):
    online = "online"
    offline = "offline"
    error = "error"
    maintenance = "maintenance"
    updating = "updating"


class Device(Base):
    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("sites.site_id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    device_type: Mapped[str] = mapped_column(String(64), default="pos_terminal", index=True)
    status: Mapped[DeviceStatus] = mapped_column(
        Enum(DeviceStatus, native_enum=False, length=16, validate_strings=True),
        default=DeviceStatus.offline,
        index=True,
    )
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    firmware_version: Mapped[str | None] = mapped_column(String(64))
    agent_version: Mapped[str | None] = mapped_column(String(64))
    # SHA-256 of the device's API key: one indexed lookup authenticates a request.
    api_key_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # When an admin revoked the device's key: only an admin's approval registers it again.
    key_revoked_at: Mapped[datetime | None]
    ip_address: Mapped[str | None] = mapped_column(String(45))
    last_seen_at: Mapped[datetime | None]
    # The id of its newest combined report (POST /api/v1/agent/report): a resend of it
    # does not store its heartbeat twice.
    last_report_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # A terminal of the simulation (its registration said so): every analytics row about it
    # is recorded with source "simulated".
    simulated: Mapped[bool] = mapped_column(default=False, server_default=false())

    @property
    def source(self) -> Source:
        """The ``source`` of the analytics rows this device produces."""
        return source_of(self.simulated)

    @property
    def config_entity(self) -> tuple[str, str]:
        """How configuration_history names this device."""
        return "device", self.device_id


class HealthCheck(Base):
    __tablename__ = "health_checks"
    __table_args__ = (
        # With the partition column: health_checks is partitioned by day on PostgreSQL. A
        # heartbeat delivered twice is kept out by its MessageReceipt, not by this key (the
        # server stamps a heartbeat with its arrival, so a redelivery has another timestamp).
        UniqueConstraint("event_id", "timestamp"),
        Index("ix_health_checks_device_id_timestamp", "device_id", "timestamp"),
        # Retention deletes by age across all devices.
        Index("ix_health_checks_timestamp", "timestamp"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("devices.device_id", ondelete="CASCADE")
    )
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(32))
    response_time_ms: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any] | None]
    # The heartbeat's own id (device-scoped, see protocol.messages.device_event_id): a
    # heartbeat delivered twice is stored once (see MessageReceipt). NULL for rows written
    # before it existed.
    event_id: Mapped[str | None] = mapped_column(String(32))


# How long a receipt is kept: far longer than any redelivery. An MQTT broker redelivers
# what the server had not acknowledged when it reconnects (minutes, hours after an outage);
# the agent resends from its outbox, which keeps at most a week (protocol.messages
# MAX_SAMPLE_AGE: 8 days). A message delivered again after this is stored again.
RECEIPT_DAYS = 8


class MessageReceipt(Base):
    """That a device message stored as one row was received: its event id and when.

    Heartbeats (and device error reports without the device's own time) are stamped by the
    server when they arrive, so a redelivered one has another timestamp; the tables holding
    them are partitioned by time, whose unique keys must include the timestamp, so the key
    ``(event_id, timestamp)`` cannot see the redelivery. This small, plain table can: the
    receipt is inserted in the transaction that stores the row (``ON CONFLICT DO NOTHING
    RETURNING``), and a message whose receipt exists is not stored again. Retention drops
    receipts after RECEIPT_DAYS (homepot.retention.policy).

    On PostgreSQL the table is partitioned by day of ``received_at`` (as many rows as
    heartbeats; retention drops a day whole): the primary key there is ``(event_id,
    received_at)``, and each partition has its own unique index on ``event_id``.
    ``received_at`` is the time the receipt is filed under: the message's own time when its
    id is a UUID version 7 (every delivery then lands in the same partition), else its
    arrival, and the partitions are searched first (homepot.fleet.receipts). SQLite keeps
    this plain table, keyed by ``event_id``.
    """

    __tablename__ = "message_receipts"
    __table_args__ = (Index("ix_message_receipts_received_at", "received_at"),)

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
