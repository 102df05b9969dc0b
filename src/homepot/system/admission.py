"""Requests are admitted a few at a time and queue, in arrival order, for their turn.

One server process has one event loop and a database pool of ``database.pool_size``
connections. Without a gate every request that arrives starts at once: with 200 clients,
200 handlers compete for the loop and for 30 connections, a connection's holder waits its
turn on the loop behind requests that cannot progress anyway, and the pool hands a freed
connection to whichever request asks first, so some wait past the pool timeout (answered 503)
while later ones are served (measured in benchmarks/README.md, "load.py").

:class:`AdmissionGate` lets at most ``limits.max_concurrent_requests`` requests in at once
(by default the database pool's size, so that an admitted request finds a connection at once)
and queues the others first in, first out. A request that waits longer than
``limits.admission_timeout_seconds`` is answered 503 with ``Retry-After``: the server is
overloaded, nothing was read or stored. The health check, the metrics and logins bypass
the gate (see :data:`BYPASS_PATHS`).
"""

from __future__ import annotations

import asyncio
from collections import deque

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from homepot.config import API_PREFIX, Settings

# Seconds a client is asked to wait after a 503 because the server's queue was too long.
OVERLOAD_RETRY_AFTER_SECONDS = 5
# Paths answered without waiting their turn: the health check and the metrics must answer
# while the server is busy; a login waits for its own bounded pool of password-hashing
# threads holding no connection (auth.password_hash_threads), so a burst of logins taking
# every place here would stall every other request again.
BYPASS_PATHS = frozenset({f"{API_PREFIX}/health", "/metrics", f"{API_PREFIX}/auth/token"})
BYPASS_PREFIXES = ("/static/",)
# SQLite has one writer: more concurrent requests only wait for its lock (with sleeps).
SQLITE_CONCURRENT_REQUESTS = 4


def concurrent_request_limit(settings: Settings) -> int:
    """``limits.max_concurrent_requests``, or what the database can serve at once."""
    if settings.limits.max_concurrent_requests is not None:
        return settings.limits.max_concurrent_requests
    if settings.is_sqlite:
        return SQLITE_CONCURRENT_REQUESTS
    return settings.database.pool_size


class FifoGate:
    """At most ``limit`` holders at once; the others wait first in, first out.

    (Unlike a semaphore, a place that frees up goes to the longest waiter, never to a
    newcomer, so no request starves while later ones are served.)
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a gate needs at least one place, not {limit}")
        self.limit = limit
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def busy(self) -> int:
        return self.limit - self._free

    async def enter(self, wait_seconds: float) -> bool:
        """Take a place, waiting at most ``wait_seconds``; False when none came."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            async with asyncio.timeout(wait_seconds):
                await turn
        except (TimeoutError, asyncio.CancelledError) as exc:
            if turn.done() and not turn.cancelled():
                self.leave()  # the place came just as we gave up: pass it on
            else:
                self._waiters.remove(turn)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return False
        return True

    def leave(self) -> None:
        """Give the place back: to the longest waiter, else to the free places."""
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1


class AdmissionGate:
    """ASGI middleware: every HTTP request but :data:`BYPASS_PATHS` passes :class:`FifoGate`."""

    def __init__(self, app: ASGIApp, *, limit: int, timeout_seconds: float) -> None:
        self.app = app
        self.gate = FifoGate(limit)
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in BYPASS_PATHS or path.startswith(BYPASS_PREFIXES):
            await self.app(scope, receive, send)
            return
        if not await self.gate.enter(self.timeout_seconds):
            response = JSONResponse(
                status_code=503,
                content={
                    "detail": (
                        f"the server is overloaded: this request waited "
                        f"{self.timeout_seconds:g} s for its turn behind {self.gate.waiting}"
                        " others; nothing was read or stored, send it again"
                    )
                },
                headers={"Retry-After": str(OVERLOAD_RETRY_AFTER_SECONDS)},
            )
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave()
