"""The one writer of analytics events.

Producers (the error logger, device events, job outcomes, activity ingestion) call
:meth:`Recorder.record`, which redacts the row, puts it on a bounded in-memory queue and
returns at once: it never awaits I/O. The request middleware, on every request, hands over
raw values instead (:meth:`Recorder.record_unbuilt`): the writer builds
and redacts their rows a batch at a time (:mod:`homepot.analytics.request_log`).

A background task writes the queue in batches. On PostgreSQL each table's rows go in with
COPY: straight into the table, and when an event of the batch is stored already, into a
temporary staging table and one ``INSERT ... SELECT ... ON CONFLICT (<key>) DO NOTHING``; on
SQLite with multi-row ``INSERT ... ON CONFLICT (<key>) DO NOTHING``, one transaction per
batch. ``<key>`` is the table's unique key holding ``event_id`` as the table's metadata
declares it (:func:`~homepot.analytics.copy_writer.conflict_columns`: ``event_id`` alone,
or with ``timestamp`` where a partitioned table needs it in every key). The COPY statements
are in :mod:`homepot.analytics.copy_writer`.

Values are made JSON-safe when an event is recorded (see
:func:`~homepot.analytics.row_shapes.json_safe`; each table's shape is in
:mod:`homepot.analytics.row_shapes`), so that no value can fail a batch later, in the
database or in the spool.

When the database cannot be reached (an outage as :func:`homepot.db.classify_failure` tells
it: refused, timed out, starting up, shutting down), a batch is retried with the one retry
policy (:mod:`homepot.kit.retry`) and then spilled to an on-disk spool
(:mod:`homepot.analytics.spool`: one JSON-lines file per batch, fsync'd before it counts).
While a spool backlog exists, newer batches join the end of it, so that replay keeps the
original order. The backlog is replayed oldest first as
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
import contextlib
import logging
import time as monotonic_time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError as SQLDataError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

# ``X as X``: names other modules, tests and benchmarks import from here, re-exported.
from homepot.analytics.copy_writer import _STAGES_KEY, _copy_records, _CopyStatements
from homepot.analytics.copy_writer import conflict_columns as conflict_columns
from homepot.analytics.models import AnalyticsEvent, ErrorLog
from homepot.analytics.row_shapes import _SHAPES as _SHAPES
from homepot.analytics.row_shapes import QueuedEvent
from homepot.analytics.row_shapes import Row as Row
from homepot.analytics.spool import Spool
from homepot.config import AnalyticsSettings
from homepot.db import Failure, classify_failure, utcnow
from homepot.kit.retry import database_write_backoff, retry_async

logger = logging.getLogger(__name__)

# An event handed over unbuilt by a producer on a hot path (the request log): the raw values
# its table's row builder (see register_row_builder) turns into rows when the writer takes
# them, many at a time, instead of on the request path.
Unbuilt = tuple[Any, ...]
RowBuilder = Callable[[list[Unbuilt]], list[Row]]
_ROW_BUILDERS: dict[str, RowBuilder] = {}

# Rows per INSERT statement: small enough that building one page holds the event loop for
# about a millisecond, large enough to amortise the round trip.
_PAGE_ROWS = 25
# PostgreSQL: batches in flight at once (one being copied, the next built and waiting for
# it), so that Python builds a batch while the database copies the one before it.
_WRITES_IN_FLIGHT = 2
# PostgreSQL: while a backlog waits, a batch takes up to this many times ``batch_size``
# rows (half the backlog at most), so that a burst costs fewer COPYs and commits; a queue
# that keeps up still writes ``batch_size`` at a time.
_BACKLOG_BATCH_FACTOR = 8
_BACKLOG_BATCH_MAX_ROWS = 10_000

_PENDING_KEY = "homepot.analytics.pending_events"


def _forget_uncommitted(session: Session, transaction: SessionTransaction) -> None:
    # Runs after after_commit, so whatever is still pending here was rolled back or closed.
    if transaction.parent is None:
        session.info[_PENDING_KEY] = []


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


@dataclass
class _Write:
    """A batch on its way out of the queue: ``written`` resolves to whether the database
    took it (False, without trying, when a spool backlog exists or the batch before it was
    not written: it then joins the spool's end, to keep the order)."""

    batch: list[QueuedEvent]
    written: asyncio.Future[bool]

    @property
    def size(self) -> int:
        return len(self.batch)

    async def settle(self, recorder: Recorder) -> bool:
        """Whether the batch left the queue's care: written, or else spooled."""
        if await self.written:
            return True
        return await recorder._spill(self.batch)


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
        self._queue: deque[tuple[str, Row | Unbuilt]] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        # Flushes under way (see flush): referenced until done, whoever stopped waiting.
        self._flushes: set[asyncio.Future[None]] = set()
        self._stopping = False
        self._clock = clock
        self._next_replay_at = 0.0
        self._last_drop_warning = 0.0
        self._copy = engine.dialect.name == "postgresql"
        self._copy_statements = {name: _CopyStatements(shape) for name, shape in _SHAPES.items()}
        insert = postgresql.insert if self._copy else sqlite.insert
        self._statements = {
            name: insert(shape.table)
            .on_conflict_do_nothing(index_elements=list(conflict_columns(shape.table)))
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

    def record_many(
        self,
        model: type[AnalyticsEvent],
        /,
        rows: list[Row],
        *,
        storable: frozenset[str] = frozenset(),
    ) -> int:
        """Queue many events of one table at once; returns how many were queued (the rest
        were dropped at the memory bound and counted, as :meth:`record` does one by one).

        The fast path for a batch (a device's 500 samples): ``storable`` names columns
        whose values the caller has already validated as storable as they are (finite
        floats, ints, booleans, None, timezone-aware datetimes), so they are not looked at
        again; every other column given is completed as :meth:`record` does (redacted,
        JSON made safe, cut to its column). Every row must carry the same columns, with an
        ``event_id`` and a ``timestamp``. Raises ValueError for a column the table lacks.
        """
        if not self.enabled or not rows:
            return 0
        shape = _SHAPES[model.__tablename__]
        columns = rows[0].keys()
        if not columns <= shape.column_set:
            unknown = columns - shape.column_set
            raise ValueError(f"{shape.table.name} has no column(s) {', '.join(sorted(unknown))}")
        if "event_id" not in columns or "timestamp" not in columns:
            raise ValueError("record_many needs an event_id and a timestamp in every row")
        checked = [name for name in columns if name not in storable]
        if "timestamp" not in storable:
            checked.remove("timestamp")  # checked below, with the event id
        template = shape.template
        complete = shape.complete_value
        room = max(0, self.settings.queue_max_events - len(self._queue))
        table_name = model.__tablename__
        queued: list[QueuedEvent] = []
        secret_parameter = shape.model.secret_parameter_column is not None
        for fields in rows[:room]:
            if len(fields) != len(columns):
                raise ValueError("record_many needs the same columns in every row")
            if secret_parameter:  # whether a row holds a secret depends on the row
                row = shape.complete(fields)
            else:
                row = template | fields
                for name in checked:
                    row[name] = complete(name, row[name])
            timestamp = row["timestamp"]
            if timestamp is None or timestamp.tzinfo is None or row["event_id"] is None:
                raise ValueError("record_many needs an event_id and an aware timestamp")
            queued.append((table_name, row))
        self._queue.extend(queued)
        self.stats.enqueued += len(queued)
        if len(queued) < len(rows):
            self.stats.dropped += len(rows) - len(queued)
            now = self._clock()
            if now - self._last_drop_warning > 10:
                self._last_drop_warning = now
                logger.warning(
                    "analytics queue full (%d events): dropping new events; %d dropped so far",
                    len(self._queue),
                    self.stats.dropped,
                )
        if len(self._queue) >= self.settings.batch_size:
            self._wake.set()
        return len(queued)

    def record_unbuilt(self, table_name: str, values: Unbuilt) -> bool:
        """Queue one event as raw ``values`` that the table's row builder (registered with
        :func:`register_row_builder`) turns into a row when the writer takes it: a request
        pays for an append, and the building (redaction, event id, ...) is done in batches.
        False when recording is off or the event was dropped at the memory bound.
        """
        if not self.enabled:
            return False
        if table_name not in _ROW_BUILDERS:
            raise ValueError(f"no row builder is registered for {table_name}")
        return self._enqueue(table_name, values)

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

    def _enqueue(self, table_name: str, row: Row | Unbuilt) -> bool:
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
        """Write (or spool) every queued event now, after trying to replay the spool.

        The flush runs as a task of its own: a caller cancelled while it waits (a request
        whose client went away, a timeout) does not cancel it. A database call cut off in
        the middle can leave its connection wedged (aiosqlite: forever, holding the lock
        every later flush waits for), so no write is ever cancelled halfway.
        """
        flushing = asyncio.ensure_future(self._flush_now())
        self._flushes.add(flushing)
        flushing.add_done_callback(self._flushes.discard)
        await asyncio.shield(flushing)

    async def _flush_now(self) -> None:
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
                    await self._drain(everything=self._stopping)
            except Exception:  # the writer must outlive any single failure
                logger.exception("analytics recorder flush failed unexpectedly")

    # -- writing ---------------------------------------------------------------------------

    async def _drain(self, *, everything: bool = True) -> None:
        """Write (or spool) the queue. A tick of the background writer (``everything``
        False) writes what is queued when it starts and then only full batches: events
        that trickle in while it writes wait for the next tick, instead of each paying for
        a transaction of its own.

        On PostgreSQL the next batch is built (Python) while the one before it is being
        copied (the database): up to ``_WRITES_IN_FLIGHT`` batches are in flight, written
        one after the other. Batches leave the queue in order, once written or spooled.
        """
        if self._clock() >= self._next_replay_at and self.spool.has_backlog():
            await self._replay_spool()
        owed = len(self._queue)  # queued when this drain started
        in_flight: deque[_Write] = deque()
        writes: asyncio.Queue[_Write | None] = asyncio.Queue()
        writer = asyncio.create_task(self._write_in_order(writes))
        try:
            await self._drain_batches(in_flight, writes, owed, everything=everything)
            writes.put_nowait(None)
            await writer
        finally:
            # Cancelled (or a surprise): the writes not done are abandoned; their events stay
            # queued and are written again later (their event ids keep them once).
            writer.cancel()
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

    async def _drain_batches(
        self,
        in_flight: deque[_Write],
        writes: asyncio.Queue[_Write | None],
        owed: int,
        *,
        everything: bool,
    ) -> None:
        depth = _WRITES_IN_FLIGHT if self._copy else 1
        stopped = False
        while True:
            ahead = sum(write.size for write in in_flight)
            waiting = len(self._queue) - ahead
            wanted = (
                not stopped
                and waiting > 0
                and (everything or owed > 0 or waiting >= self.settings.batch_size)
            )
            if wanted and len(in_flight) < depth:
                # Looked at, not taken: the batch leaves the queue once written or spooled.
                taken = min(self._batch_rows(waiting), waiting)
                batch = self._built_batch(taken, start=ahead)
                owed -= taken  # built or rejected; rejected events left the queue
                if batch:
                    in_flight.append(self._start_write(batch, writes))
                continue
            if not in_flight:
                break
            head = in_flight[0]
            settled = await head.settle(self)
            in_flight.popleft()
            if settled:
                for _ in range(head.size):
                    self._queue.popleft()
                continue
            # Neither database nor spool: the head's events wait in memory, and so does every
            # batch behind it that was not written either.
            stopped = True
            kept = head.size
            while in_flight:
                write = in_flight.popleft()
                if await write.written:
                    self._remove(kept, write.size)  # written after all: not kept twice
                else:
                    kept += write.size

    def _batch_rows(self, waiting: int) -> int:
        """The rows the next batch takes of the ``waiting`` ones: ``batch_size``, and on
        PostgreSQL more while a backlog waits (half of it, at most ``_BACKLOG_BATCH_FACTOR``
        times ``batch_size``)."""
        size = self.settings.batch_size
        if not self._copy or waiting < 2 * size:
            return size
        return max(size, min(waiting // 2, size * _BACKLOG_BATCH_FACTOR, _BACKLOG_BATCH_MAX_ROWS))

    def _start_write(
        self, batch: list[QueuedEvent], writes: asyncio.Queue[_Write | None]
    ) -> _Write:
        """Hand ``batch`` to the drain's writer (:meth:`_write_in_order`), or, with a spool
        backlog, mark it for the spool's end (the order is kept). Settled by
        :meth:`_Write.settle`."""
        write = _Write(batch, asyncio.get_running_loop().create_future())
        if self.spool.has_backlog():
            write.written.set_result(False)
        else:
            writes.put_nowait(write)
        return write

    async def _write_in_order(self, writes: asyncio.Queue[_Write | None]) -> None:
        """Write the batches one after the other, in the queue's order (raw ids follow the
        order of commits, homepot.analytics.rollups). The next batch is waiting when one is
        written, so its COPY starts at once, and the drain builds the one after it while the
        database takes this one. After a batch that was not written, the rest are not tried
        (they join the spool behind it)."""
        failed = False
        while (write := await writes.get()) is not None:
            written = not failed and await self._write_with_retry(write.batch)
            failed = not written
            if not write.written.done():  # cancelled: its drain stopped waiting
                write.written.set_result(written)

    def _remove(self, start: int, count: int) -> None:
        """Take ``count`` queued events off the queue from position ``start``."""
        queue = self._queue
        queue.rotate(-start)
        for _ in range(count):
            queue.popleft()
        queue.rotate(start)

    def _built_batch(self, size: int, *, start: int = 0) -> list[QueuedEvent]:
        """The ``size`` queued events from position ``start`` as rows. Unbuilt events are
        built here, one call of their table's builder for all of them, and replace their raw
        values in the queue: a batch written again (a retry, the spool) keeps its rows and
        event ids. An event its builder cannot build is rejected (counted) and leaves the
        queue; the batch is then shorter than ``size``.
        """
        queue = self._queue
        batch: list[tuple[str, Any]] = [queue[start + i] for i in range(size)]
        unbuilt: dict[str, list[int]] = {}
        for position, (table_name, row) in enumerate(batch):
            if type(row) is not dict:
                unbuilt.setdefault(table_name, []).append(position)
        failed: list[int] = []
        for table_name, positions in unbuilt.items():
            build = _ROW_BUILDERS[table_name]
            try:
                rows = build([batch[i][1] for i in positions])
            except Exception:  # one bad event must not stall the queue: build them one by one
                rows = []
                for position in positions:
                    try:
                        rows.extend(build([batch[position][1]]))
                    except Exception as exc:
                        self._reject(table_name, f"{type(exc).__name__}: {exc}"[:300])
                        failed.append(position)
                        rows.append({})
            for position, row in zip(positions, rows, strict=True):
                batch[position] = queue[start + position] = (table_name, row)
        if failed:
            # Highest first, so that the positions of the others stay where they are.
            for position in sorted(failed, reverse=True):
                del queue[start + position]
            skip = set(failed)
            batch = [queued for position, queued in enumerate(batch) if position not in skip]
        return batch

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
        if self._copy:
            await self._copy_rows(by_table)
            return
        inserted_by_table = await self._insert_rows(by_table)
        for table_name, inserted in inserted_by_table.items():
            self._count_written(table_name, len(by_table[table_name]), inserted)

    def _count_written(self, table_name: str, offered: int, inserted: int) -> None:
        self.stats.written += inserted
        self.stats.duplicates_skipped += offered - inserted
        self.stats.written_by_table[table_name] = (
            self.stats.written_by_table.get(table_name, 0) + inserted
        )

    async def _insert_rows(self, by_table: dict[str, list[Row]]) -> dict[str, int]:
        inserted_by_table: dict[str, int] = {}
        async with self.engine.begin() as connection:
            for table_name, rows in by_table.items():
                # One cached statement executed with many rows: SQLAlchemy sends it as
                # multi-row INSERTs of _PAGE_ROWS rows each, compiled once per table.
                result = await connection.execute(self._statements[table_name], rows)
                inserted_by_table[table_name] = len(result.all())
        return inserted_by_table

    async def _copy_rows(self, by_table: dict[str, list[Row]]) -> None:
        """PostgreSQL: each table's rows with COPY.

        Straight into the table first, one COPY on its own (a statement is all or nothing):
        new events, nearly all of them, go in at COPY's own speed and in one round trip.
        When one of them is stored already (a device sent a batch again, a replayed spool
        file, a retry after a lost commit acknowledgement), the unique key refuses the COPY,
        and the rows take the idempotent path in a transaction of their own: COPY into the
        staging table, then one INSERT ... SELECT ... ON CONFLICT DO NOTHING. A batch whose
        write fails half-way is written again whole; what went in is skipped then.
        """
        async with self.engine.connect() as connection:
            raw = (await connection.get_raw_connection()).driver_connection
            assert raw is not None
            try:
                await self._ensure_stages(connection, raw, by_table.keys())
                for table_name, rows in by_table.items():
                    statements = self._copy_statements[table_name]
                    for columns, records in statements.records_by_columns(rows).items():
                        inserted = await self._copy_group(raw, statements, columns, records)
                        self._count_written(table_name, len(records), inserted)
            except SQLDataError:
                raise
            except BaseException as exc:
                if classify_failure(exc) is Failure.OUTAGE or not isinstance(
                    exc, asyncpg.PostgresError
                ):
                    # The driver's connection may be broken; the pool must not hand it out.
                    await connection.invalidate()
                raise

    async def _copy_group(
        self,
        raw: Any,
        statements: _CopyStatements,
        columns: tuple[str, ...],
        records: list[tuple[Any, ...]],
    ) -> int:
        """Store one group of records (rows with the same columns); returns how many were
        new."""
        try:
            await _copy_records(raw, statements.table, columns, records)
            return len(records)
        except asyncpg.UniqueViolationError:
            pass  # an event of the group is stored already
        # ON COMMIT DELETE ROWS empties the staging table when this transaction ends.
        async with raw.transaction():
            await _copy_records(raw, statements.stage, columns, records)
            status = await raw.execute(statements.insert(columns))
        return int(status.rsplit(" ", 1)[-1])

    async def _ensure_stages(
        self, connection: AsyncConnection, raw: Any, table_names: Iterable[str]
    ) -> None:
        """Create the staging tables this connection lacks (temporary tables live as long
        as their connection; the pool forgets ``info`` when it opens a new one)."""
        created: set[str] = connection.info.setdefault(_STAGES_KEY, set())
        for table_name in table_names:
            if table_name not in created:
                await raw.execute(self._copy_statements[table_name].create_stage)
                created.add(table_name)

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


def register_row_builder(table_name: str, builder: RowBuilder) -> None:
    """Make ``builder`` turn the raw values given to :meth:`Recorder.record_unbuilt` for
    ``table_name`` into complete, redacted rows (one row per value tuple, in order)."""
    if table_name not in _SHAPES:
        raise ValueError(f"{table_name} is not an analytics event table")
    _ROW_BUILDERS[table_name] = builder


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
