"""Hot statements run on asyncpg's own connection, inside the session's transaction.

On PostgreSQL a statement executed through SQLAlchemy (session or Core, it made no
difference) cost ~0.75 ms of the server's CPU on the 2026-12-02 host; the same statement
on the asyncpg connection underneath cost ~0.37 ms (benchmarks/README.md, "2026-12-02,
morning"). A terminal's report writes two rows (its heartbeat with the
message's receipt, and the device row); a heartbeat on its own and a telemetry batch write
the device row (homepot.fleet.service.write_reported_columns): those go this way.

:class:`DriverStatement` compiles a Core statement once with SQLAlchemy's own asyncpg
dialect (the same SQL text, casts and bind processing as SQLAlchemy would send) and runs it
with the driver on the session's connection, in the transaction the session already holds.
When that connection is not in a transaction yet (nothing was read in it so far), the
statement goes through SQLAlchemy as usual: this path never commits anything on its own.

A failure is reported as SQLAlchemy reports it (the same ``DBAPIError`` subclasses, with
``connection_invalidated`` for a lost connection, which is then invalidated), so the
request path answers an outage with 503 and bad data with 409/422 exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase


class DriverStatement:
    """An INSERT, UPDATE or DELETE with named bind parameters, run on asyncpg when it can
    be."""

    def __init__(self, statement: UpdateBase) -> None:
        self.statement = statement
        self._sql = ""
        self._names: tuple[str, ...] = ()
        self._processors: tuple[Callable[[Any], Any] | None, ...] = ()
        # Values the statement carries itself (a literal compared with, e.g. status_1).
        self._defaults: dict[str, Any] = {}

    def _compile(self, dialect: Dialect) -> None:
        compiled = self.statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        assert compiled.positiontup is not None
        processors = compiled._bind_processors
        self._names = tuple(compiled.positiontup)
        # A scalar's processor is a callable (a tuple type would have a sequence of them,
        # which no statement here binds).
        self._processors = tuple(_scalar_processor(processors.get(name)) for name in self._names)
        binds = compiled.binds
        self._defaults = {
            name: binds[name].effective_value for name in self._names if not binds[name].required
        }
        self._sql = compiled.string

    async def fetchval(self, session: AsyncSession, params: Mapping[str, Any]) -> Any:
        """The first column of the first row the statement returns (None for none)."""
        connection = await session.connection()
        if connection.dialect.name != "postgresql":
            return (await connection.execute(self.statement, dict(params))).scalar()
        adapted = (await connection.get_raw_connection()).dbapi_connection
        driver = getattr(adapted, "driver_connection", None)
        if driver is None or not driver.is_in_transaction():
            return (await connection.execute(self.statement, dict(params))).scalar()
        if not self._sql:
            self._compile(connection.dialect)
        values = self._defaults | dict(params) if self._defaults else params
        args = [
            values[name] if process is None else process(values[name])
            for name, process in zip(self._names, self._processors, strict=True)
        ]
        try:
            return await driver.fetchval(self._sql, *args)
        except Exception as error:
            raise await _as_sqlalchemy_error(connection, adapted, self._sql, error) from error


def _scalar_processor(processor: object) -> Callable[[Any], Any] | None:
    if processor is None or callable(processor):
        return processor
    raise TypeError("a tuple-typed bind parameter cannot be run on the driver's connection")


async def _as_sqlalchemy_error(
    connection: AsyncConnection, adapted: Any, sql: str, error: Exception
) -> Exception:
    """``error`` as SQLAlchemy would have raised it for this statement; the connection is
    invalidated when it was lost, so that the pool never hands it out again."""
    dialect = connection.dialect
    try:
        adapted._handle_exception(error)  # raises the dialect's DBAPI error for it
    except Exception as translated:
        if not isinstance(translated, dialect.loaded_dbapi.Error):
            return translated  # not the driver's (OSError, TimeoutError): as it is
        lost = dialect.is_disconnect(translated, adapted, None)
        if lost:
            await connection.invalidate()
        return DBAPIError.instance(
            sql,
            None,
            translated,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=lost,
            dialect=dialect,
        )
    return error
