"""users: analytics_opt_out, the per-user "Don't track my activity" choice

Revision ID: a54107e9f712
Revises: dd97ebdb7003
Create Date: 2026-11-28 10:40:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a54107e9f712"
down_revision: str | None = "dd97ebdb7003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot alter a table in place; PostgreSQL alters it directly.
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(
            sa.Column("analytics_opt_out", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("analytics_opt_out")
