"""The one retry policy: exponential backoff with full jitter, from tenacity, set here once.

Every loop in HOMEPOT that waits for something to come back — the recorder for the database,
the agent for the server, the MQTT bridge and the agent for the broker — takes its delays
from a :class:`Backoff` defined in this module, so that the numbers live in one place and
every wait is jittered: after an outage, a fleet of terminals (or several server processes)
does not come back in lockstep and knock the server over again.

"Full jitter" (tenacity's ``wait_random_exponential``): attempt ``n`` waits a random time
between ``initial / 2`` and ``min(maximum, initial * 2 ** (n - 1))``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential delays from ``initial`` up to ``maximum`` seconds."""

    initial: float
    maximum: float

    def strategy(self) -> wait_random_exponential:
        return wait_random_exponential(
            multiplier=self.initial, max=self.maximum, min=self.initial / 2
        )

    def delays(self) -> Iterator[float]:
        """Endless delays, for a loop that must keep its own shape (a reconnect loop that
        starts again from ``initial`` after each good connection)."""
        wait = self.strategy()
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        while True:
            yield wait(state)
            state.attempt_number += 1


# Reconnecting to the server (agent registration) and to the broker (agent and MQTT bridge).
SERVER_RECONNECT = Backoff(initial=1.0, maximum=60.0)
BROKER_RECONNECT = Backoff(initial=0.5, maximum=30.0)


def database_write_backoff(initial: float) -> Backoff:
    """The recorder's retries of one batch (``analytics.retry_backoff_seconds``); short, since
    a batch that still fails goes to the spool and is replayed later."""
    return Backoff(initial=initial, maximum=max(initial, 5.0))


async def retry_async(
    operation: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    attempts: int,
    max_seconds: float,
    retry_on: Callable[[BaseException], bool],
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """``operation()``, tried up to ``attempts`` times and no longer than ``max_seconds``
    (no new attempt starts after that) while it fails with what ``retry_on`` accepts; the
    last failure (or any other) is raised as it is."""

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            failure = state.outcome.exception()
            if failure is not None:
                on_retry(failure)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(1, attempts)) | stop_after_delay(max_seconds),
        wait=backoff.strategy(),
        retry=retry_if_exception(retry_on),
        before_sleep=before_sleep,
        reraise=True,
    )

    async def attempt() -> T:  # a coroutine function, which is how tenacity knows to await
        return await operation()

    return await retrying(attempt)


async def retry_until_stopped(
    operation: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    stop: asyncio.Event,
    retry_on: Callable[[BaseException], bool],
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T | None:
    """``operation()`` until it succeeds, retried forever while it fails with what
    ``retry_on`` accepts; None when ``stop`` is set first (a wait ends at once then)."""
    for delay in backoff.delays():
        if stop.is_set():
            return None
        try:
            return await operation()
        except Exception as exc:
            if not retry_on(exc):
                raise
            if on_retry is not None:
                on_retry(exc, delay)
        if await wait_or_stop(stop, delay):
            return None
    raise AssertionError("unreachable: delays() is endless")


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; True when it was."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
