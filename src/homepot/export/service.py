"""Streaming, pseudonymized exports of the analytics tables to Parquet or CSV files.

Simulated rows (``source = simulated``: the backfill, sample data, simulated terminals) are
left out unless the request includes them; the manifest says how many were left out, and
says so plainly when every row was simulated.

Rows are read in keyset pages of ``batch_size`` (the table's order plus ``id``), each page
in a short transaction of its own, and each page is transformed and written before the next
is read (a Parquet row group or a run of CSV lines), so memory stays flat however large the
export, and no transaction (nor a pooled connection) is held while a file is written: a slow
disk cannot hold back the database's vacuum or the pool. The transformation and the file
writes run in a worker thread, so the API's event loop keeps serving while an export runs.
"""

from __future__ import annotations

import asyncio
import csv
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Select, and_, func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from homepot import __version__
from homepot.analytics.provenance import left_out_note, real_rows_only, simulated_rows
from homepot.audit.service import Actor, write_audit_log
from homepot.auth.models import User
from homepot.db import utcnow
from homepot.export.pseudonym import MIN_KEY_LENGTH, Pseudonymizer
from homepot.export.tables import (
    SYSTEM_ACTORS,
    CellTransformer,
    ExportTable,
    Transform,
    resolve_tables,
)
from homepot.kit.timeranges import TimeRange, parse_time_bound

ExportFormat = Literal["parquet", "csv"]
FORMATS: tuple[ExportFormat, ...] = ("parquet", "csv")
MANIFEST_FILE = "manifest.json"
DEFAULT_BATCH_SIZE = 5_000
_ZIP_CHUNK = 64 * 1024

PSEUDONYMIZATION_RULES = {
    "user_ids": "user_id columns, and changed_by / initiated_by unless one of "
    f"{sorted(SYSTEM_ACTORS)}, become u_ + 32 hex digits of HMAC-SHA256(export key, id): "
    "stable for the same key, unrelated under another key, not reversible without the key. "
    "Known user ids inside free text and JSON are replaced the same way.",
    "session_ids": "s_ + 32 hex digits of HMAC-SHA256(export key, session id)",
    "ip_addresses": "cut to the network: IPv4 /24, IPv6 /48 (CIDR text, e.g. 203.0.113.0/24)",
    "free_text": "e-mail addresses become [EMAIL]; card numbers keep only their last four "
    "digits; bearer tokens, JWTs, HOMEPOT keys, long hex or random base64 strings and "
    "key=value secrets become [TOKEN]/[REDACTED]; IP addresses are cut as above",
    "json": "values under secret-named keys become [REDACTED]; strings are scrubbed as free text",
    "key_id": f"first 16 hex digits of HMAC-SHA256(export key, 'homepot-export-key-id'); the "
    f"key itself (at least {MIN_KEY_LENGTH} characters) is never written anywhere",
}


class ExportError(Exception):
    """An export that cannot be made as asked; the message says why."""


class ExportProgress(Protocol):
    def table_started(self, table: str, total: int) -> None: ...

    def rows_written(self, table: str, rows: int) -> None: ...


class ColumnInfo(BaseModel):
    name: str
    type: str
    treatment: str


class TableManifest(BaseModel):
    file: str
    rows: int
    simulated_rows_left_out: int = Field(
        description="Rows in range with source 'simulated' not exported (0 when included)"
    )
    time_column: str
    time_filtered: bool
    min_timestamp: datetime | None
    max_timestamp: datetime | None
    columns: list[ColumnInfo]


class TimeRangeInfo(BaseModel):
    """``since <= t`` and ``t <= until`` (``t < until`` unless ``until_inclusive``)."""

    since: datetime | None
    until: datetime | None
    until_inclusive: bool


class ExportManifest(BaseModel):
    export_id: str
    created_at: datetime
    software_version: str
    format: ExportFormat
    time_range: TimeRangeInfo
    key_id: str
    pseudonymization: dict[str, str]
    include_simulated: bool = Field(
        description="Whether rows of the simulation (source 'simulated') were exported"
    )
    simulated_rows_left_out: int = Field(description="Simulated rows not exported, all tables")
    provenance_note: str | None = Field(
        description="Set when simulated rows were left out: how many, and what to do to "
        "include them (it says so plainly when every row was simulated)"
    )
    tables: dict[str, TableManifest]

    def audit_details(self) -> dict[str, Any]:
        """What the audit log keeps about an export (never the key, only its id)."""
        return {
            "tables": list(self.tables),
            "format": self.format,
            "since": _iso(self.time_range.since),
            "until": _iso(self.time_range.until),
            "until_inclusive": self.time_range.until_inclusive,
            "rows": {name: table.rows for name, table in self.tables.items()},
            "include_simulated": self.include_simulated,
            "simulated_rows_left_out": self.simulated_rows_left_out,
            "key_id": self.key_id,
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


@dataclass(frozen=True)
class ExportRequest:
    tables: Sequence[ExportTable]
    time_range: TimeRange
    format: ExportFormat
    # Rows of the simulation are for demos and tests, not for training: out unless asked.
    include_simulated: bool = False


def build_request(
    tables: Iterable[str] | None,
    since: str | None,
    until: str | None,
    fmt: str,
    *,
    include_simulated: bool = False,
) -> ExportRequest:
    """An export request from what a person typed; tables may be comma-separated."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose parquet or csv")
    names = [name for item in tables or () for name in item.split(",")]
    try:
        chosen = resolve_tables(names)
        start = parse_time_bound(since) if since else None
        end = parse_time_bound(until) if until else None
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    return ExportRequest(
        tables=chosen,
        time_range=time_range_of(start, end),
        format=fmt,
        include_simulated=include_simulated,
    )


def write_export_audit(session: AsyncSession, actor: Actor, manifest: ExportManifest) -> None:
    """Record the export in the audit log (in the caller's transaction): what, never the key."""
    write_audit_log(
        session,
        actor,
        action="export.create",
        resource_type="analytics_export",
        resource_id=manifest.export_id,
        details=manifest.audit_details(),
    )


def time_range_of(since: date | datetime | None, until: date | datetime | None) -> TimeRange:
    """``since``..``until`` as typed (a date ``until`` includes that whole UTC day)."""
    try:
        return TimeRange.between(since, until)
    except ValueError as exc:
        message = str(exc).replace("start_date", "since").replace("end_date", "until")
        raise ExportError(message) from None


# --- writers -------------------------------------------------------------------------------


class _TableWriter(Protocol):
    def write(self, rows: list[list[Any]]) -> None: ...

    def close(self) -> None: ...


class _ParquetWriter:
    def __init__(self, path: Path, table: ExportTable) -> None:
        self._schema = table.arrow_schema
        self._writer = pq.ParquetWriter(path, self._schema, compression="zstd")

    def write(self, rows: list[list[Any]]) -> None:
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        arrays = [
            pa.array(values, type=self._schema.field(i).type) for i, values in enumerate(columns)
        ]
        # One row group per page: readers can stream the file as it was written.
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema))

    def close(self) -> None:
        self._writer.close()


# A text cell starting with one of these is read as a formula by spreadsheets (CSV injection:
# "=HYPERLINK(...)" in an error message would run when an analyst opens the file).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet runs: a leading apostrophe before a formula sign."""
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | time):
        return value.isoformat()
    if isinstance(value, str):
        return csv_text(value)
    return value


class _CsvWriter:
    def __init__(self, path: Path, table: ExportTable) -> None:
        self._file: IO[str] = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow([column.name for column in table.columns])

    def write(self, rows: list[list[Any]]) -> None:
        self._csv.writerows([_csv_cell(value) for value in row] for row in rows)

    def close(self) -> None:
        self._file.close()


def _open_writer(fmt: ExportFormat, path: Path, table: ExportTable) -> _TableWriter:
    return _ParquetWriter(path, table) if fmt == "parquet" else _CsvWriter(path, table)


# --- reading -------------------------------------------------------------------------------


def _keyset(table: ExportTable) -> tuple[str, ...]:
    """The export order, made unique by the primary key: a page resumes after its last row."""
    return table.order_by if "id" in table.order_by else (*table.order_by, "id")


@dataclass(frozen=True)
class _Statements:
    rows: Select[Any]  # the rows to export, in export order
    count: Select[Any]  # how many they are
    simulated: Select[Any] | None  # how many simulated rows are left out (None: included)


def _statements(table: ExportTable, time_range: TimeRange, include_simulated: bool) -> _Statements:
    """The rows of ``table`` in ``time_range`` in export order, their count, and the count of
    the simulated rows left out."""
    sql_table = table.model.__table__
    time_column = sql_table.c[table.time_column]
    conditions: list[ColumnElement[bool]] = []
    if table.time_filtered:
        if time_range.start is not None:
            conditions.append(time_column >= time_range.start)
        if time_range.end is not None:
            conditions.append(
                time_column <= time_range.end
                if time_range.end_inclusive
                else time_column < time_range.end
            )
    simulated = None
    if not include_simulated:
        simulated = (
            select(func.count())
            .select_from(sql_table)
            .where(simulated_rows(sql_table), *conditions)
        )
    conditions += real_rows_only(sql_table, include_simulated)
    where = and_(*conditions) if conditions else None
    rows = select(*(sql_table.c[c.name] for c in table.columns)).order_by(
        *(sql_table.c[name] for name in _keyset(table))
    )
    count = select(func.count()).select_from(sql_table)
    if where is not None:
        rows, count = rows.where(where), count.where(where)
    return _Statements(rows, count, simulated)


@dataclass
class _TableRun:
    """One table being written: transforms each page and tracks what the manifest needs."""

    table: ExportTable
    writer: _TableWriter
    transforms: list[Transform]
    time_index: int
    rows: int = 0
    min_timestamp: datetime | None = None
    max_timestamp: datetime | None = None

    def write_page(self, page: Sequence[Sequence[Any]]) -> None:
        transforms = self.transforms
        out = [[f(value) for f, value in zip(transforms, row, strict=True)] for row in page]
        self.writer.write(out)
        self.rows += len(out)
        moments = [row[self.time_index] for row in page if row[self.time_index] is not None]
        if moments:
            low, high = min(moments), max(moments)
            if self.min_timestamp is None or low < self.min_timestamp:
                self.min_timestamp = low
            if self.max_timestamp is None or high > self.max_timestamp:
                self.max_timestamp = high


async def _pages(
    engine: AsyncEngine, table: ExportTable, rows: Select[Any], batch_size: int
) -> AsyncIterator[Sequence[Sequence[Any]]]:
    """``rows`` in pages, each read in its own short transaction and handed over after the
    connection went back to the pool."""
    names = [c.name for c in table.columns]
    keys = _keyset(table)
    columns = [table.model.__table__.c[name] for name in keys]
    key_index = [names.index(name) for name in keys]
    after: tuple[Any, ...] | None = None
    while True:
        statement = rows
        if after is not None:
            # Bound with the columns' own types (UTC timestamps stored as SQLite wants them).
            bound = [literal(v, c.type) for v, c in zip(after, columns, strict=True)]
            # The first column's own bound lets its index start the scan; the row value
            # comparison then resumes exactly after the last row.
            statement = rows.where(columns[0] >= bound[0], tuple_(*columns) > tuple_(*bound))
        async with engine.connect() as connection:
            page = (await connection.execute(statement.limit(batch_size))).all()
        if not page:
            return
        yield page
        if len(page) < batch_size:
            return
        after = tuple(page[-1][i] for i in key_index)


async def export_tables(
    engine: AsyncEngine,
    request: ExportRequest,
    out_dir: Path,
    pseudonymizer: Pseudonymizer,
    *,
    progress: ExportProgress | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ExportManifest:
    """Write one file per table and ``manifest.json`` into ``out_dir`` (created if missing)."""
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    async with engine.connect() as connection:
        user_ids = list(await connection.scalars(select(User.id)))
    transformer = CellTransformer(pseudonymizer, user_ids)
    manifests: dict[str, TableManifest] = {}
    for table in request.tables:
        file_name = f"{table.name}.{request.format}"
        statements = _statements(table, request.time_range, request.include_simulated)
        simulated_left_out = 0
        writer = await asyncio.to_thread(_open_writer, request.format, out_dir / file_name, table)
        run = _TableRun(
            table=table,
            writer=writer,
            transforms=transformer.transforms(table),
            time_index=[c.name for c in table.columns].index(table.time_column),
        )
        try:
            if statements.simulated is not None or progress is not None:
                async with engine.connect() as connection:
                    if statements.simulated is not None:
                        simulated_left_out = int(await connection.scalar(statements.simulated) or 0)
                    if progress is not None:
                        total = int(await connection.scalar(statements.count) or 0)
                if progress is not None:
                    progress.table_started(table.name, total)
            async for page in _pages(engine, table, statements.rows, batch_size):
                await asyncio.to_thread(run.write_page, page)
                if progress is not None:
                    progress.rows_written(table.name, len(page))
        finally:
            await asyncio.to_thread(run.writer.close)
        manifests[table.name] = TableManifest(
            file=file_name,
            rows=run.rows,
            simulated_rows_left_out=simulated_left_out,
            time_column=table.time_column,
            time_filtered=table.time_filtered,
            min_timestamp=run.min_timestamp,
            max_timestamp=run.max_timestamp,
            columns=[
                ColumnInfo(name=c.name, type=c.type_name, treatment=c.treatment.value)
                for c in table.columns
            ],
        )
    counts = {
        name: (entry.rows, entry.simulated_rows_left_out) for name, entry in manifests.items()
    }
    manifest = ExportManifest(
        export_id=uuid.uuid4().hex,
        created_at=utcnow(),
        software_version=__version__,
        format=request.format,
        time_range=TimeRangeInfo(
            since=request.time_range.start,
            until=request.time_range.end,
            until_inclusive=request.time_range.end_inclusive,
        ),
        key_id=pseudonymizer.key_id,
        pseudonymization=PSEUDONYMIZATION_RULES,
        include_simulated=request.include_simulated,
        simulated_rows_left_out=sum(left_out for _, left_out in counts.values()),
        provenance_note=left_out_note(counts, done="exported", doing="export"),
        tables=manifests,
    )
    await asyncio.to_thread(
        (out_dir / MANIFEST_FILE).write_text, manifest.model_dump_json(indent=2) + "\n"
    )
    return manifest


def prepare_out_dir(out_dir: Path, request: ExportRequest, *, force: bool) -> None:
    """Refuse a directory that holds other files unless ``force``; then files of the same
    names as this export's are replaced and others are left alone."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ExportError(
            f"{out_dir} is not empty; choose an empty or new directory, or pass --force to "
            "overwrite this export's files in it"
        )
    for table in request.tables:
        if (out_dir / f"{table.name}.{request.format}").is_dir():
            raise ExportError(f"{out_dir / table.name}.{request.format} is a directory")


# --- the API's zip -------------------------------------------------------------------------


def _zip_directory(source: Path, target: Path) -> None:
    # Parquet files are compressed already; CSV shrinks a lot.
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.iterdir()):
            archive.write(path, arcname=path.name)


@dataclass
class ZipExport:
    manifest: ExportManifest
    file: IO[bytes]

    def chunks(self) -> Iterator[bytes]:
        """The archive in 64 KiB chunks; closes it at the end (or when the client leaves)."""
        try:
            while chunk := self.file.read(_ZIP_CHUNK):
                yield chunk
        finally:
            self.file.close()


async def export_zip(
    engine: AsyncEngine, request: ExportRequest, pseudonymizer: Pseudonymizer
) -> ZipExport:
    """The export as one ZIP archive (the files and manifest.json), read from an open file.

    The files are written to a temporary directory that is gone when this returns: the
    archive lives on as an open, already unlinked file, freed when it is closed.
    """
    workdir = Path(tempfile.mkdtemp(prefix="homepot-export-"))
    try:
        files = workdir / "files"
        manifest = await export_tables(engine, request, files, pseudonymizer)
        archive = workdir / "export.zip"
        await asyncio.to_thread(_zip_directory, files, archive)
        handle = archive.open("rb")
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
    return ZipExport(manifest=manifest, file=handle)
