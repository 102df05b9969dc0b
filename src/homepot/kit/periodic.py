"""Background work that repeats: one pass every interval, stopped without cutting a pass short.

Cancelling a pass in the middle of a query strands its database connection (aiosqlite then
complains from its thread after the loop is gone), so stopping sets an event and waits for
the pass under way to finish. A pass that does many small units of work (one transaction
each) can stop sooner: given the ``stop`` event it checks between units, and returns when
the event is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from homepot.kit.singleton import Leadership

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def run_periodically(
    name: str,
    interval_seconds: float,
    run_pass: Callable[[], Awaitable[object]],
    on_failure: Callable[[Exception], None],
    *,
    leadership: Leadership | None = None,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[None]:
    """Run ``run_pass`` every ``interval_seconds`` (the first one interval after start).

    With ``leadership`` the task is a singleton among the server processes sharing the
    database: a pass runs only in the process that holds ``name``'s lock (see
    :mod:`homepot.kit.singleton`); the others skip it and take over when the holder is gone.

    A failing pass is logged with its traceback and the next one runs as usual;
    ``on_failure`` is called once per streak of failures (not every interval while, say,
    the database is down), so that error_logs get one row per incident.

    ``stop``: set when the service stops (before waiting for the pass under way), for a pass
    that checks it between its units of work; by default a fresh event only this loop sees.
    """
    stop = stop if stop is not None else asyncio.Event()

    async def loop() -> None:
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_seconds)
            if stop.is_set():
                return
            if leadership is not None:
                leads = await leadership.holds(name)
                leadership.count(name, ran=leads)
                if not leads:
                    continue
            try:
                await run_pass()
                failing = False
            except Exception as exc:
                logger.exception("%s: pass failed", name)
                if not failing:
                    on_failure(exc)
                failing = True

    task = asyncio.create_task(loop(), name=name)
    try:
        yield
    finally:
        stop.set()
        await task
