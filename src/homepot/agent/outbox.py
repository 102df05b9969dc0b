"""A device's on-disk retry queue: nothing it reports is lost while the server is away.

Every message a device must deliver (telemetry samples, job results) is first written here,
then sent, then deleted once the server has answered. Storage is one SQLite file (stdlib
``sqlite3``, ``synchronous=FULL``: every append is fsync'd before it returns). Messages are
sent oldest first; the server dedupes by event id and execution id, so a message sent twice
(the answer was lost on the way back) is stored once.

The queue is bounded (``max_messages``). At the bound the OLDEST message is dropped to make
room: after a long outage the recent state of a terminal is worth more than its oldest
minutes, and the protocol refuses samples older than eight days anyway. Every drop is counted
in a persistent counter (``dropped``), and so are messages the server refused as invalid
(``rejected``): those can never succeed and must not block the queue behind them.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MAX_MESSAGES = 100_000


@dataclass(frozen=True)
class QueuedMessage:
    id: int
    kind: str  # "telemetry" (one MetricSample) or "result" (one JobResult)
    payload: dict[str, Any]


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    dropped: int  # removed at the size bound, oldest first
    rejected: int  # refused by the server as invalid (a 4xx other than 401)
    sent: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('dropped', 0), ('rejected', 0), ('sent', 0);
"""


class Outbox:
    """The queue; its blocking methods run in a worker thread through the ``a*`` wrappers."""

    def __init__(self, path: Path, *, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- blocking API ------------------------------------------------------------------------

    def put(self, kind: str, payload: dict[str, Any]) -> int:
        """Append one message (durable when this returns); returns how many were dropped."""
        return self.put_many([(kind, payload)])

    def put_many(self, messages: list[tuple[str, dict[str, Any]]]) -> int:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO messages (kind, payload) VALUES (?, ?)",
                [(kind, json.dumps(payload, separators=(",", ":"))) for kind, payload in messages],
            )
            (pending,) = self._db.execute("SELECT count(*) FROM messages").fetchone()
            excess = max(0, int(pending) - self.max_messages)
            if excess:
                self._db.execute(
                    "DELETE FROM messages WHERE id IN "
                    "(SELECT id FROM messages ORDER BY id LIMIT ?)",
                    (excess,),
                )
                self._bump("dropped", excess)
            return excess

    def oldest(self, limit: int) -> list[QueuedMessage]:
        with self._lock:
            cursor = self._db.execute(
                "SELECT id, kind, payload FROM messages ORDER BY id LIMIT ?", (limit,)
            )
            return [QueuedMessage(row[0], row[1], json.loads(row[2])) for row in cursor]

    def delivered(self, ids: list[int]) -> None:
        self._remove(ids, "sent")

    def refused(self, ids: list[int]) -> None:
        self._remove(ids, "rejected")

    def stats(self) -> OutboxStats:
        with self._lock:
            (pending,) = self._db.execute("SELECT count(*) FROM messages").fetchone()
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return OutboxStats(
            pending=pending,
            dropped=counters["dropped"],
            rejected=counters["rejected"],
            sent=counters["sent"],
        )

    def __len__(self) -> int:
        return self.stats().pending

    def _remove(self, ids: list[int], counter: str) -> None:
        if not ids:
            return
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])
            self._bump(counter, len(ids))

    def _bump(self, counter: str, by: int) -> None:
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, counter))

    # -- async wrappers: the event loop never waits on the disk ----------------------------

    async def aput(self, kind: str, payload: dict[str, Any]) -> int:
        return await asyncio.to_thread(self.put, kind, payload)

    async def aoldest(self, limit: int) -> list[QueuedMessage]:
        return await asyncio.to_thread(self.oldest, limit)

    async def adelivered(self, ids: list[int]) -> None:
        await asyncio.to_thread(self.delivered, ids)

    async def arefused(self, ids: list[int]) -> None:
        await asyncio.to_thread(self.refused, ids)
