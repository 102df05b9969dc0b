"""Time partitions on PostgreSQL, (event_id, timestamp) keys, and the rollup tables

On PostgreSQL, device_metrics, api_request_logs (daily) and user_activities (weekly)
become native range partitions by ``timestamp``, each with a default partition
(homepot.retention.partitions explains the periods; health_checks and error_logs stay plain,
and it says why). An existing table is
converted without losing a row: a partitioned table is created beside it with the same
columns and defaults, partitions for every period holding rows (and the next few), the rows
are copied, the old table dropped (its id sequence handed over, so ids continue), the new
one renamed, and the primary key, unique key and indexes recreated. A partitioned table's
unique keys must include the partition key: the primary key becomes (id, timestamp) and the
idempotency key (event_id, timestamp); an event replayed carries its original timestamp, so
it still conflicts.

SQLite keeps plain tables; only the unique keys change there too (to what the models say), so
that one conflict target serves both databases.

New on both: device_metrics_minute, device_metrics_hour, fleet_metrics_hour and
api_request_minute (rollups for
charts; the two minute tables partitioned by day on PostgreSQL) and rollup_progress.

Revision ID: e4d2c9a1b7f3
Revises: 5e2b7c9d1a40
Create Date: 2026-12-01 00:30:00.000000+00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "e4d2c9a1b7f3"
down_revision: str | None = "5e2b7c9d1a40"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table, period, has event_id
_CONVERTED = (
    ("device_metrics", "day", True),
    ("api_request_logs", "day", True),
    ("user_activities", "week", True),
)
_EVENT_TABLES = [name for name, _period, has_event in _CONVERTED if has_event]
_AHEAD = {"day": 3, "week": 2}
_LENGTH = {"day": timedelta(days=1), "week": timedelta(days=7)}


def _literal(moment: datetime) -> str:
    return f"'{moment.astimezone(UTC).isoformat()}'"


def _start_of(moment: datetime, period: str) -> datetime:
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday()) if period == "week" else day


def _create_partitions(
    parent: str,
    prefix: str,
    period: str,
    starts: set[datetime] = frozenset(),  # type: ignore[assignment]
) -> None:
    """A default partition and one per period: those of ``starts``, the current one and
    the next few. Named after ``prefix`` (the table's final name)."""
    first = _start_of(datetime.now(UTC), period)
    starts = set(starts) | {first + i * _LENGTH[period] for i in range(_AHEAD[period] + 1)}
    op.execute(f"CREATE TABLE {prefix}_default PARTITION OF {parent} DEFAULT")
    for start in sorted(starts):
        op.execute(
            f"CREATE TABLE {prefix}_p{start:%Y%m%d} PARTITION OF {parent} FOR VALUES FROM "
            f"({_literal(start)}) TO ({_literal(start + _LENGTH[period])})"
        )


def _periods_with_rows(table: str, period: str) -> set[datetime]:
    rows = op.get_bind().execute(
        sa.text(f"SELECT DISTINCT date_trunc('{period}', \"timestamp\") FROM {table}")
    )
    return {start.astimezone(UTC) for (start,) in rows}


def _secondary_indexes(table: str) -> list[str]:
    """CREATE INDEX statements of ``table``'s indexes other than its keys."""
    rows = op.get_bind().execute(
        sa.text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :table "
            "AND schemaname = current_schema()"
        ),
        {"table": table},
    )
    return [definition for name, definition in rows if not name.startswith(("pk_", "uq_"))]


def _swap_in(table: str, build: str, key_columns: str, unique_columns: str | None) -> None:
    """Copy ``table`` into the new table ``build``, drop the old one and take its name,
    keys, indexes and id sequence."""
    indexes = _secondary_indexes(table)
    op.execute(f"INSERT INTO {build} SELECT * FROM {table}")
    op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY NONE")
    op.execute(f"DROP TABLE {table}")
    op.execute(f"ALTER TABLE {build} RENAME TO {table}")
    op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({key_columns})")
    if unique_columns:
        name = "uq_" + table + "_" + unique_columns.replace('"', "").replace(", ", "_")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE ({unique_columns})")
    for definition in indexes:
        op.execute(definition.replace(f" ON {_schema()}.{table} ", f" ON {table} "))


def _schema() -> str:
    return str(op.get_bind().scalar(sa.text("SELECT current_schema()")))


def _partition_table(table: str, period: str, has_event: bool) -> None:
    build = f"{table}__partitioned"
    op.execute(
        f'CREATE TABLE {build} (LIKE {table} INCLUDING DEFAULTS) PARTITION BY RANGE ("timestamp")'
    )
    _create_partitions(build, table, period, _periods_with_rows(table, period))
    _swap_in(table, build, 'id, "timestamp"', 'event_id, "timestamp"' if has_event else None)


def _unpartition_table(table: str, has_event: bool) -> None:
    build = f"{table}__plain"
    op.execute(f"CREATE TABLE {build} (LIKE {table} INCLUDING DEFAULTS)")
    _swap_in(table, build, "id", "event_id" if has_event else None)


def _rollup_columns() -> list[sa.Column[object]]:
    columns: list[sa.Column[object]] = [sa.Column("samples", sa.Integer(), nullable=False)]
    for metric in (
        "cpu_percent",
        "memory_percent",
        "disk_percent",
        "network_latency_ms",
        "transaction_count",
        "error_rate",
    ):
        columns += [
            sa.Column(f"{metric}_sum", sa.Float(), nullable=True),
            sa.Column(f"{metric}_count", sa.Integer(), nullable=False),
            sa.Column(f"{metric}_min", sa.Float(), nullable=True),
            sa.Column(f"{metric}_max", sa.Float(), nullable=True),
        ]
    return columns


def _create_rollup_tables(postgresql: bool) -> None:
    partitioned = {"postgresql_partition_by": "RANGE (bucket)"} if postgresql else {}
    for name, options in (
        ("device_metrics_minute", partitioned),
        ("device_metrics_hour", {}),
    ):
        op.create_table(
            name,
            sa.Column("device_id", sa.String(length=64), nullable=False),
            sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
            sa.Column("source", sa.String(length=16), nullable=False),
            *_rollup_columns(),
            sa.PrimaryKeyConstraint("device_id", "bucket", "source", name=op.f(f"pk_{name}")),
            **options,
        )
        op.create_index(f"ix_{name}_bucket", name, ["bucket"], unique=False)
    op.create_table(
        "fleet_metrics_hour",
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        *_rollup_columns(),
        sa.PrimaryKeyConstraint("bucket", "source", name=op.f("pk_fleet_metrics_hour")),
    )
    op.create_table(
        "api_request_minute",
        sa.Column("route", sa.String(length=512), nullable=False),
        sa.Column("method", sa.String(length=10), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("client_errors", sa.Integer(), nullable=False),
        sa.Column("server_errors", sa.Integer(), nullable=False),
        sa.Column("latency_sum_ms", sa.Float(), nullable=False),
        sa.Column("latency_max_ms", sa.Float(), nullable=False),
        sa.Column(
            "latency_histogram",
            sa.JSON(none_as_null=True).with_variant(
                sa.dialects.postgresql.JSONB(none_as_null=True), "postgresql"
            ),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint(
            "route", "method", "bucket", "source", name=op.f("pk_api_request_minute")
        ),
        **partitioned,
    )
    op.create_index("ix_api_request_minute_bucket", "api_request_minute", ["bucket"])
    op.create_table(
        "rollup_progress",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("covered_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_rollup_progress")),
    )
    if postgresql:
        for name in ("device_metrics_minute", "api_request_minute"):
            _create_partitions(name, name, "day")


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        # Periods are UTC days and weeks, whatever the server's time zone.
        op.execute("SET LOCAL TIME ZONE 'UTC'")
        for table, period, has_event in _CONVERTED:
            _partition_table(table, period, has_event)
    else:
        for table in _EVENT_TABLES:
            with op.batch_alter_table(table) as batch_op:
                batch_op.drop_constraint(f"uq_{table}_event_id", type_="unique")
                batch_op.create_unique_constraint(
                    f"uq_{table}_event_id_timestamp", ["event_id", "timestamp"]
                )
    _create_rollup_tables(postgresql)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for name in (
        "rollup_progress",
        "api_request_minute",
        "fleet_metrics_hour",
        "device_metrics_hour",
    ):
        op.drop_table(name)
    op.drop_table("device_metrics_minute")
    if postgresql:
        for table, _period, has_event in _CONVERTED:
            _unpartition_table(table, has_event)
        return
    for table in _EVENT_TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_constraint(f"uq_{table}_event_id_timestamp", type_="unique")
            batch_op.create_unique_constraint(f"uq_{table}_event_id", ["event_id"])
