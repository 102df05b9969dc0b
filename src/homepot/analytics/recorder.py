"""The one writer of analytics events.

Producers (the request middleware, the error logger, device events, job outcomes, activity
ingestion) call :meth:`Recorder.record`, which redacts the row, puts it on a bounded
in-memory queue and returns at once: it never awaits I/O. A background task writes the queue
in batches, one multi-row ``INSERT ... ON CONFLICT (event_id) DO NOTHING`` per table per batch.

Values are made JSON-safe when an event is recorded (see :func:`json_safe`), so that no
value can fail a batch later, in the database or in the spool.

When the database cannot be reached (an outage as :func:`homepot.db.classify_failure` tells
it: refused, timed out, starting up, shutting down), a batch is retried with the one retry
policy (:mod:`homepot.kit.retry`) and then spilled to an on-disk spool (one JSON-lines file
per batch, fsync'd before it counts). While a spool backlog exists, newer batches join the
end of it, so that replay keeps the original order. The backlog is replayed oldest first as
soon as the database answers again. Every event carries a unique ``event_id``, so a batch
that reached the database before its acknowledgement was lost is not stored twice when
replayed. A batch leaves the queue only once it is written or spooled.

Rows the database refuses as data are rejected one by one and counted (``rejected``); the
rest of their batch is stored. A spool that cannot be written (disk full, read-only) is
counted (``spool_failures``), reported in ``/api/v1/health`` and ``error_logs``, and the
events stay in memory until it can be written again.

At the memory bound (``queue_max_events``) a new event is dropped and counted in
``dropped``: the queue only grows that far when both the database and the spool fail to keep
up, and dropping the newest event there keeps the process alive and its memory bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import logging
import math
import os
import time as monotonic_time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from time import time_ns
from typing import Any

from sqlalchemy import JSON, String, Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.sql.schema import ColumnDefault

from homepot.analytics.models import EVENT_MODELS, AnalyticsEvent, ErrorLog, event_key
from homepot.config import AnalyticsSettings
from homepot.db import Failure, UTCDateTime, classify_failure, new_event_id, utcnow
from homepot.kit.jsonlimits import MAX_DEPTH
from homepot.kit.redaction import REDACTED, TOO_DEEP, is_sensitive_key, mask_text, redact
from homepot.kit.retry import database_write_backoff, retry_async

logger = logging.getLogger(__name__)

Row = dict[str, Any]
QueuedEvent = tuple[str, Row]  # (table name, complete row)

# Rows per INSERT statement: small enough that building one page holds the event loop for
# about a millisecond, large enough to amortise the round trip.
_PAGE_ROWS = 25


@dataclass(frozen=True)
class _TableShape:
    """What the recorder needs to know about one event table, computed once."""

    model: type[AnalyticsEvent]
    table: Table
    columns: tuple[str, ...]
    static_defaults: dict[str, Any]
    json_columns: frozenset[str]
    text_columns: frozenset[str]
    datetime_columns: frozenset[str]
    max_lengths: dict[str, int]

    @classmethod
    def of(cls, model: type[AnalyticsEvent]) -> _TableShape:
        table = model.__table__
        assert isinstance(table, Table)
        columns = tuple(c.name for c in table.columns if c.name != "id")
        static_defaults: dict[str, Any] = {}
        for column in table.columns:
            default = column.default
            if isinstance(default, ColumnDefault) and not default.is_callable:
                static_defaults[column.name] = default.arg
        return cls(
            model=model,
            table=table,
            columns=columns,
            static_defaults=static_defaults,
            json_columns=frozenset(c.name for c in table.columns if isinstance(c.type, JSON)),
            text_columns=frozenset(model.free_text_columns),
            datetime_columns=frozenset(
                c.name for c in table.columns if isinstance(c.type, UTCDateTime)
            ),
            max_lengths={
                c.name: c.type.length
                for c in table.columns
                if isinstance(c.type, String) and c.type.length and c.name != "event_id"
            },
        )

    def complete(self, fields: Row) -> Row:
        """A full, redacted row: every column present, defaults applied, secrets removed."""
        unknown = fields.keys() - set(self.columns)
        if unknown:
            raise ValueError(f"{self.table.name} has no column(s) {', '.join(sorted(unknown))}")
        row: Row = {}
        for name in self.columns:
            value = fields.get(name, self.static_defaults.get(name))
            if value is not None:
                if name in self.json_columns:
                    value = _storable(redact(json_safe(value)))
                elif not isinstance(value, str | int | float | datetime):
                    value = _scalar(value)
                elif isinstance(value, float) and not math.isfinite(value):
                    value = None  # no numeric column stores NaN or Infinity on both backends
                if isinstance(value, str):
                    if name in self.text_columns:
                        value = mask_text(value)
                    value = _storable(value)
                    limit = self.max_lengths.get(name)
                    if limit is not None and len(value) > limit:
                        value = value[:limit]
            row[name] = value
        secret_parameter = self.model.secret_parameter_column
        if secret_parameter and is_sensitive_key(str(row.get(secret_parameter) or "")):
            # The parameter itself is a secret (e.g. a config key "api_key"): keep that it
            # changed, never what it changed from or to.
            for name in self.json_columns:
                if row[name] is not None and name.endswith("_value"):
                    row[name] = {"value": REDACTED}
        if row["event_id"] is None:
            row["event_id"] = new_event_id()
        if row["timestamp"] is None:
            row["timestamp"] = utcnow()
        elif row["timestamp"].tzinfo is None:
            raise ValueError("timestamp must be timezone-aware (UTC)")
        return row


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON (dict, list, str, int, float, bool, None), decided at record
    time so that no value can fail its batch later:

    - ``uuid.UUID`` -> its text (``"0f1e..."`` with dashes); enums -> their value;
    - ``Decimal`` -> float (a non-finite one -> null); float NaN / Infinity -> null;
    - ``datetime``, ``date``, ``time`` -> ISO 8601 text; ``timedelta`` -> seconds (float);
    - ``bytes`` -> UTF-8 text, or ``"base64:..."`` when it is not UTF-8;
    - sets and tuples -> lists (a set sorted when its items can be); other keys -> text;
    - anything else -> ``str(value)``; nesting deeper than ``MAX_DEPTH`` -> ``TOO_DEEP``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= MAX_DEPTH:
        return TOO_DEEP
    if isinstance(value, Mapping):
        return {_key(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, depth + 1) for v in value]
    if isinstance(value, set | frozenset):
        try:
            items = sorted(value)
        except TypeError:
            items = list(value)
        return [json_safe(v, depth + 1) for v in items]
    return _scalar(value)


def _key(key: Any) -> str:
    return key if isinstance(key, str) else str(json_safe(key, MAX_DEPTH - 1))


def _scalar(value: Any) -> Any:
    """One value that is not plain JSON (see :func:`json_safe`)."""
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def _storable(value: Any) -> Any:
    """Strip NUL characters, which PostgreSQL cannot store in text or JSON."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


_PENDING_KEY = "homepot.analytics.pending_events"


def _forget_uncommitted(session: Session, transaction: SessionTransaction) -> None:
    # Runs after after_commit, so whatever is still pending here was rolled back or closed.
    if transaction.parent is None:
        session.info[_PENDING_KEY] = []


_SHAPES: dict[str, _TableShape] = {m.__tablename__: _TableShape.of(m) for m in EVENT_MODELS}


def _encode(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    raise TypeError(f"cannot spool a value of type {type(value).__name__}")


def _decode_row(shape: _TableShape, row: Row) -> Row:
    for name in shape.datetime_columns:
        if isinstance(row.get(name), str):
            row[name] = datetime.fromisoformat(row[name]).astimezone(UTC)
    return row


@dataclass
class RecorderStats:
    enqueued: int = 0
    written: int = 0
    duplicates_skipped: int = 0
    retried: int = 0
    spilled: int = 0
    replayed: int = 0
    dropped: int = 0
    rejected: int = 0
    spool_failures: int = 0
    # Spool writes failing now (reset by the next that succeeds): health says "degraded".
    spool_failures_pending: int = 0
    last_spool_error: str | None = None
    flushes: int = 0
    last_flush_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    written_by_table: dict[str, int] = field(default_factory=dict)


class Spool:
    """Batches that could not be written, one JSON-lines file each, replayed in order.

    Several server processes may share one spool directory. File names start with a
    nanosecond timestamp, so that they sort in the order they were written, and end with
    the writer's pid. A process claims a file for replay by renaming it (atomic), so no two
    processes replay the same batch; a claim left by a process that died is released at
    start-up.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._release_stale_claims()
        # Counted in memory so that the flush loop does not list a directory every tick.
        self._pending = len(self._files())
        self._last_name = 0

    def _files(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob("*.jsonl"))

    def _release_stale_claims(self) -> None:
        if not self.directory.exists():
            return
        for claimed in self.directory.glob("*.replaying"):
            owner = int(claimed.suffixes[-2].lstrip("."))
            if owner == os.getpid() or not _process_alive(owner):
                claimed.rename(claimed.with_name(claimed.name.split(".")[0] + ".jsonl"))

    def pending_files(self) -> int:
        return self._pending

    def has_backlog(self) -> bool:
        return self._pending > 0

    def write(self, batch: list[QueuedEvent]) -> list[QueuedEvent]:
        """Store ``batch`` durably (fsync'd file, then an atomic rename); returns the events
        that could not be encoded, which are left out. Raises OSError when the spool cannot
        be written (disk full, read-only): then nothing of the batch is in it."""
        lines: list[str] = []
        unencodable: list[QueuedEvent] = []
        for table_name, row in batch:
            try:
                lines.append(json.dumps({"t": table_name, "r": row}, default=_encode) + "\n")
            except (TypeError, ValueError):
                unencodable.append((table_name, row))
        if not lines:
            return unencodable
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = max(time_ns(), self._last_name + 1)  # strictly increasing within a process
        self._last_name = stamp
        path = self.directory / f"{stamp:020d}-{os.getpid()}.jsonl"
        tmp = path.with_suffix(".tmp")
        try:
            with tmp.open("w", encoding="utf-8") as handle:
                handle.writelines(lines)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            _fsync_directory(self.directory)  # the rename itself survives a power loss
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        self._pending += 1
        return unencodable

    def check_writable(self) -> None:
        """Raise OSError unless a batch could be spooled now (a probe file, fsync'd)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        probe = self.directory / f".probe-{os.getpid()}.tmp"
        with probe.open("w", encoding="utf-8") as handle:
            handle.write("ok")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()

    def claim_oldest(self) -> tuple[Path, list[QueuedEvent]] | None:
        """Take the oldest batch for replay; None when the spool is empty."""
        for path in self._files():
            claimed = path.with_name(f"{path.stem}.{os.getpid()}.replaying")
            try:
                path.rename(claimed)
            except FileNotFoundError:  # another process claimed it first
                self._pending = max(0, self._pending - 1)
                continue
            batch: list[QueuedEvent] = []
            with claimed.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        item = json.loads(line)
                        batch.append((item["t"], _decode_row(_SHAPES[item["t"]], item["r"])))
            return claimed, batch
        self._pending = 0
        return None

    def done(self, claimed: Path) -> None:
        claimed.unlink()
        self._pending = max(0, self._pending - 1)

    def release(self, claimed: Path) -> None:
        """Put a claimed batch back, unchanged, for a later replay."""
        claimed.rename(claimed.with_name(claimed.name.split(".")[0] + ".jsonl"))


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Recorder:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: AnalyticsSettings,
        *,
        clock: Callable[[], float] = monotonic_time.monotonic,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.enabled = settings.enabled
        self.stats = RecorderStats()
        self.spool = Spool(settings.spool_dir)
        self._queue: deque[QueuedEvent] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._clock = clock
        self._next_replay_at = 0.0
        self._last_drop_warning = 0.0
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._statements = {
            name: insert(shape.table)
            .on_conflict_do_nothing(index_elements=list(event_key(shape.table)))
            # RETURNING counts what was inserted (rowcount is unknown for executemany).
            .returning(shape.table.c.id)
            .execution_options(insertmanyvalues_page_size=_PAGE_ROWS)
            for name, shape in _SHAPES.items()
        }

    # -- producers -------------------------------------------------------------------------

    def record(self, model: type[AnalyticsEvent], /, **fields: Any) -> str | None:
        """Queue one event for writing; returns its event_id (None when recording is off).

        Synchronous and I/O-free, so it is safe on the request path. Raises ValueError for a
        column the table does not have, which is a programming error in the producer.
        """
        if not self.enabled:
            return None
        row = _SHAPES[model.__tablename__].complete(fields)
        return str(row["event_id"]) if self._enqueue(model.__tablename__, row) else None

    def record_after_commit(
        self, session: AsyncSession, model: type[AnalyticsEvent], /, **fields: Any
    ) -> str | None:
        """Queue the event when ``session`` commits; forget it if the session rolls back.

        For events that describe a change made in the same transaction (a device's new
        state, a configuration change): a change that never happened leaves no history.
        The row is completed and redacted now, so a bad field fails here, not at commit.
        """
        if not self.enabled:
            return None
        if not session.in_transaction():
            raise RuntimeError("record_after_commit needs a session inside a transaction")
        row = _SHAPES[model.__tablename__].complete(fields)
        info = session.sync_session.info
        if _PENDING_KEY not in info:
            info[_PENDING_KEY] = []
            event.listen(session.sync_session, "after_commit", self._enqueue_pending)
            event.listen(session.sync_session, "after_transaction_end", _forget_uncommitted)
        info[_PENDING_KEY].append((model.__tablename__, row))
        return str(row["event_id"])

    def _enqueue_pending(self, session: Session) -> None:
        pending: list[QueuedEvent] = session.info.get(_PENDING_KEY, [])
        session.info[_PENDING_KEY] = []
        for table_name, row in pending:
            self._enqueue(table_name, row)

    def _enqueue(self, table_name: str, row: Row) -> bool:
        if len(self._queue) >= self.settings.queue_max_events:
            self.stats.dropped += 1
            now = self._clock()
            if now - self._last_drop_warning > 10:
                self._last_drop_warning = now
                logger.warning(
                    "analytics queue full (%d events): dropping new events; %d dropped so far",
                    len(self._queue),
                    self.stats.dropped,
                )
            return False
        self._queue.append((table_name, row))
        self.stats.enqueued += 1
        if len(self._queue) >= self.settings.batch_size:
            self._wake.set()
        return True

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="analytics-recorder")

    async def stop(self) -> None:
        """Drain everything: write what the database takes, spool the rest."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        """Write (or spool) every queued event now, after trying to replay the spool."""
        async with self._lock:
            self._next_replay_at = 0.0
            await self._drain()

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), timeout=self.settings.flush_interval_seconds
                )
            self._wake.clear()
            try:
                async with self._lock:
                    await self._drain()
            except Exception:  # the writer must outlive any single failure
                logger.exception("analytics recorder flush failed unexpectedly")

    # -- writing ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        if self._clock() >= self._next_replay_at and self.spool.has_backlog():
            await self._replay_spool()
        while self._queue:
            # Looked at, not taken: the batch leaves the queue once written or spooled.
            size = min(self.settings.batch_size, len(self._queue))
            batch = [self._queue[i] for i in range(size)]
            if (
                self.spool.has_backlog() or not await self._write_with_retry(batch)
            ) and not await self._spill(batch):
                break  # neither database nor spool: the events wait in memory
            for _ in range(size):
                self._queue.popleft()
        if self.stats.spool_failures_pending and not self._queue:
            # The database took everything; is the spool back for the next outage?
            try:
                await asyncio.to_thread(self.spool.check_writable)
            except OSError:
                pass
            else:
                self._spool_recovered()
        self.stats.flushes += 1
        self.stats.last_flush_at = utcnow()

    async def _write_with_retry(self, batch: list[QueuedEvent]) -> bool:
        def retried(exc: BaseException) -> None:
            self.stats.retried += 1
            self._note_error(exc)

        try:
            await retry_async(
                lambda: self._write_isolating_bad_rows(batch),
                backoff=database_write_backoff(self.settings.retry_backoff_seconds),
                attempts=self.settings.retry_attempts + 1,
                max_seconds=self.settings.retry_max_seconds,
                # Whatever escaped the row-by-row isolation is not about the data: an outage,
                # a schema not migrated yet, or a surprise; all are worth another try.
                retry_on=lambda _exc: True,
                on_retry=retried,
            )
            return True
        except Exception as exc:
            self._note_error(exc)
        self._next_replay_at = self._clock() + self.settings.spool_replay_interval_seconds
        return False

    async def _spill(self, batch: list[QueuedEvent]) -> bool:
        """Spool ``batch``; False (counted, reported) when the spool cannot be written."""
        try:
            unencodable = await asyncio.to_thread(self.spool.write, batch)
        except OSError as exc:
            self._spool_failed(exc, len(batch))
            return False
        self._spool_recovered()
        for table_name, _row in unencodable:
            self._reject(table_name, "a value could not be written to the spool")
        self.stats.spilled += len(batch) - len(unencodable)
        return True

    def _spool_recovered(self) -> None:
        if self.stats.spool_failures_pending:
            logger.warning("the analytics spool can be written again")
        self.stats.spool_failures_pending = 0

    def _spool_failed(self, exc: OSError, events: int) -> None:
        self.stats.spool_failures += 1
        self.stats.spool_failures_pending += 1
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        self.stats.last_spool_error = message
        self._next_replay_at = self._clock() + self.settings.spool_replay_interval_seconds
        if self.stats.spool_failures_pending == 1:
            # Once per failing stretch: the row itself waits in this queue for the database.
            logger.error(
                "analytics spool %s cannot be written (%s); %d events wait in memory",
                self.spool.directory,
                message,
                events,
            )
            self.record(
                ErrorLog,
                category="system",
                severity="critical",
                error_code="ANALYTICS_SPOOL_UNWRITABLE",
                error_message=f"the analytics spool cannot be written: {message}; events wait "
                f"in memory (at most {self.settings.queue_max_events}) until it can",
                context={"spool_dir": str(self.spool.directory), "events_waiting": events},
            )

    async def _replay_spool(self) -> None:
        while True:
            claimed = await asyncio.to_thread(self.spool.claim_oldest)
            if claimed is None:
                return
            path, batch = claimed
            try:
                await self._write_isolating_bad_rows(batch)
            except Exception as exc:
                await asyncio.to_thread(self.spool.release, path)
                self._note_error(exc)
                self._next_replay_at = self._clock() + self.settings.spool_replay_interval_seconds
                return
            await asyncio.to_thread(self.spool.done, path)
            self.stats.replayed += len(batch)
            logger.info("replayed %d spooled analytics events from %s", len(batch), path.name)

    async def _write_isolating_bad_rows(self, batch: list[QueuedEvent]) -> None:
        """Write a batch; rows the database refuses as data are rejected one by one.

        Without this, one bad row (a value the database cannot take) would fail its batch
        forever and stall every event behind it in the spool. Connection failures are
        raised, so that the whole batch is retried or spooled; rows already written are not
        stored twice when it comes back, thanks to their event ids.
        """
        try:
            await self._write(batch)
            return
        except Exception as exc:
            if classify_failure(exc) is not Failure.DATA:
                raise
            self._note_error(exc)
        for queued in batch:
            try:
                await self._write([queued])
            except Exception as exc:
                if classify_failure(exc) is not Failure.DATA:
                    raise
                self._reject(queued[0], str(exc).splitlines()[0][:300])

    def _reject(self, table_name: str, reason: str) -> None:
        self.stats.rejected += 1
        logger.error("analytics event for %s rejected and dropped: %s", table_name, reason)

    async def _write(self, batch: list[QueuedEvent]) -> None:
        by_table: dict[str, list[Row]] = {}
        for table_name, row in batch:
            by_table.setdefault(table_name, []).append(row)
        inserted_by_table: dict[str, int] = {}
        async with self.engine.begin() as connection:
            for table_name, rows in by_table.items():
                # One cached statement executed with many rows: SQLAlchemy sends it as
                # multi-row INSERTs of _PAGE_ROWS rows each, compiled once per table.
                result = await connection.execute(self._statements[table_name], rows)
                inserted_by_table[table_name] = len(result.all())
        for table_name, inserted in inserted_by_table.items():
            self.stats.written += inserted
            self.stats.duplicates_skipped += len(by_table[table_name]) - inserted
            self.stats.written_by_table[table_name] = (
                self.stats.written_by_table.get(table_name, 0) + inserted
            )

    def _note_error(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        if message != self.stats.last_error:
            logger.warning("analytics write failed: %s", message)
        self.stats.last_error = message
        self.stats.last_error_at = utcnow()

    # -- reporting -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {
            "enabled": self.enabled,
            "running": self._task is not None and not self._task.done(),
            "queued": len(self._queue),
            "queue_capacity": self.settings.queue_max_events,
            "enqueued": s.enqueued,
            "written": s.written,
            "duplicates_skipped": s.duplicates_skipped,
            "retried": s.retried,
            "spilled": s.spilled,
            "replayed": s.replayed,
            "dropped": s.dropped,
            "rejected": s.rejected,
            "spool_failures": s.spool_failures,
            "spool_writable": s.spool_failures_pending == 0,
            "last_spool_error": s.last_spool_error,
            "spool_pending_batches": self.spool.pending_files(),
            "flushes": s.flushes,
            "last_flush_at": s.last_flush_at.isoformat() if s.last_flush_at else None,
            "last_error": s.last_error,
            "last_error_at": s.last_error_at.isoformat() if s.last_error_at else None,
            "written_by_table": dict(s.written_by_table),
        }


_current: Recorder | None = None


def set_recorder(recorder: Recorder | None) -> Recorder | None:
    """Make ``recorder`` the one that module-level producers (log_error, agents) use.

    Returns the previous one, so that a nested app (tests run several) can restore it.
    """
    global _current
    previous, _current = _current, recorder
    return previous


def get_recorder() -> Recorder:
    if _current is None:
        raise RuntimeError(
            "no analytics recorder is running; start the app (or Recorder.start()) first"
        )
    return _current
