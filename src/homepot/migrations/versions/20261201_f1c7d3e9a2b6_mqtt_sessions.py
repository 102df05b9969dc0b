"""The uplink's MQTT sessions: mqtt_sessions

Each server process reads the device uplink through a persistent MQTT session that is a
member of a shared subscription; the broker keeps giving a session its share after its
process has stopped. The sessions a group used are recorded here, so that a live process can
find those nobody reads, drain them and end them (homepot.fleet.mqtt_orphans).

Revision ID: f1c7d3e9a2b6
Revises: b8f4a2d6e1c5
Create Date: 2026-12-01 06:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f1c7d3e9a2b6"
down_revision: str | None = "b8f4a2d6e1c5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mqtt_sessions",
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("broker", sa.String(length=300), nullable=False),
        sa.Column("share_group", sa.String(length=64), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "broker", name=op.f("pk_mqtt_sessions")),
    )


def downgrade() -> None:
    op.drop_table("mqtt_sessions")
