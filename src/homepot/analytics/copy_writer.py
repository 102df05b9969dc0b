"""What the analytics recorder sends to PostgreSQL to write a batch with COPY.

Each table's rows go in with COPY: straight into the table, and when an event of the batch
is stored already, into a temporary staging table and one ``INSERT ... SELECT ... ON
CONFLICT (<key>) DO NOTHING``. ``<key>`` is the table's unique key holding ``event_id`` as
the table's metadata declares it (:func:`conflict_columns`). The recorder
(:mod:`homepot.analytics.recorder`) decides when each path is taken.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from sqlalchemy import PrimaryKeyConstraint, Table, UniqueConstraint
from sqlalchemy.exc import DataError as SQLDataError

from homepot.analytics.row_shapes import Row, _TableShape


def conflict_columns(table: Table) -> tuple[str, ...]:
    """The columns of ``table``'s unique key that holds ``event_id``, as its metadata says.

    ``event_id`` alone for a plain table; a table partitioned by time has to carry the
    partition column in every unique key, e.g. ``(event_id, timestamp)``. The smallest such
    key is the one ``ON CONFLICT`` names.
    """
    keys: list[tuple[str, ...]] = []
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint | PrimaryKeyConstraint):
            keys.append(tuple(column.name for column in constraint.columns))
    keys.extend(tuple(c.name for c in index.columns) for index in table.indexes if index.unique)
    with_event_id = [key for key in keys if "event_id" in key]
    if not with_event_id:
        raise RuntimeError(f"{table.name} has no unique key holding event_id: events could repeat")
    return min(with_event_id, key=len)


def json_text(value: Any) -> str:
    """``value`` (JSON-safe already, see homepot.analytics.row_shapes.clean_json) as JSON
    text for a ``jsonb`` column.

    orjson, not ``json.dumps``: encoding ``extra_metrics`` was the largest part of the
    writer's CPU per row (2.8 of 6.5 us), orjson takes 0.3. It refuses what ``json`` takes
    (an int beyond 64 bits, a string with a lone surrogate); those go through ``json``, as
    before.
    """
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, UnicodeDecodeError):
        return json.dumps(value)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _CopyStatements:
    """What the COPY path sends for one table (PostgreSQL only), built once."""

    def __init__(self, shape: _TableShape) -> None:
        self.table = shape.table.name
        self.stage = f"homepot_stage_{self.table}"
        self.json_columns = shape.json_columns
        # The order COPY sends a complete row in: the JSON columns last, so that a record is
        # one C call for the plain values and the encoded JSON added at its end.
        plain = tuple(c for c in shape.columns if c not in shape.json_columns)
        self._json_names = tuple(c for c in shape.columns if c in shape.json_columns)
        self.columns = plain + self._json_names
        # No constraints and no defaults in the staging table: NOT NULL and the unique key
        # are checked where the rows land, in the INSERT, and nothing draws on the id
        # sequence twice. ON COMMIT DELETE ROWS leaves it empty for the next batch.
        self.create_stage = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_quoted(self.stage)} ON COMMIT DELETE ROWS"
            f" AS SELECT {_column_list(self.columns)} FROM {_quoted(self.table)} WITH NO DATA"
        )
        self._key = _column_list(conflict_columns(shape.table))
        self._inserts: dict[tuple[str, ...], str] = {}
        # A complete row's plain values in COPY's order (one C call).
        self._plain_values: Callable[[Row], tuple[Any, ...]] = (
            operator.itemgetter(*plain)
            if len(plain) > 1
            else (lambda row: (row[plain[0]],))
            if plain
            else (lambda row: ())
        )

    def insert(self, columns: tuple[str, ...]) -> str:
        """INSERT ... SELECT of ``columns`` from the staging table; the table's defaults
        fill the others (a spooled row written before a column existed lacks it)."""
        statement = self._inserts.get(columns)
        if statement is None:
            listed = _column_list(columns)
            statement = self._inserts[columns] = (
                f"INSERT INTO {_quoted(self.table)} ({listed}) SELECT {listed}"
                f" FROM {_quoted(self.stage)} ON CONFLICT ({self._key}) DO NOTHING"
            )
        return statement

    def records_by_columns(self, rows: list[Row]) -> dict[tuple[str, ...], list[tuple[Any, ...]]]:
        """The rows as COPY records, grouped by the columns they have (in COPY's order)."""
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        complete = self.columns
        size = len(complete)
        full: list[tuple[Any, ...]] = []
        plain_values = self._plain_values
        json_names = self._json_names
        encode = json_text
        for row in rows:
            if len(row) == size:
                if not full:
                    groups[complete] = full  # groups keep the order they first appear in
                if json_names:
                    encoded = tuple(
                        None if (value := row[name]) is None else encode(value)
                        for name in json_names
                    )
                    full.append(plain_values(row) + encoded)
                else:
                    full.append(plain_values(row))
            else:
                columns = tuple(c for c in complete if c in row)
                record = [row[name] for name in columns]
                for index, name in enumerate(columns):
                    if record[index] is not None and name in self.json_columns:
                        record[index] = encode(record[index])
                groups.setdefault(columns, []).append(tuple(record))
        return groups


def _column_list(columns: Iterable[str]) -> str:
    return ", ".join(_quoted(c) for c in columns)


# The staging tables a connection has created (in its ``info``), by table name.
_STAGES_KEY = "homepot.analytics.staging_tables"


async def _copy_records(
    raw: Any, table: str, columns: tuple[str, ...], records: list[tuple[Any, ...]]
) -> None:
    try:
        await raw.copy_records_to_table(table, records=records, columns=columns)
    except (TypeError, ValueError, ArithmeticError) as exc:
        # A value asyncpg cannot encode (e.g. 2**40 for an int4): the data's fault, found by
        # the driver before the server saw it, so it carries no SQLSTATE.
        raise SQLDataError("COPY", None, exc) from exc
