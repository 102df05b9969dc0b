"""health_checks and error_logs partitioned on PostgreSQL; message_receipts

On PostgreSQL, health_checks (daily: a heartbeat per terminal per interval, as many rows as
device_metrics) and error_logs (weekly: errors are few) become native range partitions by
``timestamp``, each with a default partition, converted as the earlier tables were
(20261201_e4d2c9a1b7f3): a partitioned table built beside the old one with its columns and
defaults, partitions for every period holding rows and the next few, the rows copied, the id
sequence handed over, the old table dropped, keys, indexes (and health_checks' foreign key
to devices) recreated. Their unique keys become ``(event_id, timestamp)``.

A heartbeat, and an error report naming no time of its own, is stamped by the server when
it arrives, so that key cannot see a redelivery: ``message_receipts`` (new, plain on both
databases) can. Receipts are written for the rows of the last RECEIPT_DAYS (8) days that
carry an event id, so that a message delivered again right after the upgrade is still
recognised.

SQLite keeps plain tables; only the unique keys change there (to what the models say).

Revision ID: b8f4a2d6e1c5
Revises: e4d2c9a1b7f3
Create Date: 2026-12-01 03:30:00.000000+00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "b8f4a2d6e1c5"
down_revision: str | None = "e4d2c9a1b7f3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table, period
_CONVERTED = (("health_checks", "day"), ("error_logs", "week"))
_AHEAD = {"day": 3, "week": 2}
_LENGTH = {"day": timedelta(days=1), "week": timedelta(days=7)}
_RECEIPT_DAYS = 8
_FOREIGN_KEYS = {
    "health_checks": "ALTER TABLE health_checks ADD CONSTRAINT "
    "fk_health_checks_device_id_devices FOREIGN KEY (device_id) "
    "REFERENCES devices (device_id) ON DELETE CASCADE",
}


def _literal(moment: datetime) -> str:
    return f"'{moment.astimezone(UTC).isoformat()}'"


def _start_of(moment: datetime, period: str) -> datetime:
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday()) if period == "week" else day


def _periods_with_rows(table: str, period: str) -> set[datetime]:
    rows = op.get_bind().execute(
        sa.text(f"SELECT DISTINCT date_trunc('{period}', \"timestamp\") FROM {table}")
    )
    return {start.astimezone(UTC) for (start,) in rows}


def _create_partitions(parent: str, prefix: str, period: str, starts: set[datetime]) -> None:
    first = _start_of(datetime.now(UTC), period)
    starts = starts | {first + i * _LENGTH[period] for i in range(_AHEAD[period] + 1)}
    op.execute(f"CREATE TABLE {prefix}_default PARTITION OF {parent} DEFAULT")
    for start in sorted(starts):
        op.execute(
            f"CREATE TABLE {prefix}_p{start:%Y%m%d} PARTITION OF {parent} FOR VALUES FROM "
            f"({_literal(start)}) TO ({_literal(start + _LENGTH[period])})"
        )


def _schema() -> str:
    return str(op.get_bind().scalar(sa.text("SELECT current_schema()")))


def _secondary_indexes(table: str) -> list[str]:
    rows = op.get_bind().execute(
        sa.text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :table "
            "AND schemaname = current_schema()"
        ),
        {"table": table},
    )
    return [definition for name, definition in rows if not name.startswith(("pk_", "uq_"))]


def _swap_in(table: str, build: str, key_columns: str, unique_columns: str) -> None:
    """Copy ``table`` into the new table ``build``, drop the old one and take its name,
    keys, indexes, foreign key and id sequence."""
    indexes = _secondary_indexes(table)
    op.execute(f"INSERT INTO {build} SELECT * FROM {table}")
    op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY NONE")
    op.execute(f"DROP TABLE {table}")
    op.execute(f"ALTER TABLE {build} RENAME TO {table}")
    op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({key_columns})")
    name = "uq_" + table + "_" + unique_columns.replace('"', "").replace(", ", "_")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE ({unique_columns})")
    for definition in indexes:
        op.execute(definition.replace(f" ON {_schema()}.{table} ", f" ON {table} "))
    if table in _FOREIGN_KEYS:
        op.execute(_FOREIGN_KEYS[table])


def _create_receipts() -> None:
    op.create_table(
        "message_receipts",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_message_receipts")),
    )
    op.create_index("ix_message_receipts_received_at", "message_receipts", ["received_at"])
    since = datetime.now(UTC) - timedelta(days=_RECEIPT_DAYS)
    for table in ("health_checks", "error_logs"):
        op.get_bind().execute(
            sa.text(
                "INSERT INTO message_receipts (event_id, received_at) "
                f'SELECT event_id, max("timestamp") FROM {table} '
                'WHERE event_id IS NOT NULL AND "timestamp" >= :since GROUP BY event_id '
                "ON CONFLICT (event_id) DO NOTHING"
            ),
            {"since": since},
        )


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    _create_receipts()
    if not postgresql:
        for table in ("health_checks", "error_logs"):
            with op.batch_alter_table(table) as batch_op:
                batch_op.drop_constraint(f"uq_{table}_event_id", type_="unique")
                batch_op.create_unique_constraint(
                    f"uq_{table}_event_id_timestamp", ["event_id", "timestamp"]
                )
        return
    # Periods are UTC days and weeks, whatever the server's time zone.
    op.execute("SET LOCAL TIME ZONE 'UTC'")
    for table, period in _CONVERTED:
        build = f"{table}__partitioned"
        op.execute(
            f"CREATE TABLE {build} (LIKE {table} INCLUDING DEFAULTS) "
            'PARTITION BY RANGE ("timestamp")'
        )
        _create_partitions(build, table, period, _periods_with_rows(table, period))
        _swap_in(table, build, 'id, "timestamp"', 'event_id, "timestamp"')


def downgrade() -> None:
    """Back to plain tables keyed by ``event_id`` alone; fails (and changes nothing) when a
    redelivery was stored twice meanwhile under two timestamps, which the old key refuses."""
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        for table, _period in _CONVERTED:
            build = f"{table}__plain"
            op.execute(f"CREATE TABLE {build} (LIKE {table} INCLUDING DEFAULTS)")
            _swap_in(table, build, "id", "event_id")
    else:
        for table in ("health_checks", "error_logs"):
            with op.batch_alter_table(table) as batch_op:
                batch_op.drop_constraint(f"uq_{table}_event_id_timestamp", type_="unique")
                batch_op.create_unique_constraint(f"uq_{table}_event_id", ["event_id"])
    op.drop_index("ix_message_receipts_received_at", table_name="message_receipts")
    op.drop_table("message_receipts")
