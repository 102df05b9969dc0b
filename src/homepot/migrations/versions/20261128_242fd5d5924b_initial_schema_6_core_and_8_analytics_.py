"""initial schema: 6 core and 8 analytics tables

Revision ID: 242fd5d5924b
Revises:
Create Date: 2026-11-28 07:29:56.825141+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "242fd5d5924b"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_request_logs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=32), nullable=True),
        sa.Column("endpoint", sa.String(length=2048), nullable=False),
        sa.Column("route", sa.String(length=512), nullable=True),
        sa.Column("method", sa.String(length=10), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("response_time_ms", sa.Float(), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("ip_address", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("request_size_bytes", sa.Integer(), nullable=False),
        sa.Column("response_size_bytes", sa.Integer(), nullable=False),
        sa.Column(
            "query_params",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_request_logs")),
        sa.UniqueConstraint("event_id", name=op.f("uq_api_request_logs_event_id")),
    )
    with op.batch_alter_table("api_request_logs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_api_request_logs_endpoint_timestamp", ["endpoint", "timestamp"], unique=False
        )
        batch_op.create_index(
            "ix_api_request_logs_route_timestamp", ["route", "timestamp"], unique=False
        )
        batch_op.create_index(
            "ix_api_request_logs_status_code_timestamp", ["status_code", "timestamp"], unique=False
        )
        batch_op.create_index("ix_api_request_logs_timestamp", ["timestamp"], unique=False)
        batch_op.create_index(
            "ix_api_request_logs_user_id_timestamp", ["user_id", "timestamp"], unique=False
        )

    op.create_table(
        "audit_logs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=128), nullable=True),
        sa.Column("ip_address", sa.String(length=45), nullable=True),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_logs")),
    )
    with op.batch_alter_table("audit_logs", schema=None) as batch_op:
        batch_op.create_index("ix_audit_logs_timestamp", ["timestamp"], unique=False)
        batch_op.create_index(
            "ix_audit_logs_user_id_timestamp", ["user_id", "timestamp"], unique=False
        )

    op.create_table(
        "configuration_history",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entity_type", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=False),
        sa.Column("parameter_name", sa.String(length=128), nullable=False),
        sa.Column(
            "old_value",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "new_value",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("changed_by", sa.String(length=64), nullable=False),
        sa.Column("change_reason", sa.Text(), nullable=True),
        sa.Column("change_type", sa.String(length=16), nullable=False),
        sa.Column(
            "performance_before",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "performance_after",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("was_successful", sa.Boolean(), nullable=True),
        sa.Column("was_rolled_back", sa.Boolean(), nullable=False),
        sa.Column("rollback_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_configuration_history")),
        sa.UniqueConstraint("event_id", name=op.f("uq_configuration_history_event_id")),
    )
    with op.batch_alter_table("configuration_history", schema=None) as batch_op:
        batch_op.create_index(
            "ix_configuration_history_change_type_timestamp",
            ["change_type", "timestamp"],
            unique=False,
        )
        batch_op.create_index(
            "ix_configuration_history_entity_type_entity_id_timestamp",
            ["entity_type", "entity_id", "timestamp"],
            unique=False,
        )
        batch_op.create_index(
            "ix_configuration_history_parameter_name", ["parameter_name"], unique=False
        )
        batch_op.create_index("ix_configuration_history_timestamp", ["timestamp"], unique=False)

    op.create_table(
        "device_metrics",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("cpu_percent", sa.Float(), nullable=True),
        sa.Column("memory_percent", sa.Float(), nullable=True),
        sa.Column("disk_percent", sa.Float(), nullable=True),
        sa.Column("network_latency_ms", sa.Float(), nullable=True),
        sa.Column("transaction_count", sa.Integer(), nullable=True),
        sa.Column("transaction_volume", sa.Float(), nullable=True),
        sa.Column("error_rate", sa.Float(), nullable=True),
        sa.Column("active_connections", sa.Integer(), nullable=True),
        sa.Column("queue_depth", sa.Integer(), nullable=True),
        sa.Column(
            "extra_metrics",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("collection_interval_seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_metrics")),
        sa.UniqueConstraint("event_id", name=op.f("uq_device_metrics_event_id")),
    )
    with op.batch_alter_table("device_metrics", schema=None) as batch_op:
        batch_op.create_index(
            "ix_device_metrics_device_id_timestamp", ["device_id", "timestamp"], unique=False
        )
        batch_op.create_index("ix_device_metrics_timestamp", ["timestamp"], unique=False)

    op.create_table(
        "device_state_history",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("previous_state", sa.String(length=32), nullable=True),
        sa.Column("new_state", sa.String(length=32), nullable=False),
        sa.Column("changed_by", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "extra_data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_state_history")),
        sa.UniqueConstraint("event_id", name=op.f("uq_device_state_history_event_id")),
    )
    with op.batch_alter_table("device_state_history", schema=None) as batch_op:
        batch_op.create_index(
            "ix_device_state_history_device_id_timestamp", ["device_id", "timestamp"], unique=False
        )
        batch_op.create_index(
            "ix_device_state_history_new_state_timestamp", ["new_state", "timestamp"], unique=False
        )
        batch_op.create_index("ix_device_state_history_timestamp", ["timestamp"], unique=False)

    op.create_table(
        "error_logs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("stack_trace", sa.Text(), nullable=True),
        sa.Column("endpoint", sa.String(length=2048), nullable=True),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column(
            "context",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("resolved", sa.Boolean(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_error_logs")),
        sa.UniqueConstraint("event_id", name=op.f("uq_error_logs_event_id")),
    )
    with op.batch_alter_table("error_logs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_error_logs_category_timestamp", ["category", "timestamp"], unique=False
        )
        batch_op.create_index(
            "ix_error_logs_device_id_timestamp", ["device_id", "timestamp"], unique=False
        )
        batch_op.create_index("ix_error_logs_error_code", ["error_code"], unique=False)
        batch_op.create_index(
            "ix_error_logs_resolved_timestamp", ["resolved", "timestamp"], unique=False
        )
        batch_op.create_index(
            "ix_error_logs_severity_timestamp", ["severity", "timestamp"], unique=False
        )
        batch_op.create_index("ix_error_logs_timestamp", ["timestamp"], unique=False)

    op.create_table(
        "job_outcomes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("job_type", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("initiated_by", sa.String(length=64), nullable=True),
        sa.Column(
            "extra_data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_outcomes")),
        sa.UniqueConstraint("event_id", name=op.f("uq_job_outcomes_event_id")),
    )
    with op.batch_alter_table("job_outcomes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_job_outcomes_device_id_timestamp", ["device_id", "timestamp"], unique=False
        )
        batch_op.create_index("ix_job_outcomes_job_id", ["job_id"], unique=False)
        batch_op.create_index(
            "ix_job_outcomes_job_type_timestamp", ["job_type", "timestamp"], unique=False
        )
        batch_op.create_index(
            "ix_job_outcomes_status_timestamp", ["status", "timestamp"], unique=False
        )
        batch_op.create_index("ix_job_outcomes_timestamp", ["timestamp"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("job_type", sa.String(length=64), nullable=False),
        sa.Column(
            "target_type",
            sa.Enum(
                "device", "site", "device_type", name="jobtargettype", native_enum=False, length=16
            ),
            nullable=False,
        ),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "scheduled",
                "running",
                "completed",
                "failed",
                "cancelled",
                name="jobstatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column(
            "schedule",
            sa.Enum("now", "maintenance_window", name="jobschedule", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_job_type"), ["job_type"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_target_id"), ["target_id"], unique=False)

    op.create_table(
        "site_operating_schedules",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("day_of_week", sa.SmallInteger(), nullable=False),
        sa.Column("open_time", sa.Time(), nullable=True),
        sa.Column("close_time", sa.Time(), nullable=True),
        sa.Column("is_closed", sa.Boolean(), nullable=False),
        sa.Column("is_maintenance_window", sa.Boolean(), nullable=False),
        sa.Column("expected_transaction_volume", sa.Integer(), nullable=True),
        sa.Column("peak_hours_start", sa.Time(), nullable=True),
        sa.Column("peak_hours_end", sa.Time(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column(
            "special_considerations",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_site_operating_schedules")),
        sa.UniqueConstraint(
            "site_id", "day_of_week", name=op.f("uq_site_operating_schedules_site_id_day_of_week")
        ),
    )
    with op.batch_alter_table("site_operating_schedules", schema=None) as batch_op:
        batch_op.create_index(
            "ix_site_operating_schedules_updated_at", ["updated_at"], unique=False
        )

    op.create_table(
        "sites",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=500), nullable=True),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("site_id", name=op.f("pk_sites")),
    )
    op.create_table(
        "user_activities",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("session_id", sa.String(length=64), nullable=True),
        sa.Column("activity_type", sa.String(length=32), nullable=False),
        sa.Column("page_url", sa.String(length=2048), nullable=True),
        sa.Column("element_id", sa.String(length=256), nullable=True),
        sa.Column("search_query", sa.String(length=512), nullable=True),
        sa.Column(
            "extra_data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_activities")),
        sa.UniqueConstraint("event_id", name=op.f("uq_user_activities_event_id")),
    )
    with op.batch_alter_table("user_activities", schema=None) as batch_op:
        batch_op.create_index(
            "ix_user_activities_activity_type_timestamp",
            ["activity_type", "timestamp"],
            unique=False,
        )
        batch_op.create_index(
            "ix_user_activities_session_id_timestamp", ["session_id", "timestamp"], unique=False
        )
        batch_op.create_index("ix_user_activities_timestamp", ["timestamp"], unique=False)
        batch_op.create_index(
            "ix_user_activities_user_id_timestamp", ["user_id", "timestamp"], unique=False
        )

    op.create_table(
        "users",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column(
            "role",
            sa.Enum("admin", "operator", "viewer", name="role", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("full_name", sa.String(length=200), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("device_type", sa.String(length=64), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "online",
                "offline",
                "error",
                "maintenance",
                "updating",
                name="devicestatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("firmware_version", sa.String(length=64), nullable=True),
        sa.Column("ip_address", sa.String(length=45), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.site_id"],
            name=op.f("fk_devices_site_id_sites"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_devices")),
    )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_devices_device_type"), ["device_type"], unique=False)
        batch_op.create_index(batch_op.f("ix_devices_site_id"), ["site_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_devices_status"), ["status"], unique=False)

    op.create_table(
        "health_checks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("response_time_ms", sa.Float(), nullable=True),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.device_id"],
            name=op.f("fk_health_checks_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_health_checks")),
    )
    with op.batch_alter_table("health_checks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_health_checks_device_id_timestamp", ["device_id", "timestamp"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("health_checks", schema=None) as batch_op:
        batch_op.drop_index("ix_health_checks_device_id_timestamp")

    op.drop_table("health_checks")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_devices_status"))
        batch_op.drop_index(batch_op.f("ix_devices_site_id"))
        batch_op.drop_index(batch_op.f("ix_devices_device_type"))

    op.drop_table("devices")
    op.drop_table("users")
    with op.batch_alter_table("user_activities", schema=None) as batch_op:
        batch_op.drop_index("ix_user_activities_user_id_timestamp")
        batch_op.drop_index("ix_user_activities_timestamp")
        batch_op.drop_index("ix_user_activities_session_id_timestamp")
        batch_op.drop_index("ix_user_activities_activity_type_timestamp")

    op.drop_table("user_activities")
    op.drop_table("sites")
    with op.batch_alter_table("site_operating_schedules", schema=None) as batch_op:
        batch_op.drop_index("ix_site_operating_schedules_updated_at")

    op.drop_table("site_operating_schedules")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_target_id"))
        batch_op.drop_index(batch_op.f("ix_jobs_status"))
        batch_op.drop_index(batch_op.f("ix_jobs_job_type"))
        batch_op.drop_index(batch_op.f("ix_jobs_created_at"))

    op.drop_table("jobs")
    with op.batch_alter_table("job_outcomes", schema=None) as batch_op:
        batch_op.drop_index("ix_job_outcomes_timestamp")
        batch_op.drop_index("ix_job_outcomes_status_timestamp")
        batch_op.drop_index("ix_job_outcomes_job_type_timestamp")
        batch_op.drop_index("ix_job_outcomes_job_id")
        batch_op.drop_index("ix_job_outcomes_device_id_timestamp")

    op.drop_table("job_outcomes")
    with op.batch_alter_table("error_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_error_logs_timestamp")
        batch_op.drop_index("ix_error_logs_severity_timestamp")
        batch_op.drop_index("ix_error_logs_resolved_timestamp")
        batch_op.drop_index("ix_error_logs_error_code")
        batch_op.drop_index("ix_error_logs_device_id_timestamp")
        batch_op.drop_index("ix_error_logs_category_timestamp")

    op.drop_table("error_logs")
    with op.batch_alter_table("device_state_history", schema=None) as batch_op:
        batch_op.drop_index("ix_device_state_history_timestamp")
        batch_op.drop_index("ix_device_state_history_new_state_timestamp")
        batch_op.drop_index("ix_device_state_history_device_id_timestamp")

    op.drop_table("device_state_history")
    with op.batch_alter_table("device_metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_device_metrics_timestamp")
        batch_op.drop_index("ix_device_metrics_device_id_timestamp")

    op.drop_table("device_metrics")
    with op.batch_alter_table("configuration_history", schema=None) as batch_op:
        batch_op.drop_index("ix_configuration_history_timestamp")
        batch_op.drop_index("ix_configuration_history_parameter_name")
        batch_op.drop_index("ix_configuration_history_entity_type_entity_id_timestamp")
        batch_op.drop_index("ix_configuration_history_change_type_timestamp")

    op.drop_table("configuration_history")
    with op.batch_alter_table("audit_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_logs_user_id_timestamp")
        batch_op.drop_index("ix_audit_logs_timestamp")

    op.drop_table("audit_logs")
    with op.batch_alter_table("api_request_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_api_request_logs_user_id_timestamp")
        batch_op.drop_index("ix_api_request_logs_timestamp")
        batch_op.drop_index("ix_api_request_logs_status_code_timestamp")
        batch_op.drop_index("ix_api_request_logs_route_timestamp")
        batch_op.drop_index("ix_api_request_logs_endpoint_timestamp")

    op.drop_table("api_request_logs")
