"""What each layer between a request and PostgreSQL costs for a report's transaction.

A terminal's report reads its device row (with whether jobs wait for it) and writes the
device's ``last_seen_at``: two statements in one transaction. The same transaction is run
here, on one device of a throw-away migrated database, through five stacks:

- ``asyncpg``: a dedicated asyncpg connection (the floor: BEGIN, SELECT, UPDATE, COMMIT);
- ``pool``: the same statements on the driver's connection of a connection checked out of
  SQLAlchemy's pool (``engine.connect()``), what the pool's checkout and return add;
- ``session``: an ``AsyncSession`` as a request gets it (``homepot.db``'s factory): the
  SELECT as a Core statement through the session (no ORM object), the UPDATE on the
  driver's connection (``homepot.fleet.service.write_reported_columns``' way), the
  session's commit and close;
- ``orm``: the report's way today: the device loaded as an ORM object
  (``homepot.fleet.auth``'s statement), its column changed and written on the driver's
  connection, the commit;
- ``orm-flush``: the device written by the ORM's flush at commit (the way before 48a0cfd).

Printed for each: the CPU of this process per transaction (``time.process_time``; the
best and the median of ``--rounds`` rounds, the stacks alternating inside each round) and
the Python function calls per transaction (cProfile over a separate pass), which the
machine's speed and load do not change. PostgreSQL's own CPU is not counted.

    .venv/bin/python benchmarks/transaction_layers.py                # about 1 minute
    .venv/bin/python benchmarks/transaction_layers.py --rounds 5 --transactions 3000
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import uvloop
from _common import DEFAULT_POSTGRES_SERVER, benchmark_database, console
from rich.table import Table as RichTable
from sqlalchemy import Table, select
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

from homepot.db import create_engine, create_session_factory, utcnow
from homepot.device.models import Device
from homepot.fleet.auth import _DEVICE_BY_ID, _JOBS_WAITING
from homepot.fleet.service import write_reported_columns
from homepot.site.models import Site

DEVICE = "pos-layers-1"
DEVICES = Device.__table__
assert isinstance(DEVICES, Table)
# The same row and the same jobs test as the ORM statement, without an ORM entity.
_DEVICE_ROW = select(*DEVICES.c, _JOBS_WAITING).where(DEVICES.c.device_id == DEVICE)
_UPDATE = "UPDATE devices SET last_seen_at = $1, updated_at = $1 WHERE device_id = $2"


def _driver_sql(dialect: Dialect, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """``_DEVICE_BY_ID`` as SQLAlchemy's asyncpg dialect sends it: SQL text and arguments."""
    compiled = _DEVICE_BY_ID.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    assert compiled.positiontup is not None
    processors = compiled._bind_processors
    values = {
        name: compiled.binds[name].effective_value
        for name in compiled.positiontup
        if not compiled.binds[name].required
    } | params
    arguments = []
    for name in compiled.positiontup:
        process = processors.get(name)
        arguments.append(process(values[name]) if callable(process) else values[name])
    return compiled.string, arguments


async def run(url: str, args: argparse.Namespace) -> None:
    engine = create_engine(url)
    factory = create_session_factory(engine)
    async with factory() as session:
        session.add(Site(site_id="site-layers", name="Layers"))
        await session.flush()
        session.add(Device(device_id=DEVICE, site_id="site-layers", name="Till"))
        await session.commit()
    now = utcnow()
    window = {"poll_now": now, "poll_ack_overdue": now - timedelta(seconds=300)}
    sql, arguments = _driver_sql(engine.dialect, {"device_id": DEVICE, **window})
    dedicated = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))

    async def on_asyncpg() -> None:
        async with dedicated.transaction():
            await dedicated.fetchrow(sql, *arguments)
            await dedicated.execute(_UPDATE, utcnow(), DEVICE)

    async def on_pool() -> None:
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver = raw.dbapi_connection.driver_connection  # type: ignore[union-attr]
            async with driver.transaction():
                await driver.fetchrow(sql, *arguments)
                await driver.execute(_UPDATE, utcnow(), DEVICE)

    async def on_session() -> None:
        async with factory() as session:
            (await session.execute(_DEVICE_ROW, window)).first()
            raw = await (await session.connection()).get_raw_connection()
            driver = raw.dbapi_connection.driver_connection  # type: ignore[union-attr]
            await driver.execute(_UPDATE, utcnow(), DEVICE)
            await session.commit()

    def on_orm(*, on_driver: bool) -> Callable[[], Awaitable[None]]:
        """The device as an ORM object, its row written on the driver's connection (the
        report's way) or by the ORM's flush at commit."""

        async def transaction() -> None:
            async with factory() as session:
                row = (await session.execute(_DEVICE_BY_ID, {"device_id": DEVICE, **window})).one()
                row[0].last_seen_at = utcnow()
                if on_driver:
                    await write_reported_columns(session, row[0])
                await session.commit()

        return transaction

    stacks: dict[str, Callable[[], Awaitable[None]]] = {
        "asyncpg": on_asyncpg,
        "pool": on_pool,
        "session": on_session,
        "orm": on_orm(on_driver=True),
        "orm-flush": on_orm(on_driver=False),
    }
    cpu: dict[str, list[float]] = {name: [] for name in stacks}
    calls: dict[str, float] = {}
    try:
        for stack in stacks.values():  # warm: statements prepared, caches filled
            for _ in range(200):
                await stack()
        for round_ in range(args.rounds):
            order = list(stacks.items())
            if round_ % 2:
                order.reverse()
            for name, stack in order:
                start = time.process_time()
                for _ in range(args.transactions):
                    await stack()
                cpu[name].append((time.process_time() - start) / args.transactions)
            console.print(f"round {round_ + 1}/{args.rounds} done")
        for name, stack in stacks.items():
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(500):
                await stack()
            profile.disable()
            calls[name] = pstats.Stats(profile).total_calls / 500  # type: ignore[attr-defined]
    finally:
        await dedicated.close()
        await engine.dispose()

    table = RichTable(
        title=f"one report transaction (SELECT device + jobs waiting, UPDATE, COMMIT), "
        f"{args.rounds} rounds x {args.transactions:,}"
    )
    for column in (
        "stack",
        "CPU µs best",
        "CPU µs median",
        "over asyncpg",
        "calls",
        "over asyncpg",
    ):
        table.add_column(column, justify="right")
    floor = min(cpu["asyncpg"])
    for name in stacks:
        best = min(cpu[name])
        table.add_row(
            name,
            f"{best * 1e6:,.0f}",
            f"{statistics.median(cpu[name]) * 1e6:,.0f}",
            f"{(best - floor) * 1e6:+,.0f}",
            f"{calls[name]:,.0f}",
            f"{calls[name] - calls['asyncpg']:+,.0f}",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transactions", type=int, default=2000, help="per stack and round")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER)
    args = parser.parse_args()
    with benchmark_database("postgresql", args.postgres_server, "layers") as url:
        uvloop.run(run(url, args))


if __name__ == "__main__":
    main()
