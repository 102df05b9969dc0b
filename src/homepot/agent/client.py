"""The device side of the HTTP protocol (``/api/v1/agent/...``), used by the agent and the
simulator alike.

Failures come back as two kinds of exception, because a device must treat them differently:
:class:`ServerUnavailable` (no connection, a timeout, a 5xx, 408, 429) means "keep the
message and try again later", not before the server's ``Retry-After``; :class:`Refused`
(any other 4xx) means the server will not accept the message now. Only a refusal that names
the message (:attr:`Refused.names_the_message`: 400, 409, 413, 422) means it will never be
accepted as it is and may be dropped; any other (403, 404, ...) says something about the
device or the server, so the message is kept. :class:`Unauthorized` (401) is the refusal
that a new registration can cure.
"""

from __future__ import annotations

import email.utils
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from homepot import __version__
from homepot.config import API_PREFIX
from homepot.protocol.messages import (
    DeviceErrorAccepted,
    DeviceErrorReport,
    DeviceReportAccepted,
    Heartbeat,
    JobAck,
    JobCommand,
    JobResult,
    MetricSample,
    RegisterRequest,
    RegisterResponse,
    TelemetryAccepted,
    TelemetryBatch,
)

AGENT_PATH = f"{API_PREFIX}/agent"
USER_AGENT = f"homepot-agent/{__version__}"


class DeviceClientError(Exception):
    pass


class ServerUnavailable(DeviceClientError):
    """The server could not be reached or could not answer now; retry later.

    ``retry_after``: the seconds the server asked for (its ``Retry-After``), if it did.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# Answers that are about the message itself: it will never be accepted as it is.
MESSAGE_REFUSALS = frozenset({400, 409, 413, 422})


class Refused(DeviceClientError):
    """The server answered 4xx: the message is not accepted now."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail

    @property
    def names_the_message(self) -> bool:
        """True when the refusal is about the message itself (drop it, or it blocks the
        queue forever); False when it is about the device or the server (keep it)."""
        return self.status_code in MESSAGE_REFUSALS


class Unauthorized(Refused):
    """The device key is unknown or revoked (401): register again."""


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (a number or an HTTP date), None without one."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:500]


class DeviceClient:
    """One device's HTTP conversation with the server.

    Several clients may share one ``httpx.AsyncClient`` (the simulator runs thousands of
    devices over one connection pool); the device key travels per request.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        api_key: str | None = None,
    ) -> None:
        self.http = http
        self.api_key = api_key
        self.last_round_trip_ms: float | None = None

    @classmethod
    def connect(
        cls,
        server_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> DeviceClient:
        http = httpx.AsyncClient(
            base_url=server_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )
        return cls(http, api_key=api_key)

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- the protocol ----------------------------------------------------------------------

    async def register(self, request: RegisterRequest) -> RegisterResponse:
        response = await self._call(
            "POST", "/register", request.model_dump(mode="json"), auth=False
        )
        registered = RegisterResponse.model_validate(response.json())
        self.api_key = registered.api_key
        return registered

    async def heartbeat(self, heartbeat: Heartbeat) -> float:
        """Send a heartbeat; returns its round trip in milliseconds (the device's latency)."""
        await self._call("POST", "/heartbeat", heartbeat.model_dump(mode="json", exclude_none=True))
        assert self.last_round_trip_ms is not None
        return self.last_round_trip_ms

    async def send_telemetry(self, samples: Sequence[MetricSample]) -> TelemetryAccepted:
        batch = TelemetryBatch(samples=list(samples))
        response = await self._call(
            "POST", "/telemetry", batch.model_dump(mode="json", exclude_none=True)
        )
        return TelemetryAccepted.model_validate(response.json())

    async def send_raw_telemetry(self, samples: list[dict[str, Any]]) -> TelemetryAccepted:
        """Samples already in wire form (as kept in the outbox)."""
        response = await self._call("POST", "/telemetry", {"samples": samples})
        return TelemetryAccepted.model_validate(response.json())

    async def report(
        self,
        report_id: uuid.UUID,
        *,
        heartbeat: Heartbeat | None,
        samples: list[dict[str, Any]] | None = None,
        errors: Sequence[DeviceErrorReport] = (),
        jobs_limit: int = 10,
    ) -> DeviceReportAccepted:
        """One combined report (samples in wire form, as kept in an outbox); the answer
        carries the jobs waiting for the device. Send the same ``report_id`` again when a
        report's fate is unknown (a timeout): nothing is stored twice."""
        body: dict[str, Any] = {"report_id": str(report_id), "jobs_limit": jobs_limit}
        if heartbeat is not None:
            body["heartbeat"] = heartbeat.model_dump(mode="json", exclude_none=True)
        if samples:
            body["samples"] = samples
        if errors:
            body["errors"] = [e.model_dump(mode="json", exclude_none=True) for e in errors]
        response = await self._call("POST", "/report", body)
        return DeviceReportAccepted.model_validate(response.json())

    async def poll_jobs(self) -> list[JobCommand]:
        response = await self._call("GET", "/jobs")
        return [JobCommand.model_validate(item) for item in response.json()]

    async def ack(self, execution_id: int) -> None:
        await self._call(
            "POST", f"/jobs/{execution_id}/ack", JobAck(execution_id=execution_id).model_dump()
        )

    async def send_result(self, result: JobResult) -> None:
        await self.send_raw_result(result.model_dump(mode="json", exclude_none=True))

    async def send_raw_result(self, result: dict[str, Any]) -> None:
        await self._call("POST", f"/jobs/{result['execution_id']}/result", result)

    async def report_error(self, report: DeviceErrorReport) -> DeviceErrorAccepted:
        """Report an error the device saw itself (stored in the server's error_logs)."""
        response = await self._call(
            "POST", "/errors", report.model_dump(mode="json", exclude_none=True)
        )
        return DeviceErrorAccepted.model_validate(response.json())

    # -- plumbing --------------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, auth: bool = True
    ) -> httpx.Response:
        headers = {}
        if auth:
            if not self.api_key:
                raise Unauthorized(401, "the device is not registered yet: no API key")
            headers["Authorization"] = f"Bearer {self.api_key}"
        started = time.perf_counter()
        try:
            response = await self.http.request(
                method, AGENT_PATH + path, json=body, headers=headers
            )
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        self.last_round_trip_ms = (time.perf_counter() - started) * 1000
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise ServerUnavailable(
                f"{method} {path}: the server answered {response.status_code}: {_detail(response)}",
                retry_after=retry_after_seconds(response),
            )
        if response.status_code == 401:
            raise Unauthorized(401, _detail(response))
        if response.status_code >= 400:
            raise Refused(response.status_code, _detail(response))
        return response
