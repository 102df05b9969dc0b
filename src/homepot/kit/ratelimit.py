"""A small in-process sliding-window rate limiter.

State lives in this process's memory: with several server processes (workers, replicas)
each counts on its own, so the effective limit is the configured one times the number of
processes. That is enough to stop a brute-force loop against one process and to keep a
burst from taking its CPU; a shared limit would need a shared store (e.g. Redis).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class SlidingWindowLimiter:
    """At most ``limit`` hits per key within any ``window_seconds``.

    ``retry_after`` says how long to wait before the next hit would be allowed (0: allowed
    now); ``hit`` counts one and ``forgive`` takes one back. A caller that limits failures
    counts every attempt up front (so that a burst of concurrent attempts cannot all slip
    past the check) and forgives the ones that succeed.
    """

    # Beyond this many keys, keys without a recent hit are dropped (bounded memory).
    MAX_KEYS = 100_000

    def __init__(
        self, limit: int, window_seconds: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window_seconds
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        hits = self._hits.get(key)
        if hits is None:
            return None
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return None
        return hits

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may hit again; 0 when it may now."""
        now = self._clock()
        hits = self._recent(key, now)
        if hits is None or len(hits) < self.limit:
            return 0.0
        return max(hits[0] + self.window - now, 0.001)

    def hit(self, key: str) -> None:
        now = self._clock()
        if len(self._hits) >= self.MAX_KEYS:
            self._prune(now)
        hits = self._recent(key, now)
        if hits is None:
            hits = self._hits[key] = deque()
        hits.append(now)
        while len(hits) > self.limit:
            hits.popleft()

    def try_hit(self, key: str) -> float:
        """Count a hit unless over the limit; returns the wait (0 when the hit was counted)."""
        wait = self.retry_after(key)
        if wait == 0:
            self.hit(key)
        return wait

    def forgive(self, key: str) -> None:
        """Take back the latest hit of ``key`` (an attempt counted up front that succeeded)."""
        hits = self._hits.get(key)
        if hits:
            hits.pop()
            if not hits:
                del self._hits[key]

    def reset(self, key: str) -> None:
        self._hits.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in list(self._hits):
            self._recent(key, now)


def retry_after_header(seconds: float) -> dict[str, str]:
    """The ``Retry-After`` header (whole seconds, at least 1) for a wait of ``seconds``."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}
