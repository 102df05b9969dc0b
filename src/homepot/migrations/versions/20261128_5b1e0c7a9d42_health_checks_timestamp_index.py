"""health_checks: an index on timestamp, so that retention finds old rows without a scan

Revision ID: 5b1e0c7a9d42
Revises: a54107e9f712
Create Date: 2026-11-28 11:10:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5b1e0c7a9d42"
down_revision: str | None = "a54107e9f712"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_health_checks_timestamp", "health_checks", ["timestamp"])


def downgrade() -> None:
    op.drop_index("ix_health_checks_timestamp", table_name="health_checks")
