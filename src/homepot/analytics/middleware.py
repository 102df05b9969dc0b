"""Pure ASGI middleware: one ``api_request_logs`` row per API request, and the last line of
defence against unhandled exceptions (an ``error_logs`` row and a clean JSON 500).

It measures the bytes actually received and sent by wrapping ``receive`` and ``send``, so
streaming bodies are counted too, and it never buffers a response: only the first 16 KiB of
an error response are kept, to read its ``detail``.

Recording a request costs the request a tuple of what it saw, appended to the recorder's
queue; the row is built (headers read, query string and free text redacted, event id made)
by the recorder's writer, many rows at a time (:mod:`homepot.analytics.request_log`).

A request from the simulator's HTTP client (User-Agent ``homepot-sim/...``) is simulated: its
row, and the rows it causes (dashboard activity, client errors), have source ``simulated``. The
request's source is left in ``request.state.source`` for the handlers.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from homepot.analytics.error_logger import record_error
from homepot.analytics.models import DEVICE, SIMULATED, Source
from homepot.analytics.recorder import Recorder
from homepot.analytics.request_log import TABLE as REQUEST_LOG_TABLE
from homepot.config import Settings

logger = logging.getLogger(__name__)

_ERROR_BODY_LIMIT = 16 * 1024
# The product token of the simulator's User-Agent
# (homepot.simulation.fleet_config.SIM_AGENT_VERSION).
SIMULATOR_PRODUCT = "homepot-sim"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# PostgreSQL stores no NUL in text or JSON; refuse it at the door, on every backend alike,
# rather than fail deep inside a handler. (A NUL in a body is refused by
# homepot.system.limits, which reads bodies before any route does.)
_NUL_IN_URL = {
    "detail": [
        {
            "type": "nul_character",
            "loc": ["path"],
            "msg": "the URL must not contain NUL (%00) characters",
            "input": None,
        }
    ]
}


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def source_of_request(scope: Scope) -> Source:
    """``simulated`` for a request made by the simulator's HTTP client, else ``device``."""
    for name, value in scope.get("headers", ()):
        if name == b"user-agent":
            product = value.decode("latin-1").split("/", 1)[0].strip()
            return SIMULATED if product == SIMULATOR_PRODUCT else DEVICE
    return DEVICE


class ClientAddress:
    """The client's IP, believing X-Forwarded-For only when the peer is a trusted proxy."""

    def __init__(self, trusted_proxies: list[str]) -> None:
        self.trusted: list[IPNetwork] = [
            ipaddress.ip_network(p, strict=False) for p in trusted_proxies
        ]

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def __call__(self, scope: Scope) -> str | None:
        client = scope.get("client")
        peer = client[0] if client else None
        if peer is None or not self.trusted or not self._is_trusted(peer):
            return peer
        forwarded = [
            value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name == b"x-forwarded-for"
        ]
        hops = [h.strip() for h in ",".join(forwarded).split(",") if h.strip()]
        # Walk from the nearest hop; the first address that is not one of ours is the client.
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop[:45]
        return hops[0][:45] if hops else peer


class RequestLogMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        recorder: Callable[[], Recorder | None],
        registry: CollectorRegistry,
    ) -> None:
        self.app = app
        self.analytics = settings.analytics
        self.recorder = recorder
        self.client_address = ClientAddress(settings.trusted_proxies)
        self.latency = Histogram(
            "homepot_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            ["method", "route", "status"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )

    def _should_record(self, path: str) -> bool:
        analytics = self.analytics
        return (
            analytics.enabled
            and analytics.record_requests
            # str.startswith with a tuple: one call instead of a generator per prefix.
            and path.startswith(tuple(analytics.request_path_prefixes))
            and not path.startswith(tuple(analytics.skip_paths))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        # Resolved once here; handlers that store the caller's address read it from state.
        state["client_ip"] = self.client_address(scope)
        state["source"] = source_of_request(scope)
        received = 0
        sent = 0
        status = 500
        response_started = False
        error_body = bytearray()
        exception: BaseException | None = None

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def measured_send(message: Message) -> None:
            nonlocal sent, status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                ]
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                sent += len(body)
                if status >= 400 and len(error_body) < _ERROR_BODY_LIMIT:
                    error_body.extend(body[: _ERROR_BODY_LIMIT - len(error_body)])
            await send(message)

        try:
            if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
                await _send_json(measured_send, 422, _NUL_IN_URL)
            else:
                await self.app(scope, counting_receive, measured_send)
        except Exception as exc:
            exception = exc
            status = 500
            self._log_unhandled(scope, exc, request_id)
            if response_started:
                raise  # too late for a clean answer; the server closes the connection
            await _send_json(
                measured_send,
                500,
                {
                    "detail": "internal server error; the error has been logged",
                    "request_id": request_id,
                },
            )
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            route_path: str | None = getattr(route, "path", None)
            self.latency.labels(scope["method"], route_path or "unmatched", str(status)).observe(
                elapsed
            )
            if self._should_record(scope["path"]):
                self._record(
                    scope,
                    request_id,
                    status,
                    elapsed,
                    route_path,
                    received,
                    sent,
                    error_body,
                    exception,
                )

    def _record(
        self,
        scope: Scope,
        request_id: str,
        status: int,
        elapsed: float,
        route_path: str | None,
        received: int,
        sent: int,
        error_body: bytearray,
        exception: BaseException | None,
    ) -> None:
        """Queue the request as it was seen (see request_log.RequestEntry); the writer
        builds and redacts its row."""
        recorder = self.recorder()
        if recorder is None:
            return
        state = scope["state"]
        recorder.record_unbuilt(
            REQUEST_LOG_TABLE,
            (
                time.time(),
                request_id,
                scope["path"],
                route_path,
                scope["method"],
                status,
                elapsed,
                state.get("user_id"),
                state["client_ip"],
                scope.get("headers", ()),
                # The exception's text now: the exception itself (its traceback and frames)
                # is not kept alive in the queue.
                None if exception is None else f"{type(exception).__name__}: {exception}"[:2000],
                bytes(error_body) if status >= 400 and exception is None else None,
                received,
                sent,
                state["source"],
                scope.get("query_string", b""),
            ),
        )

    def _log_unhandled(self, scope: Scope, exc: Exception, request_id: str) -> None:
        logger.error(
            "unhandled exception in %s %s (request %s)",
            scope["method"],
            scope["path"],
            request_id,
            exc_info=exc,
        )
        recorder = self.recorder()
        if recorder is None or not self.analytics.enabled:
            return
        route = getattr(scope.get("route"), "path", None)
        record_error(
            category="api",
            severity="error",
            error_code="API_UNHANDLED_EXCEPTION",
            error_message=f"{type(exc).__name__}: {exc}"[:2000],
            exception=exc,
            endpoint=scope["path"][:2048],
            user_id=scope["state"].get("user_id"),
            context={"request_id": request_id, "method": scope["method"], "route": route},
            recorder=recorder,
            source=scope["state"].get("source", DEVICE),
        )
