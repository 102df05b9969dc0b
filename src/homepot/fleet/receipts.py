"""A device message stored as one row is stored once, whenever it is delivered again.

Heartbeats (``health_checks``) and device error reports (``error_logs``) are partitioned by
time on PostgreSQL, so their unique keys hold the timestamp; the server stamps a heartbeat
(and an error report that names no time of its own) when it arrives, so a redelivery (MQTT
QoS 1 after the server was killed, an HTTP resend after a lost answer) has another
timestamp and those keys cannot see it. The message's receipt can:
:func:`first_delivery` inserts it in the transaction that stores the row, and only the
first delivery gets it (homepot.device.models.MessageReceipt).

On PostgreSQL ``message_receipts`` is partitioned by day of ``received_at`` too (a receipt
per heartbeat: ~14 M a day at 5,000 terminals, dropped a day at a time after RECEIPT_DAYS),
and each partition has its own unique index on ``event_id``. Where a receipt is filed:

- **Under the message's own time** when its ``message_id`` is a UUID version 7 (what the
  agent and the simulator send) made within the last RECEIPT_DAYS - 1 days or up to a day
  ahead (:func:`filing_time`): every delivery of the message then lands in the same
  partition, whose unique index alone decides (``ON CONFLICT DO NOTHING``; a concurrent
  delivery waits for the first one's transaction).
- **Under its arrival** otherwise (an older client's ``uuid4``, a clock far off): the
  partitions are searched first (``NOT EXISTS``: an index probe in each of ~12), so that a
  delivery on a later day is still recognised. With the lock below, measured 2.3 times
  PostgreSQL's CPU of the plain table's receipt for a first delivery and 1.5 times for a
  redelivery, against 1.2 and 1.1 times when filed under the message's time
  (benchmarks/receipts.py). Two deliveries of such a message in flight at once could file
  under two days (either side of midnight UTC) where no unique index sees both, so the
  search runs under a transaction-level advisory lock on the id (:func:`_searched`):
  the second delivery waits for the first one's transaction, and its search, a statement
  of its own in READ COMMITTED, then sees the first one's receipt. A message whose id's
  time was a day or more ahead of the server's clock on its first delivery and in range on
  a later one is still stored twice (filed under its arrival, then under its own time).

SQLite keeps one plain table keyed by ``event_id``: there the time does not matter.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningInsert

from homepot.db import utcnow
from homepot.dbdriver import DriverStatement
from homepot.device.models import RECEIPT_DAYS, MessageReceipt
from homepot.kit.ids import uuid7_time

# Built once per dialect, of the table rather than the mapped class: a receipt is taken for
# every heartbeat and device error, and building the statement and passing it through the
# ORM's insert machinery cost more CPU than the round trip.
_RECEIPTS = MessageReceipt.__table__
assert isinstance(_RECEIPTS, Table)

# A message id's own time files its receipt when it lies in this window around the server's
# clock: far enough from both ends that the receipt outlives any redelivery, and its
# partition exists (created 3 days ahead, dropped after RECEIPT_DAYS).
_FILED_UP_TO_AGO = timedelta(days=RECEIPT_DAYS - 1)
_FILED_UP_TO_AHEAD = timedelta(days=1)


def filing_time(message_id: uuid.UUID, now: datetime) -> datetime | None:
    """The time the receipt of ``message_id`` is filed under when the id says it (a UUID
    version 7 made in the window around ``now``); None: file it under its arrival."""
    made = uuid7_time(message_id)
    if made is None or not now - _FILED_UP_TO_AGO <= made <= now + _FILED_UP_TO_AHEAD:
        return None
    return made


def _receipt_postgresql(*, searched: bool) -> ReturningInsert[Any]:
    """INSERT of the receipt (``event_id``, ``received_at``); returns the id when inserted.
    ``searched``: only when no partition holds the id. Both work on a plain table as well."""
    receipts = _RECEIPTS
    assert isinstance(receipts, Table)
    event_id = bindparam("event_id", type_=receipts.c.event_id.type)
    received_at = bindparam("received_at", type_=receipts.c.received_at.type)
    if searched:
        held = receipts.alias("held")
        new = select(event_id, received_at).where(
            ~select(held.c.event_id).where(held.c.event_id == event_id).exists()
        )
        statement = postgresql.insert(receipts).from_select(["event_id", "received_at"], new)
    else:
        statement = postgresql.insert(receipts).values(event_id=event_id, received_at=received_at)
    # No conflict target: the partition's own unique index on event_id decides.
    return statement.on_conflict_do_nothing().returning(receipts.c.event_id)


# The first key of the advisory locks that serialise a message id's searched receipts
# ("HPRC"); homepot.kit.singleton's locks use another first key, so none can wait on these.
RECEIPT_LOCK_NAMESPACE = int.from_bytes(b"HPRC", "big", signed=True)
_ONE_AT_A_TIME = text("SELECT pg_advisory_xact_lock(:namespace, hashtext(:event_id))")


async def _searched(session: AsyncSession, event_id: str, filed_at: datetime | None) -> bool:
    """Whether the receipt of ``event_id`` is taken by searching the partitions (no
    ``filed_at``); if so, first wait until no other transaction is taking one of it (the
    lock is held to the end of this transaction; two ids may share a key: one then waits
    a moment)."""
    if filed_at is not None:
        return False
    await session.execute(
        _ONE_AT_A_TIME, {"namespace": RECEIPT_LOCK_NAMESPACE, "event_id": event_id}
    )
    return True


_FILED = _receipt_postgresql(searched=False)
_SEARCHED = _receipt_postgresql(searched=True)
_SQLITE = (
    sqlite.insert(_RECEIPTS)
    .on_conflict_do_nothing(index_elements=[_RECEIPTS.c.event_id])
    .returning(_RECEIPTS.c.event_id)
)


async def first_delivery(
    session: AsyncSession,
    event_id: str,
    *,
    now: datetime | None = None,
    filed_at: datetime | None = None,
) -> bool:
    """Record the receipt of ``event_id`` in the session's transaction; False when it was
    received before (a redelivery: its row is stored, or is being stored by a transaction
    that has not committed yet, which this one then waits for). ``filed_at``: the message's
    own time (:func:`filing_time`), else the receipt is filed under ``now``."""
    if session.get_bind().dialect.name == "postgresql":
        statement = _SEARCHED if await _searched(session, event_id, filed_at) else _FILED
    else:
        statement = _SQLITE
    received_at = filed_at or now or utcnow()
    new = await session.scalar(statement, {"event_id": event_id, "received_at": received_at})
    return new is not None


class FirstDeliveryInsert:
    """Store a row of ``table`` only on its message's first delivery, taking the receipt in
    the same transaction; :meth:`execute` says whether it was the first.

    On PostgreSQL one statement does both (the receipt's INSERT in a CTE, the row inserted
    from it, so only when the receipt is new): a round trip less for every heartbeat, which
    measured about 0.3 ms less CPU per heartbeat on a busy machine; it runs on the driver's
    connection (homepot.dbdriver), which halved what is left. SQLite cannot put an
    INSERT in a CTE; there it is :func:`first_delivery` and then the row's INSERT.
    The row's values are bound by column name; ``event_id`` names the message and the row.
    """

    def __init__(self, table: Table, columns: tuple[str, ...]) -> None:
        if "event_id" not in columns:
            raise ValueError("the row must carry the message's event_id")
        self._filed = self._combined(table, columns, searched=False)
        self._searched = self._combined(table, columns, searched=True)
        self._insert = insert(table)

    @staticmethod
    def _combined(table: Table, columns: tuple[str, ...], *, searched: bool) -> DriverStatement:
        receipt = _receipt_postgresql(searched=searched).cte("receipt")
        chosen = select(
            *(
                receipt.c.event_id
                if name == "event_id"
                else bindparam(name, type_=table.c[name].type)
                for name in columns
            )
        ).select_from(receipt)
        return DriverStatement(
            insert(table).from_select(list(columns), chosen).returning(table.c.event_id)
        )

    async def execute(
        self,
        session: AsyncSession,
        values: Mapping[str, Any],
        *,
        now: datetime,
        filed_at: datetime | None = None,
    ) -> bool:
        """Insert the row of ``values`` unless its message was received before; True when
        this was the first delivery (the row is inserted). ``filed_at`` as for
        :func:`first_delivery`."""
        if session.get_bind().dialect.name == "postgresql":
            searched = await _searched(session, values["event_id"], filed_at)
            statement = self._searched if searched else self._filed
            stored = await statement.fetchval(session, {**values, "received_at": filed_at or now})
            return stored is not None
        if not await first_delivery(session, values["event_id"], now=now, filed_at=filed_at):
            return False
        await session.execute(self._insert, dict(values))
        return True
