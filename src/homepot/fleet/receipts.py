"""A device message stored as one row is stored once, whenever it is delivered again.

Heartbeats (``health_checks``) and device error reports (``error_logs``) are partitioned by
time on PostgreSQL, so their unique keys hold the timestamp; the server stamps a heartbeat
(and an error report that names no time of its own) when it arrives, so a redelivery (MQTT
QoS 1 after the server was killed, an HTTP resend after a lost answer) has another
timestamp and those keys cannot see it. The message's receipt can:
:func:`first_delivery` inserts it in the transaction that stores the row, and only the
first delivery gets it (homepot.device.models.MessageReceipt).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.db import utcnow
from homepot.device.models import MessageReceipt

# Built once per dialect, of the table rather than the mapped class: a receipt is taken for
# every heartbeat and device error, and building the statement and passing it through the
# ORM's insert machinery cost more CPU than the round trip.
_RECEIPTS = MessageReceipt.__table__
assert isinstance(_RECEIPTS, Table)
_INSERT_RECEIPT = {
    name: insert(_RECEIPTS)
    .on_conflict_do_nothing(index_elements=[_RECEIPTS.c.event_id])
    .returning(_RECEIPTS.c.event_id)
    for name, insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}


async def first_delivery(
    session: AsyncSession, event_id: str, *, now: datetime | None = None
) -> bool:
    """Record the receipt of ``event_id`` in the session's transaction; False when it was
    received before (a redelivery: its row is stored, or is being stored by a transaction
    that has not committed yet, which this one then waits for)."""
    statement = _INSERT_RECEIPT[session.get_bind().dialect.name]
    new = await session.scalar(statement, {"event_id": event_id, "received_at": now or utcnow()})
    return new is not None
