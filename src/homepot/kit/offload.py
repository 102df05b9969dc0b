"""The pure computation of a background pass, off the event loop that serves requests.

The server's passes (the anomaly scan, risk scoring, API health) read the database, then
compute for a second or more in numpy and plain Python, then write. While they computed on
the event loop no request was served: a device's chart waited up to 1.7 s behind a pass
(benchmarks/README.md, queries.py and loop_lag.py). A pass now keeps its database I/O on the
loop and hands plain data (arrays, tuples, dataclasses; never an ORM object or a session) to
:func:`compute`, which runs it on one worker thread of this process.

One thread, not more: the passes run one after another anyway, and a pure-Python loop holds
the GIL, so a second compute thread would only take turns with the first. While the thread
holds the GIL the loop gets it back every ``sys.getswitchinterval()`` (5 ms), which is what
bounds a request's wait; numpy releases the GIL in its large array operations, so much of
the work does not compete at all.

:func:`inline_computation` runs the computation on the loop again, as before: the baseline
of benchmarks/loop_lag.py and of the test that shows the loop stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.base import Executable

P = ParamSpec("P")
T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None
_inline = contextvars.ContextVar("homepot_inline_computation", default=False)


def _compute_executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="homepot-compute")
    return _executor


async def compute(function: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``function(*args, **kwargs)`` on the compute thread; the caller awaits its result
    (its exception is raised here). The arguments must not be touched by anyone else until
    it returns: they are handed over, not copied."""
    call = functools.partial(function, *args, **kwargs)
    if _inline.get():
        return call()
    return await asyncio.get_running_loop().run_in_executor(_compute_executor(), call)


@contextlib.contextmanager
def inline_computation() -> Iterator[None]:
    """Within this block (this task and the tasks it starts), :func:`compute` runs its
    function on the event loop and :func:`fetch_in_slices` converts all rows at once, as
    the passes did before: for measuring the difference."""
    token = _inline.set(True)
    try:
        yield
    finally:
        _inline.reset(token)


# Rows converted per turn of the event loop by fetch_in_slices: ~10-20 ms of SQLAlchemy's
# result processing (type conversion) on a loaded machine.
FETCH_SLICE_ROWS = 2000


async def stream_in_slices(
    executor: AsyncSession | AsyncConnection,
    statement: Executable,
    *,
    slice_rows: int = FETCH_SLICE_ROWS,
) -> AsyncIterator[list[Row[Any]]]:
    """The rows of ``statement``, fetched and converted ``slice_rows`` at a time (a cursor on
    the server), the event loop getting its turn between two slices: ``.all()`` on a pass's
    million rows held the loop for as long as converting all of them took. Under
    :func:`inline_computation`, that ``.all()`` again, as one slice.

    A caller that turns each slice into arrays before the next keeps few Row objects alive:
    a million of them made each of Python's full garbage collections, which hold the GIL
    and so the loop, take 0.1-0.3 s (measured: benchmarks/loop_lag.py)."""
    if _inline.get():
        yield list((await executor.execute(statement)).all())
        return
    result = await executor.stream(statement)
    async for part in result.partitions(slice_rows):
        yield list(part)


async def fetch_in_slices(
    executor: AsyncSession | AsyncConnection,
    statement: Executable,
    *,
    slice_rows: int = FETCH_SLICE_ROWS,
) -> list[Row[Any]]:
    """Every row of ``statement``, fetched as :func:`stream_in_slices` does."""
    rows: list[Row[Any]] = []
    async for part in stream_in_slices(executor, statement, slice_rows=slice_rows):
        rows.extend(part)
    return rows
