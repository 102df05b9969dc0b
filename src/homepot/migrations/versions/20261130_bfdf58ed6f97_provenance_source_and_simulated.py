"""provenance: a source column (device or simulated) on the analytics tables, simulated flags

Every analytics table gets ``source`` (not null, default ``device``), so that simulated rows
can be told from real ones; the seven event tables get an index on (source, timestamp), since
every analytics query can filter on it and pages are read by time. ``site_operating_schedules``
is small configuration and gets no index. ``devices.simulated`` and ``sites.simulated`` mark
the simulation's terminals and stores. Rows that exist already are taken as ``device``.

Revision ID: bfdf58ed6f97
Revises: 7c3e9a51d2b4
Create Date: 2026-11-30 21:10:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "bfdf58ed6f97"
down_revision: str | None = "7c3e9a51d2b4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENT_TABLES = (
    "api_request_logs",
    "device_state_history",
    "job_outcomes",
    "error_logs",
    "user_activities",
    "device_metrics",
    "configuration_history",
)
FLAGGED_TABLES = ("devices", "sites")


def upgrade() -> None:
    # batch_alter_table: SQLite cannot alter a table in place; PostgreSQL alters it directly.
    for table in (*EVENT_TABLES, "site_operating_schedules"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(
                sa.Column("source", sa.String(length=16), server_default="device", nullable=False)
            )
    for table in EVENT_TABLES:
        op.create_index(f"ix_{table}_source_timestamp", table, ["source", "timestamp"])
    for table in FLAGGED_TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(
                sa.Column("simulated", sa.Boolean(), server_default=sa.false(), nullable=False)
            )


def downgrade() -> None:
    for table in FLAGGED_TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("simulated")
    for table in EVENT_TABLES:
        op.drop_index(f"ix_{table}_source_timestamp", table_name=table)
    for table in (*EVENT_TABLES, "site_operating_schedules"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("source")
