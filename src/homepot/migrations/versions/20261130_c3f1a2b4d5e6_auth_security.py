"""Fail-closed security: token revocation, expiring bootstrap keys, device key revocation

users.token_generation: raised by logout, disabling and role changes; tokens carrying an
older value are refused. sites.bootstrap_key_expires_at: when the site's bootstrap key stops
registering terminals; sites.bootstrap_key_replaces_devices: the key was issued by an admin
to re-register devices that already exist. devices.key_revoked_at: an admin revoked the
device's key; only an admin's approval registers it again.

Revision ID: c3f1a2b4d5e6
Revises: bfdf58ed6f97
Create Date: 2026-11-30 21:00:00.000000+00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "c3f1a2b4d5e6"
down_revision: str | None = "bfdf58ed6f97"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot alter a table in place; PostgreSQL alters it directly.
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(
            sa.Column("token_generation", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
    with op.batch_alter_table("sites") as batch_op:
        batch_op.add_column(
            sa.Column("bootstrap_key_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "bootstrap_key_replaces_devices",
                sa.Boolean(),
                server_default=sa.false(),
                nullable=False,
            )
        )
    with op.batch_alter_table("devices") as batch_op:
        batch_op.add_column(sa.Column("key_revoked_at", sa.DateTime(timezone=True), nullable=True))
    # Keys issued before keys expired keep working for one more default lifetime (24 h).
    sites = sa.table(
        "sites",
        sa.column("bootstrap_key_hash", sa.String()),
        sa.column("bootstrap_key_expires_at", sa.DateTime(timezone=True)),
    )
    expires = datetime.now(UTC) + timedelta(hours=24)
    if op.get_bind().dialect.name == "sqlite":
        expires = expires.replace(tzinfo=None)  # stored as naive UTC (homepot.db.UTCDateTime)
    op.execute(
        sites.update()
        .where(sites.c.bootstrap_key_hash.is_not(None))
        .values(bootstrap_key_expires_at=expires)
    )


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch_op:
        batch_op.drop_column("key_revoked_at")
    with op.batch_alter_table("sites") as batch_op:
        batch_op.drop_column("bootstrap_key_replaces_devices")
        batch_op.drop_column("bootstrap_key_expires_at")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("token_generation")
