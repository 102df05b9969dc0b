"""What an export holds: the eight analytics tables, each column with its type and treatment.

Every string column is scrubbed unless it is listed here as an identifier that cannot hold
personal data (event ids, device and site ids, enumerations); new columns are therefore
scrubbed until someone decides otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

import pyarrow as pa
from sqlalchemy import JSON, Boolean, Column, Float, Integer, Table, Time

from homepot.analytics.models import (
    APIRequestLog,
    ConfigurationHistory,
    DeviceMetrics,
    DeviceStateHistory,
    ErrorLog,
    JobOutcome,
    SiteOperatingSchedule,
    UserActivity,
)
from homepot.db import Base, UTCDateTime
from homepot.export.pseudonym import Pseudonymizer
from homepot.kit.redaction import REDACTED, is_sensitive_key, scrub_text, truncate_ip

# Who changed something, when it was not a person: kept as written. Any other value of an
# actor column (changed_by, initiated_by) is taken for a user id and pseudonymized, so an
# unknown actor errs on the side of privacy.
SYSTEM_ACTORS = frozenset({"system", "scheduler", "watchdog", "orchestrator", "backfill"})
# Columns whose values are identifiers or enumerations, never personal data: kept as written.
KEPT_COLUMNS = frozenset(
    {
        "event_id",
        "request_id",
        "device_id",
        "site_id",
        "job_id",
        "job_type",
        "method",
        "route",
        "status",
        "previous_state",
        "new_state",
        "category",
        "severity",
        "error_code",
        "activity_type",
        "entity_type",
        "parameter_name",
        "change_type",
        "source",
    }
)
# Keys inside JSON columns that hold a user (or session) id.
_JSON_USER_KEYS = frozenset({"user_id", "changed_by", "initiated_by", "created_by"})
_JSON_SESSION_KEYS = frozenset({"session_id"})
# Words that might be a user id in free text (user ids are 32 hex digits; others are kept
# within these bounds).
_ID_CANDIDATE = re.compile(r"(?<![\w-])[A-Za-z0-9_-]{8,64}(?![\w-])")
_CACHED_TEXT_LENGTH = 256


class Treatment(StrEnum):
    """What happens to a column's values on the way out (named in the manifest)."""

    kept = "kept"
    scrubbed = "scrubbed"
    user_pseudonym = "user pseudonym"
    actor = "user pseudonym unless a system actor"
    session_pseudonym = "session pseudonym"
    ip_network = "truncated to the /24 (IPv4) or /48 (IPv6) network"
    json = "JSON text: secret keys redacted, strings scrubbed, user ids pseudonymized"


_TREATMENT_BY_NAME = {
    "user_id": Treatment.user_pseudonym,
    "changed_by": Treatment.actor,
    "initiated_by": Treatment.actor,
    "session_id": Treatment.session_pseudonym,
    "ip_address": Treatment.ip_network,
}


@dataclass(frozen=True)
class ExportColumn:
    name: str
    arrow_type: pa.DataType
    treatment: Treatment

    @property
    def type_name(self) -> str:
        return "json" if self.treatment is Treatment.json else str(self.arrow_type)


@dataclass(frozen=True)
class ExportTable:
    """One analytics table: its name in the API (stream) and in the database."""

    stream: str
    model: type[Base]
    time_column: str
    # Configuration tables are exported whole: a schedule set before the range still applies.
    time_filtered: bool = True
    order_by: tuple[str, ...] = ("timestamp", "id")
    columns: tuple[ExportColumn, ...] = field(init=False)

    def __post_init__(self) -> None:
        table = self.model.__table__
        assert isinstance(table, Table)
        object.__setattr__(self, "columns", tuple(_export_column(c) for c in table.columns))

    @property
    def name(self) -> str:
        return str(self.model.__tablename__)

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type) for c in self.columns])


def _export_column(column: Column[Any]) -> ExportColumn:
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return ExportColumn(column.name, pa.timestamp("us", tz="UTC"), Treatment.kept)
    if isinstance(kind, Time):
        return ExportColumn(column.name, pa.time64("us"), Treatment.kept)
    if isinstance(kind, Boolean):
        return ExportColumn(column.name, pa.bool_(), Treatment.kept)
    if isinstance(kind, Integer):
        return ExportColumn(column.name, pa.int64(), Treatment.kept)
    if isinstance(kind, Float):
        return ExportColumn(column.name, pa.float64(), Treatment.kept)
    if isinstance(kind, JSON):
        return ExportColumn(column.name, pa.string(), Treatment.json)
    treatment = _TREATMENT_BY_NAME.get(column.name)
    if treatment is None:
        treatment = Treatment.kept if column.name in KEPT_COLUMNS else Treatment.scrubbed
    return ExportColumn(column.name, pa.string(), treatment)


EXPORT_TABLES: tuple[ExportTable, ...] = (
    ExportTable("requests", APIRequestLog, "timestamp"),
    ExportTable("device-states", DeviceStateHistory, "timestamp"),
    ExportTable("jobs", JobOutcome, "timestamp"),
    ExportTable("errors", ErrorLog, "timestamp"),
    ExportTable("user-activities", UserActivity, "timestamp"),
    ExportTable("device-metrics", DeviceMetrics, "timestamp"),
    ExportTable("config-history", ConfigurationHistory, "timestamp"),
    ExportTable(
        "site-schedules",
        SiteOperatingSchedule,
        "updated_at",
        time_filtered=False,
        order_by=("site_id", "day_of_week"),
    ),
)
_BY_NAME: dict[str, ExportTable] = {
    **{t.stream: t for t in EXPORT_TABLES},
    **{t.name: t for t in EXPORT_TABLES},
}
ACCEPTED_NAMES = ", ".join(t.stream for t in EXPORT_TABLES)


class UnknownTableError(ValueError):
    pass


def resolve_tables(names: Iterable[str] | None) -> list[ExportTable]:
    """The tables named by stream (``device-metrics``) or table name (``device_metrics``),
    in the canonical order and once each; all eight when ``names`` is None or empty."""
    wanted = [n.strip() for n in names or () if n.strip()]
    if not wanted:
        return list(EXPORT_TABLES)
    unknown = [n for n in wanted if n not in _BY_NAME]
    if unknown:
        raise UnknownTableError(
            f"unknown table{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"choose from {ACCEPTED_NAMES} (or their table names, e.g. api_request_logs)"
        )
    chosen = {_BY_NAME[n].name for n in wanted}
    return [t for t in EXPORT_TABLES if t.name in chosen]


Transform = Callable[[Any], Any]


class CellTransformer:
    """Applies each column's treatment; one per export (it holds the key and the user ids)."""

    def __init__(self, pseudonymizer: Pseudonymizer, user_ids: Iterable[str]) -> None:
        self._pseudonymizer = pseudonymizer
        self._user_ids = frozenset(user_ids)
        self._transforms: dict[Treatment, Transform] = {
            Treatment.kept: lambda value: value,
            Treatment.scrubbed: self.text,
            Treatment.user_pseudonym: self.user,
            Treatment.actor: self.actor,
            Treatment.session_pseudonym: self.session,
            Treatment.ip_network: self.ip,
            Treatment.json: self.json_text,
        }
        # A fleet has few addresses, each on many rows; parsing one costs ~40 µs.
        self._truncate_ip = lru_cache(maxsize=4_096)(truncate_ip)
        # Endpoints, user agents and reasons repeat too; small, so memory stays flat.
        self._short_text = lru_cache(maxsize=1_024)(self._scrub_text)

    def transforms(self, table: ExportTable) -> list[Transform]:
        return [self._transforms[column.treatment] for column in table.columns]

    def user(self, value: str | None) -> str | None:
        return None if value is None else self._pseudonymizer.user(value)

    def session(self, value: str | None) -> str | None:
        return None if value is None else self._pseudonymizer.session(value)

    def actor(self, value: str | None) -> str | None:
        if value is None or value in SYSTEM_ACTORS:
            return value
        return self._pseudonymizer.user(value)

    def ip(self, value: str | None) -> str | None:
        # Something that is not an address is not guessed at: it is dropped.
        return None if value is None else self._truncate_ip(value)

    def text(self, value: str | None) -> str | None:
        if not value:
            return value
        if len(value) <= _CACHED_TEXT_LENGTH:
            return self._short_text(value)
        return self._scrub_text(value)

    def _scrub_text(self, value: str) -> str:
        value = scrub_text(value)
        if self._user_ids and len(value) >= 8:
            value = _ID_CANDIDATE.sub(self._known_user, value)
        return value

    def _known_user(self, match: re.Match[str]) -> str:
        word = match.group(0)
        return self._pseudonymizer.user(word) if word in self._user_ids else word

    def json_value(self, value: Any, key: str | None = None) -> Any:
        if isinstance(value, Mapping):
            return {
                k: (
                    REDACTED
                    if isinstance(k, str) and is_sensitive_key(k)
                    else self.json_value(item, k if isinstance(k, str) else None)
                )
                for k, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.json_value(item, key) for item in value]
        if isinstance(value, str):
            if key in _JSON_USER_KEYS:
                return self.actor(value)
            if key in _JSON_SESSION_KEYS:
                return self.session(value)
            return self.text(value)
        return value

    def json_text(self, value: Any) -> str | None:
        if value is None:
            return None
        return json.dumps(self.json_value(value), ensure_ascii=False, separators=(",", ":"))
