"""anomalies: subject and metric long enough for an API route (metric 'api:<route>')

Revision ID: a7e2c94d1b3f
Revises: d4e8f2a6b1c9
Create Date: 2026-12-01 00:20:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a7e2c94d1b3f"
down_revision: str | None = "d4e8f2a6b1c9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot alter a column in place; PostgreSQL alters it directly.
    with op.batch_alter_table("anomalies") as batch_op:
        batch_op.alter_column(
            "subject", existing_type=sa.String(length=80), type_=sa.String(length=600)
        )
        batch_op.alter_column(
            "metric", existing_type=sa.String(length=32), type_=sa.String(length=520)
        )


def downgrade() -> None:
    # Route episodes do not fit the old widths: they go first.
    op.execute("DELETE FROM anomalies WHERE metric LIKE 'api:%'")
    with op.batch_alter_table("anomalies") as batch_op:
        batch_op.alter_column(
            "metric", existing_type=sa.String(length=520), type_=sa.String(length=32)
        )
        batch_op.alter_column(
            "subject", existing_type=sa.String(length=600), type_=sa.String(length=80)
        )
