"""anomalies: the insights scanner's episodes (one row per contiguous anomaly)

Revision ID: c3a9e1f4b7d2
Revises: 5b1e0c7a9d42
Create Date: 2026-11-30 21:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c3a9e1f4b7d2"
down_revision: str | None = "5b1e0c7a9d42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "anomalies",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("subject", sa.String(length=80), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("site_id", sa.String(length=64), nullable=True),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("detector", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("score", sa.SmallInteger(), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("observed", sa.Float(), nullable=True),
        sa.Column("expected", sa.Float(), nullable=True),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expected_maintenance", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_anomalies")),
        sa.UniqueConstraint(
            "subject",
            "metric",
            "detector",
            "started_at",
            name=op.f("uq_anomalies_subject_metric_detector_started_at"),
        ),
    )
    op.create_index("ix_anomalies_started_at", "anomalies", ["started_at"])
    op.create_index("ix_anomalies_device_id_started_at", "anomalies", ["device_id", "started_at"])
    op.create_index("ix_anomalies_site_id_started_at", "anomalies", ["site_id", "started_at"])
    op.create_index("ix_anomalies_ended_at", "anomalies", ["ended_at"])


def downgrade() -> None:
    op.drop_index("ix_anomalies_ended_at", table_name="anomalies")
    op.drop_index("ix_anomalies_site_id_started_at", table_name="anomalies")
    op.drop_index("ix_anomalies_device_id_started_at", table_name="anomalies")
    op.drop_index("ix_anomalies_started_at", table_name="anomalies")
    op.drop_table("anomalies")
