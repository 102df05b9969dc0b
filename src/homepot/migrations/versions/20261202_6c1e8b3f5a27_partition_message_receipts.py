"""message_receipts partitioned by day on PostgreSQL

A receipt is written for every heartbeat (2,880 a terminal a day at a 30 s interval: ~14 M a
day at 5,000 terminals) and kept RECEIPT_DAYS (8) days, and retention deleted the expired
ones row by row: the last table growing with the heartbeat rate that did. On PostgreSQL it
becomes a native range partition by ``received_at``, one partition a day and a default one,
converted as the other tables were (a partitioned table built beside the old one, the rows
copied, the old table dropped); retention then drops a day's receipts whole.

A unique key over all partitions must hold the partition column, so the primary key becomes
``(event_id, received_at)``, and each partition (the default one too) has its own unique
index on ``event_id``, which makes a concurrent delivery of the same message wait for the
first. A receipt is filed under the message's own time when its id is a UUID version 7, so
that every delivery lands in one partition; otherwise under its arrival, after a search of
the partitions (homepot.fleet.receipts).

SQLite keeps the plain table.

Revision ID: 6c1e8b3f5a27
Revises: f1c7d3e9a2b6
Create Date: 2026-12-02 13:40:00.000000+00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "6c1e8b3f5a27"
down_revision: str | None = "f1c7d3e9a2b6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_AHEAD_DAYS = 3


def _literal(moment: datetime) -> str:
    return f"'{moment.astimezone(UTC).isoformat()}'"


def _partition(parent: str, name: str, bounds: str) -> None:
    op.execute(f"CREATE TABLE {name} PARTITION OF {parent} {bounds}")
    op.execute(f"CREATE UNIQUE INDEX {name}_event_id_key ON {name} (event_id)")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Periods are UTC days, whatever the server's time zone.
    op.execute("SET LOCAL TIME ZONE 'UTC'")
    build = "message_receipts__partitioned"
    op.execute(
        f"CREATE TABLE {build} (LIKE message_receipts INCLUDING DEFAULTS) "
        "PARTITION BY RANGE (received_at)"
    )
    rows = op.get_bind().execute(
        sa.text("SELECT DISTINCT date_trunc('day', received_at) FROM message_receipts")
    )
    starts = {start.astimezone(UTC) for (start,) in rows}
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    starts |= {today + timedelta(days=i) for i in range(_AHEAD_DAYS + 1)}
    _partition(build, "message_receipts_default", "DEFAULT")
    for start in sorted(starts):
        _partition(
            build,
            f"message_receipts_p{start:%Y%m%d}",
            f"FOR VALUES FROM ({_literal(start)}) TO ({_literal(start + timedelta(days=1))})",
        )
    op.execute(f"INSERT INTO {build} SELECT * FROM message_receipts")
    op.execute("DROP TABLE message_receipts")
    op.execute(f"ALTER TABLE {build} RENAME TO message_receipts")
    op.execute(
        "ALTER TABLE message_receipts ADD CONSTRAINT pk_message_receipts "
        "PRIMARY KEY (event_id, received_at)"
    )
    op.create_index("ix_message_receipts_received_at", "message_receipts", ["received_at"])


def downgrade() -> None:
    """Back to one plain table keyed by ``event_id``; a message received twice across
    midnight (two receipts, see homepot.fleet.receipts) keeps its latest receipt."""
    if op.get_bind().dialect.name != "postgresql":
        return
    build = "message_receipts__plain"
    op.execute(f"CREATE TABLE {build} (LIKE message_receipts INCLUDING DEFAULTS)")
    op.execute(
        f"INSERT INTO {build} SELECT DISTINCT ON (event_id) * FROM message_receipts "
        "ORDER BY event_id, received_at DESC"
    )
    op.execute("DROP TABLE message_receipts")
    op.execute(f"ALTER TABLE {build} RENAME TO message_receipts")
    op.execute(
        "ALTER TABLE message_receipts ADD CONSTRAINT pk_message_receipts PRIMARY KEY (event_id)"
    )
    op.create_index("ix_message_receipts_received_at", "message_receipts", ["received_at"])
