"""Engine, session factory and the declarative base; SQLite and PostgreSQL behind one URL."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import traceback
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect, ExceptionContext
from sqlalchemy.exc import (
    DBAPIError,
    InterfaceError,
    InternalError,
    InvalidatePoolError,
    OperationalError,
    ProgrammingError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from homepot.config import DatabaseSettings

if TYPE_CHECKING:
    from alembic.config import Config

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    """A random UUID (version 4) as 32 hex digits: ``uuid.uuid4().hex`` without building the
    UUID object, which was a quarter of what recording an event cost."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return raw.hex()


def new_event_ids(count: int) -> list[str]:
    """``count`` ids as :func:`new_event_id` makes them, from one ``os.urandom`` call (a
    system call per id was most of what an id cost when a writer makes hundreds at once)."""
    raw = bytearray(os.urandom(16 * count))
    for start in range(0, 16 * count, 16):
        raw[start + 6] = (raw[start + 6] & 0x0F) | 0x40  # version 4
        raw[start + 8] = (raw[start + 8] & 0x3F) | 0x80  # the RFC 4122 variant
    digits = raw.hex()
    return [digits[start : start + 32] for start in range(0, 32 * count, 32)]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out, on every backend.

    SQLite keeps no offset, so values are normalised to UTC before storage and tagged as UTC
    when read back. Naive datetimes are refused: they are always a bug upstream.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored; use UTC-aware values")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSON everywhere, JSONB on PostgreSQL. Python None is SQL NULL (not the JSON value null),
# so that "IS NULL" finds what was never set.
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# 64-bit ids on PostgreSQL; SQLite only autoincrements INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSONType}


def create_engine(
    url: str, *, echo: bool = False, settings: DatabaseSettings | None = None
) -> AsyncEngine:
    """The engine for ``url``, with the timeouts that turn a hanging database into an outage."""
    settings = settings or DatabaseSettings()
    if url.startswith("sqlite"):
        busy = settings.sqlite_busy_timeout_seconds
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": busy})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets the recorder write while requests read; foreign keys are off by default.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
            cursor.close()

        _report_outages_as_such(engine)
        return engine
    engine = create_async_engine(
        url,
        echo=echo,
        pool_size=settings.pool_size,
        max_overflow=settings.pool_max_overflow,
        pool_timeout=settings.pool_timeout_seconds,
        # Last in, first out: at a light load the same few connections serve every request
        # and stay recent (see _ping_after_idle); the others idle and are pinged when next used.
        pool_use_lifo=True,
        connect_args={
            "timeout": settings.connect_timeout_seconds,
            "command_timeout": settings.command_timeout_seconds,
        },
    )
    _ping_after_idle(engine, settings.pool_ping_after_idle_seconds)
    _report_outages_as_such(engine)
    return engine


# When a pooled connection was last checked in (time.monotonic()); _JUST_CONNECTED until then.
_LAST_USED = "homepot_last_used"
_JUST_CONNECTED = float("inf")


def _ping_after_idle(engine: AsyncEngine, idle_seconds: float) -> None:
    """Ping a pooled connection before handing it out only when it idled ``idle_seconds``.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout, and its asyncpg dialect wraps the
    ping in a transaction: BEGIN, ping, ROLLBACK, three round trips before every request's
    own (measured: a third of the database round trips of a device report, 6 of 9). A
    connection that answered moments ago is trusted instead; if the database went away in
    between, the request's own statement fails as a disconnect, SQLAlchemy invalidates the
    pool, and the request is answered 503 like any other outage. Connections that idled
    (where dropped connections are found: a restart overnight, a firewall's idle timeout) are
    pinged as before, with the dialect's own ping and error handling, and a dead one is
    replaced along with every connection opened before it.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _connected(_dbapi_connection: Any, record: Any) -> None:
        record.info[_LAST_USED] = _JUST_CONNECTED  # handed out next: nothing to ping

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(_LAST_USED, 0.0) < idle_seconds:
            return  # answered moments ago, or has just been opened
        # The pool's own pre-ping step: False for a dropped connection, raises otherwise.
        if not engine.dialect._do_ping_w_event(dbapi_connection):
            # The pool replaces this connection and every one opened before it.
            raise InvalidatePoolError("a pooled connection was dropped while it idled")
        record.info[_LAST_USED] = time.monotonic()


# --- outages -------------------------------------------------------------------------------


class DatabaseUnreachable(OperationalError):
    """The database could not be reached or did not answer in time (a refused or reset
    connection, a connect or command timeout): an outage, never a fault of the data."""


class Failure(StrEnum):
    """What a failed database operation means to the one who asked."""

    OUTAGE = "outage"  # the database cannot be used now: wait, then try the same again
    DATA = "data"  # the database refused these values: they will never go in
    SCHEMA = "schema"  # the statement does not fit the schema: a bug, or migrations not run


# SQLSTATE classes and codes that say "not now" rather than "not this": connection exceptions
# (08), operator intervention (57P01 admin shutdown ... 57P03 cannot connect now, 57014 a
# statement cancelled by a timeout), insufficient resources (53), system errors (58),
# serialization failures and deadlocks (40001, 40P01), lock not available (55P03).
_OUTAGE_SQLSTATES = ("08", "57P", "57014", "53", "58", "40001", "40P01", "55P03")
# Timeouts of the pool and the driver, and the socket's failures (refused, reset, no route).
_OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    PoolTimeoutError,
)


def sqlstate_of(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE of a failure (wrapped or not), None when there is none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(code, str) and code:
            return code
        current = getattr(current, "orig", None) or current.__cause__
    return None


def classify_failure(exc: BaseException) -> Failure | None:
    """Outage, bad data or a schema problem; None when ``exc`` is not a database failure.

    The one place that decides, for the request path (503 or 409/422) and the recorder
    (retry and spool, or reject the row), so that the two never disagree.
    """
    code = sqlstate_of(exc)
    if code is not None:
        if code.startswith(_OUTAGE_SQLSTATES):
            return Failure.OUTAGE
        if code.startswith(("22", "23")):  # data exception, integrity constraint violation
            return Failure.DATA
        if code.startswith("42"):  # syntax error or access rule violation (no such table)
            return Failure.SCHEMA
    if isinstance(exc, PoolTimeoutError):
        return Failure.OUTAGE
    if isinstance(exc, _OUTAGE_TYPES):
        # Raised by the driver as it is (a refused connect, a timed-out ping): an outage
        # when it came out of the database layer, not from a file or another service.
        return Failure.OUTAGE if _raised_by_the_database_layer(exc) else None
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        return Failure.DATA  # a value SQLAlchemy could not bind (e.g. a naive datetime)
    if not isinstance(exc, DBAPIError):
        return None
    if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
        return Failure.OUTAGE
    if isinstance(exc, InternalError) and code is None:
        # The driver's own state broke (asyncpg "cannot switch to state ...", after a
        # cancelled statement): the connection is unusable, the data is not at fault.
        return Failure.OUTAGE
    if isinstance(exc, ProgrammingError):
        return Failure.SCHEMA
    return Failure.DATA


_DATABASE_MODULES = ("sqlalchemy.", "asyncpg.", "aiosqlite.")


def _raised_by_the_database_layer(exc: BaseException) -> bool:
    for frame, _line in traceback.walk_tb(exc.__traceback__):
        module = str(frame.f_globals.get("__name__", ""))
        if module == __name__ or module.startswith(_DATABASE_MODULES):
            return True
    return False


def _report_outages_as_such(engine: AsyncEngine) -> None:
    """Raise :class:`DatabaseUnreachable` for failures the driver leaves unwrapped.

    A refused connection (``OSError``) or a connect timeout is raised by asyncpg as it is,
    and SQLAlchemy passes it on unwrapped; a command timeout likewise. Wrapped here, every
    caller sees one exception type for "the database is not there".
    """

    def unreachable(exc: BaseException) -> DatabaseUnreachable:
        return DatabaseUnreachable(None, None, exc, connection_invalidated=True)

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except DBAPIError:
            raise
        except Exception as exc:
            dbapi = dialect.loaded_dbapi
            if isinstance(exc, dbapi.Error) or classify_failure(exc) is not Failure.OUTAGE:
                raise
            raise unreachable(exc) from exc

    @event.listens_for(engine.sync_engine, "handle_error")
    def _execute(context: ExceptionContext) -> BaseException | None:
        original = context.original_exception
        if context.sqlalchemy_exception is None and isinstance(original, _OUTAGE_TYPES):
            return unreachable(original)
        return None


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request owns the transaction: commit on success, roll back on any error."""
    factory: async_sessionmaker[AsyncSession] = request.app.state.session_factory
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


# scope="function": commit before the response is sent, so a client never reads stale data
# and a failed commit is reported as an error instead of being lost.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_read_session(request: Request, session: SessionDep) -> AsyncIterator[AsyncSession]:
    """A session on the read replica (``HOMEPOT_DATABASE_READ_URL``) for analytics reads.

    Without a replica it is the request's own session (one connection, one transaction).
    With one, a session of its own that only reads: rolled back at the end. What a replica
    shows lags the primary by its replication delay (usually well under a second).
    """
    factory: async_sessionmaker[AsyncSession] | None = request.app.state.read_session_factory
    if factory is None:
        yield session
        return
    async with factory() as reader:
        try:
            yield reader
        finally:
            await reader.rollback()


ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]


MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def migrations_config(url: str) -> Config:
    """Alembic's configuration for ``url``, from the migrations inside the installed package.

    Built in code, not read from ``alembic.ini``: a wheel carries no repository files, and
    ``homepot db init`` must work from any install (the repository's ``alembic.ini`` points to
    the same directory for developers).
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.set_main_option("timezone", "UTC")
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def run_migrations(url: str, revision: str = "head") -> None:
    """Apply the Alembic migrations to ``url`` (the only way the schema is made)."""
    from alembic import command

    config = migrations_config(url)

    # env.py runs its own event loop; from inside a running loop, give it a thread.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        command.upgrade(config, revision)
        return
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            command.upgrade(config, revision)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=guarded)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
