"""Heartbeats stored once: health_checks.event_id

A heartbeat's own id (device-scoped, from the message id the device sets), unique, so that a
heartbeat delivered twice (an MQTT redelivery after the server was killed, an HTTP resend)
is stored once (INSERT ... ON CONFLICT DO NOTHING). Rows written before stay NULL.

Revision ID: d4e8f2a6b1c9
Revises: c3f1a2b4d5e6
Create Date: 2026-12-01 00:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d4e8f2a6b1c9"
down_revision: str | None = "c3f1a2b4d5e6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot alter a table in place; PostgreSQL alters it directly.
    with op.batch_alter_table("health_checks") as batch_op:
        batch_op.add_column(sa.Column("event_id", sa.String(length=32), nullable=True))
        batch_op.create_unique_constraint("uq_health_checks_event_id", ["event_id"])


def downgrade() -> None:
    with op.batch_alter_table("health_checks") as batch_op:
        batch_op.drop_constraint("uq_health_checks_event_id", type_="unique")
        batch_op.drop_column("event_id")
