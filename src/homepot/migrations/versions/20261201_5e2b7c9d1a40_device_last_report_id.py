"""devices.last_report_id: the report id of the device's newest combined report

POST /api/v1/agent/report carries a client-generated report id; a resent report (the same
id) does not store its heartbeat a second time.

Revision ID: 5e2b7c9d1a40
Revises: a7e2c94d1b3f
Create Date: 2026-12-01 00:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5e2b7c9d1a40"
down_revision: str | None = "a7e2c94d1b3f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot alter a table in place; PostgreSQL alters it directly.
    with op.batch_alter_table("devices") as batch_op:
        batch_op.add_column(sa.Column("last_report_id", sa.String(length=36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch_op:
        batch_op.drop_column("last_report_id")
