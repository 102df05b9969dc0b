"""One process at a time: PostgreSQL advisory locks for the server's singletons and runs.

Two kinds, on one mechanism (``pg_try_advisory_lock`` on a connection of its own, in
autocommit, so that no transaction stays open while the lock is held):

- :class:`Leadership`: which background singletons (watchdog, orchestrator, retention, impact
  evaluator, insights scan, risk scoring, the MQTT uplink without shared subscriptions) this
  process runs. Several server processes on one database (``homepot serve --workers N``, or
  several hosts) each ask before every pass; the one holding the singleton's lock runs it, the
  others skip it. The locks are held for as long as the process lives, on one dedicated
  connection per process; a process that dies (or whose connection dies) loses them at once,
  and another takes them over at its next pass. Before each pass the holder checks that its
  connection still answers: a session-level advisory lock lives exactly as long as its
  session, so a connection that answers still holds every lock it took. It also hands out
  *slots* (:meth:`Leadership.slot`): a small number per process, stable for a worker that is
  restarted, for names that must differ between processes and stay the same across restarts
  (the MQTT client id, whose broker session holds the messages not yet acknowledged).
- :func:`single_run`: one run of a job at a time across processes (retention, which the
  command line runs too): taken for the run, released after it; a second caller skips.

On SQLite (one server process by design) a process is always the leader, and :func:`single_run`
uses a lock inside the process plus, with ``lock_file``, an exclusive ``flock`` so that a
server and a command on one database file do not both write.

Keys: singletons and slots use the two-integer form of the advisory lock (``HOMEPOT_NAMESPACE``,
a CRC-32 of the name), runs the one-bigint form, so the two can never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

logger = logging.getLogger(__name__)

# "HPLD" as a signed 32-bit integer: the first key of every leadership and slot lock.
HOMEPOT_NAMESPACE: Final = int.from_bytes(b"HPLD", "big", signed=True)
# The connection's name in pg_stat_activity (an operator can see who leads).
APPLICATION_NAME: Final = "homepot-leadership"
# How many slots a deployment can have (processes on one database).
MAX_SLOTS: Final = 256

_run_locks: dict[int, asyncio.Lock] = {}


def lock_key(name: str) -> int:
    """The second key of ``name``'s lock: its CRC-32 as a signed 32-bit integer."""
    return int.from_bytes(zlib.crc32(name.encode()).to_bytes(4, "big"), "big", signed=True)


class Leadership:
    """The singletons this process runs, as advisory locks held on one dedicated connection.

    ``await leadership.holds("homepot-orchestrator")`` answers whether this process runs the
    orchestrator's next pass: True when it holds the lock (its connection still answers) or
    has just taken it. Never raises: a database it cannot reach makes it a follower (it cannot
    run a pass anyway), and it tries again at the next call.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._enabled = engine.dialect.name == "postgresql"
        self._connection: AsyncConnection | None = None
        self._held: set[str] = set()
        self._slot: int | None = None
        self._guard = asyncio.Lock()
        # Passes run (and skipped, as a follower) per singleton, for /metrics.
        self.passes: dict[str, int] = {}
        self.skipped: dict[str, int] = {}

    @property
    def distributed(self) -> bool:
        """True on PostgreSQL, where several processes can share the database."""
        return self._enabled

    def leads(self, name: str) -> bool:
        """What the last :meth:`holds` found, without asking the database."""
        return not self._enabled or name in self._held

    async def holds(self, name: str) -> bool:
        if not self._enabled:
            return True
        async with self._guard:
            try:
                connection = await self._alive_connection()
                if name not in self._held:
                    taken = await connection.scalar(
                        text("SELECT pg_try_advisory_lock(:namespace, :key)"),
                        {"namespace": HOMEPOT_NAMESPACE, "key": lock_key(name)},
                    )
                    if taken:
                        self._held.add(name)
                        logger.info("leadership: this process now runs %s", name)
            except Exception as exc:
                await self._lose(f"{type(exc).__name__}: {exc}")
                return False
            return name in self._held

    async def slot(self) -> int:
        """This process's slot: the lowest number no other live process holds (0 on SQLite).

        Taken once and kept for the process's life (taken again on a new connection when the
        old one died). A process restarted after its slot's holder died (or was stopped) gets
        that slot again, so whatever is named after it (an MQTT session) is picked up. Raises
        when the database cannot be reached.
        """
        if not self._enabled:
            return 0
        async with self._guard:
            if self._slot is not None:
                return self._slot
            connection = await self._alive_connection()
            for number in range(MAX_SLOTS):
                taken = await connection.scalar(
                    text("SELECT pg_try_advisory_lock(:namespace, :key)"),
                    {"namespace": HOMEPOT_NAMESPACE, "key": lock_key(f"slot-{number}")},
                )
                if taken:
                    self._slot = number
                    return number
            raise RuntimeError(f"all {MAX_SLOTS} process slots are taken on this database")

    async def resign(self, name: str) -> None:
        """Give ``name`` up (this process cannot do its work now); another may take it."""
        if not self._enabled or name not in self._held:
            return
        async with self._guard:
            self._held.discard(name)
            if self._connection is None:
                return
            try:
                await self._connection.execute(
                    text("SELECT pg_advisory_unlock(:namespace, :key)"),
                    {"namespace": HOMEPOT_NAMESPACE, "key": lock_key(name)},
                )
                logger.info("leadership: this process gave up %s", name)
            except Exception as exc:
                await self._lose(f"{type(exc).__name__}: {exc}")

    def count(self, name: str, *, ran: bool) -> None:
        counter = self.passes if ran else self.skipped
        counter[name] = counter.get(name, 0) + 1

    async def _alive_connection(self) -> AsyncConnection:
        """The dedicated connection, checked: an error here means every lock is gone."""
        if self._connection is None:
            connection = await self._engine.connect()
            try:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.execute(
                    text("SELECT set_config('application_name', :name, false)"),
                    {"name": APPLICATION_NAME},
                )
            except BaseException:
                await connection.close()
                raise
            self._connection = autocommit
            if self._slot is not None:
                await self._take_slot_again(autocommit, self._slot)
            return autocommit
        await self._connection.execute(text("SELECT 1"))
        return self._connection

    async def _take_slot_again(self, connection: AsyncConnection, number: int) -> None:
        taken = await connection.scalar(
            text("SELECT pg_try_advisory_lock(:namespace, :key)"),
            {"namespace": HOMEPOT_NAMESPACE, "key": lock_key(f"slot-{number}")},
        )
        if not taken:
            logger.error(
                "leadership: slot %d was taken by another process while this one's lock"
                " connection was down; both now use names made from it (restart one)",
                number,
            )

    async def _lose(self, reason: str) -> None:
        if self._held:
            logger.warning(
                "leadership: the lock connection failed (%s); %s no longer run here",
                reason,
                ", ".join(sorted(self._held)) or "no singleton",
            )
        self._held.clear()
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.invalidate()
            with contextlib.suppress(Exception):
                await connection.close()

    async def release(self) -> None:
        """Give every lock back (closing the connection ends its session and its locks)."""
        async with self._guard:
            self._held.clear()
            self._slot = None
            connection, self._connection = self._connection, None
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.execute(text("SELECT pg_advisory_unlock_all()"))
                with contextlib.suppress(Exception):
                    await connection.close()


@contextlib.asynccontextmanager
async def single_run(
    engine: AsyncEngine, key: int, *, lock_file: Path | None = None
) -> AsyncIterator[bool]:
    """Yields True when this caller may run, False when another run holds ``key``.

    PostgreSQL: ``pg_try_advisory_lock(key)`` on a connection of its own, for the run.
    SQLite: a lock inside the process, and with ``lock_file`` an exclusive ``flock`` on it.
    """
    if engine.dialect.name == "postgresql":
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            parameters = {"key": key}
            if not await autocommit.scalar(text("SELECT pg_try_advisory_lock(:key)"), parameters):
                yield False
                return
            try:
                yield True
            finally:
                await autocommit.execute(text("SELECT pg_advisory_unlock(:key)"), parameters)
        return
    process_lock = _run_locks.setdefault(key, asyncio.Lock())
    if process_lock.locked():
        yield False
        return
    async with process_lock:
        if lock_file is None:
            yield True
            return
        import fcntl

        with lock_file.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
