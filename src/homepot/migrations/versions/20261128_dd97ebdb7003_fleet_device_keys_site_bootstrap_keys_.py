"""fleet: device keys, site bootstrap keys, job executions

Revision ID: dd97ebdb7003
Revises: 242fd5d5924b
Create Date: 2026-11-28 08:37:45.432351+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "dd97ebdb7003"
down_revision: str | None = "242fd5d5924b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_executions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "dispatched",
                "running",
                "success",
                "failed",
                "timeout",
                "cancelled",
                name="executionstatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivery", sa.String(length=8), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column(
            "result",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.device_id"],
            name=op.f("fk_job_executions_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.job_id"],
            name=op.f("fk_job_executions_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_executions")),
        sa.UniqueConstraint("job_id", "device_id", name=op.f("uq_job_executions_job_id_device_id")),
    )
    with op.batch_alter_table("job_executions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_job_executions_device_id_status", ["device_id", "status"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_job_executions_job_id"), ["job_id"], unique=False)
        batch_op.create_index(
            "ix_job_executions_status_not_before", ["status", "not_before"], unique=False
        )

    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agent_version", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("api_key_hash", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_devices_api_key_hash"), ["api_key_hash"])

    with op.batch_alter_table("sites", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bootstrap_key_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sites", schema=None) as batch_op:
        batch_op.drop_column("bootstrap_key_hash")

    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_devices_api_key_hash"), type_="unique")
        batch_op.drop_column("api_key_hash")
        batch_op.drop_column("agent_version")

    with op.batch_alter_table("job_executions", schema=None) as batch_op:
        batch_op.drop_index("ix_job_executions_status_not_before")
        batch_op.drop_index(batch_op.f("ix_job_executions_job_id"))
        batch_op.drop_index("ix_job_executions_device_id_status")

    op.drop_table("job_executions")
