"""device_risk: each device's failure risk as scored by the insights model

Revision ID: 7c3e9a51d2b4
Revises: c3a9e1f4b7d2
Create Date: 2026-11-30 21:20:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "7c3e9a51d2b4"
down_revision: str | None = "c3a9e1f4b7d2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device_risk",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("horizon_minutes", sa.Integer(), nullable=False),
        sa.Column("risk", sa.Float(), nullable=False),
        sa.Column(
            "factors",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_risk")),
    )
    op.create_index("ix_device_risk_computed_at", "device_risk", ["computed_at"])
    op.create_index(
        "ix_device_risk_device_id_computed_at", "device_risk", ["device_id", "computed_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_device_risk_device_id_computed_at", table_name="device_risk")
    op.drop_index("ix_device_risk_computed_at", table_name="device_risk")
    op.drop_table("device_risk")
