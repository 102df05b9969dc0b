"""``homepot agent``: the program that runs on a terminal.

Every ``interval`` seconds it reads the host with psutil (CPU, memory, disk), adds the
transaction counters of a pluggable :class:`TransactionSource`, queues that sample in its
on-disk :class:`~homepot.agent.outbox.Outbox`, and sends one report
(``POST /api/v1/agent/report``): its heartbeat with the oldest queued samples, answered with
the jobs waiting for it. A sample's ``network_latency_ms`` is the round trip of the previous
report (none after a failed one). When the server is unreachable the queue simply grows, and
it drains when the server returns.

Jobs arrive by MQTT push when the server offers a broker, and in every report's answer (the
fallback when a push is missed). Each is acknowledged, run by a pluggable handler (restart,
config_change, firmware_update; simulated by default), and its result goes through the same
queue, so a result is not lost either.

The API key the server issues at registration is kept in ``state_dir/agent.json`` (mode
0600), so a restarted agent carries on as the same device without registering again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import psutil

from homepot import __version__
from homepot.agent.client import DeviceClient, Refused, ServerUnavailable, Unauthorized
from homepot.agent.outbox import Outbox, QueuedMessage
from homepot.kit.retry import BROKER_RECONNECT, SERVER_RECONNECT, retry_until_stopped, wait_or_stop
from homepot.protocol.messages import (
    MAX_SAMPLES_PER_BATCH,
    Heartbeat,
    JobCommand,
    JobResult,
    JobResultStatus,
    MetricSample,
    RegisterRequest,
)

logger = logging.getLogger(__name__)

STATE_FILE = "agent.json"
OUTBOX_FILE = "outbox.sqlite3"


# --- what the agent measures ---------------------------------------------------------------


@dataclass(frozen=True)
class TransactionCounters:
    transaction_count: int
    transaction_volume: float
    error_rate: float  # percent of transactions that failed
    active_connections: int
    queue_depth: int


class TransactionSource(Protocol):
    """Where a terminal's sales counters come from (the POS application, or a simulation)."""

    def collect(self, moment: datetime, interval: timedelta) -> TransactionCounters: ...


class HostReader(Protocol):
    def read(self) -> dict[str, float]: ...


class HostMetrics:
    """This machine's CPU, memory and disk use (psutil)."""

    def __init__(self, disk_path: Path = Path("/")) -> None:
        self.disk_path = disk_path
        psutil.cpu_percent(interval=None)  # the first reading only starts the measurement

    def read(self) -> dict[str, float]:
        return {
            "cpu_percent": float(psutil.cpu_percent(interval=None)),
            "memory_percent": float(psutil.virtual_memory().percent),
            "disk_percent": float(psutil.disk_usage(str(self.disk_path)).percent),
        }


# --- jobs ----------------------------------------------------------------------------------


class JobFailed(Exception):
    """A handler's way to report a failure with a stable code."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


JobHandler = Callable[[JobCommand], Awaitable[dict[str, Any] | None]]


# --- the agent's own state -----------------------------------------------------------------


@dataclass
class AgentState:
    device_id: str
    site_id: str
    server_url: str
    api_key: str | None = None
    firmware_version: str = "2.6.0"
    config: dict[str, Any] = field(default_factory=dict)
    mqtt: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: Path) -> AgentState | None:
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise AgentError(f"{path} is not an agent state file ({exc}); move it away") from exc

    def save(self, path: Path) -> None:
        """Atomically, readable by this user only: the file holds the device's key."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(asdict(self), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


class AgentError(Exception):
    """The agent cannot go on; the message says why."""


def simulated_handlers(state: AgentState, *, time_scale: float = 1.0) -> dict[str, JobHandler]:
    """Job handlers that pretend: they take a little while and update the agent's state."""

    async def restart(command: JobCommand) -> dict[str, Any]:
        await asyncio.sleep(2 / time_scale)
        return {"restarted_at": datetime.now(UTC).isoformat()}

    async def config_change(command: JobCommand) -> dict[str, Any]:
        config = command.payload.get("config")
        if not isinstance(config, dict):
            raise JobFailed("E_BAD_PAYLOAD", "config_change needs payload.config (an object)")
        await asyncio.sleep(0.5 / time_scale)
        state.config.update(config)
        return {"applied": sorted(config)}

    async def firmware_update(command: JobCommand) -> dict[str, Any]:
        version = command.payload.get("version") or command.payload.get("firmware_version")
        if not isinstance(version, str) or not version:
            raise JobFailed("E_BAD_PAYLOAD", "firmware_update needs payload.version")
        await asyncio.sleep(5 / time_scale)
        state.firmware_version = version
        return {"firmware_version": version}

    async def health_check(command: JobCommand) -> dict[str, Any]:
        return {"ok": True}

    return {
        "restart": restart,
        "config_change": config_change,
        "firmware_update": firmware_update,
        "health_check": health_check,
    }


# --- the agent -----------------------------------------------------------------------------


@dataclass
class AgentConfig:
    server_url: str
    site_id: str
    device_id: str
    bootstrap_key: str | None
    state_dir: Path
    interval_seconds: float = 30.0
    name: str | None = None
    device_type: str = "pos_terminal"
    outbox_max_messages: int = 100_000


@dataclass
class AgentStats:
    reports: int = 0
    heartbeats_failed: int = 0
    samples_delivered: int = 0
    results_delivered: int = 0
    jobs_done: int = 0


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        client: DeviceClient,
        *,
        outbox: Outbox | None = None,
        source: TransactionSource,
        host: HostReader | None = None,
        handlers: dict[str, JobHandler] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.client = client
        self.state_path = config.state_dir / STATE_FILE
        state = AgentState.load(self.state_path)
        if state is not None and (state.device_id, state.site_id) != (
            config.device_id,
            config.site_id,
        ):
            raise AgentError(
                f"{self.state_path} belongs to {state.device_id} of {state.site_id}; "
                "use another --state-dir for another device"
            )
        self.state = state or AgentState(config.device_id, config.site_id, config.server_url)
        self.outbox = outbox or Outbox(
            config.state_dir / OUTBOX_FILE, max_messages=config.outbox_max_messages
        )
        self.source = source
        self.host: HostReader = host or HostMetrics()
        self.handlers = handlers if handlers is not None else simulated_handlers(self.state)
        self.clock = clock
        self.stats = AgentStats()
        self.started = clock()
        self._running: set[int] = set()
        # time.monotonic() before which nothing is sent again (the server's Retry-After).
        self._resume_at = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        # The previous report's round trip in ms: the next sample's latency.
        self._latency_ms: float | None = None

    # -- registration ----------------------------------------------------------------------

    async def ensure_registered(self) -> None:
        """Use the stored key when there is one; register with the bootstrap key otherwise."""
        if self.state.api_key and self.state.server_url == self.config.server_url:
            self.client.api_key = self.state.api_key
            return
        await self.register()

    async def register(self) -> None:
        if not self.config.bootstrap_key:
            raise AgentError(
                f"{self.config.device_id} has no stored API key: pass --bootstrap-key "
                "(ask an operator for the site's key) to register it"
            )
        try:
            registered = await self.client.register(
                RegisterRequest(
                    site_id=self.config.site_id,
                    device_id=self.config.device_id,
                    bootstrap_key=self.config.bootstrap_key,
                    name=self.config.name,
                    device_type=self.config.device_type,
                    firmware_version=self.state.firmware_version,
                    agent_version=__version__,
                )
            )
        except Refused as exc:
            raise AgentError(f"registration refused: {exc.detail}") from exc
        self.state.api_key = registered.api_key
        self.state.server_url = self.config.server_url
        self.state.mqtt = registered.mqtt.model_dump() if registered.mqtt else None
        self.state.save(self.state_path)
        logger.info("registered %s with %s", self.config.device_id, self.config.server_url)

    async def _register_again(self) -> None:
        """The stored key was refused (revoked, or the server's database was reset)."""
        logger.warning("the server refused the device key; registering again")
        self.state.api_key = None
        try:
            await self.register()
        except ServerUnavailable as exc:
            logger.warning("registering again failed: %s", exc)

    # -- reporting -------------------------------------------------------------------------

    def make_sample(self, latency_ms: float | None) -> MetricSample:
        now = self.clock()
        interval = timedelta(seconds=self.config.interval_seconds)
        counters = self.source.collect(now, interval)
        return MetricSample(
            event_id=uuid.uuid4(),
            timestamp=now,
            collection_interval_seconds=self.config.interval_seconds,
            network_latency_ms=round(latency_ms, 2) if latency_ms is not None else None,
            **self.host.read(),
            **asdict(counters),
            extra_metrics={"outbox_pending": self.outbox.stats().pending},
        )

    async def report_once(self) -> None:
        """Queue a sample, then one report: heartbeat, the oldest queued samples (up to a
        batch), and the jobs waiting in its answer; the rest of the queue follows."""
        self.stats.reports += 1
        sample = self.make_sample(self._latency_ms)
        await self.outbox.aput("telemetry", sample.model_dump(mode="json", exclude_none=True))
        self._latency_ms = None
        if time.monotonic() < self._resume_at:
            return
        messages = await self.outbox.aoldest(MAX_SAMPLES_PER_BATCH)
        samples = list(itertools.takewhile(lambda m: m.kind == "telemetry", messages))
        heartbeat = Heartbeat(
            status="ok",
            firmware_version=self.state.firmware_version,
            config_version=str(self.state.config.get("config_version") or "") or None,
            uptime_seconds=round((self.clock() - self.started).total_seconds(), 1),
        )
        report_id = uuid.uuid4()
        try:
            try:
                answer = await self.client.report(
                    report_id, heartbeat=heartbeat, samples=[m.payload for m in samples]
                )
            except Refused as exc:
                if isinstance(exc, Unauthorized) or not exc.names_the_message or not samples:
                    raise
                # Something queued is refused by name: the queue goes the careful way (as
                # batches, refused ones one by one), then the heartbeat alone.
                logger.warning("the server refused the report (%s); delivering one by one", exc)
                if not await self.deliver():
                    return
                samples = []
                answer = await self.client.report(report_id, heartbeat=heartbeat)
        except Unauthorized:
            await self._register_again()
            return
        except ServerUnavailable as exc:
            self.stats.heartbeats_failed += 1
            self._hold_off(exc, len(messages))
            return
        except Refused as exc:
            self.stats.heartbeats_failed += 1
            logger.warning("the server refused the report (%s); the samples stay queued", exc)
            return
        self._latency_ms = self.client.last_round_trip_ms
        if samples:
            await self._delivered(samples)
        for command in answer.jobs:
            self.start_job(command)
        await self.deliver()

    async def deliver(self) -> bool:
        """Send the queue oldest first until it is empty (True) or the server fails (False).

        A message is dropped only when the server refuses it by name (400, 409, 413, 422);
        on a 5xx, 429 or any other refusal it stays queued, and nothing is sent again before
        the server's ``Retry-After`` has passed.
        """
        if time.monotonic() < self._resume_at:
            return False
        while True:
            messages = await self.outbox.aoldest(MAX_SAMPLES_PER_BATCH)
            if not messages:
                return True
            # The leading run of one kind goes together: telemetry as one batch.
            run = [messages[0]]
            for message in messages[1:]:
                if message.kind != run[0].kind or run[0].kind != "telemetry":
                    break
                run.append(message)
            try:
                await self._send(run)
            except ServerUnavailable as exc:
                self._hold_off(exc, len(messages))
                return False
            except Unauthorized:
                await self._register_again()
                return False
            except Refused as exc:
                if not await self._isolate_refused(run, exc):
                    return False
                continue
            await self._delivered(run)

    async def _delivered(self, run: list[QueuedMessage]) -> None:
        await self.outbox.adelivered([m.id for m in run])
        if run[0].kind == "telemetry":
            self.stats.samples_delivered += len(run)
        else:
            self.stats.results_delivered += len(run)

    def _hold_off(self, exc: ServerUnavailable, waiting: int) -> None:
        logger.warning("server unavailable; %d messages wait: %s", waiting, exc)
        if exc.retry_after:
            self._resume_at = time.monotonic() + exc.retry_after

    async def _isolate_refused(self, run: list[QueuedMessage], error: Refused) -> bool:
        """A refused batch is sent one by one: only the messages refused by name are
        dropped. False when the server stopped taking messages (they stay queued)."""
        if not error.names_the_message:
            logger.warning("the server refused delivery (%s); the messages stay queued", error)
            return False
        if len(run) == 1:
            logger.error("the server refused a queued %s: %s; dropped", run[0].kind, error)
            await self.outbox.arefused([run[0].id])
            return True
        for message in run:
            try:
                await self._send([message])
            except ServerUnavailable as exc:
                self._hold_off(exc, len(run))
                return False
            except Refused as exc:
                if isinstance(exc, Unauthorized) or not exc.names_the_message:
                    return False
                logger.error("the server refused a queued %s: %s; dropped", message.kind, exc)
                await self.outbox.arefused([message.id])
            else:
                await self._delivered([message])
        return True

    async def _send(self, run: list[QueuedMessage]) -> None:
        if run[0].kind == "telemetry":
            await self.client.send_raw_telemetry([m.payload for m in run])
        else:
            await self.client.send_raw_result(run[0].payload)

    # -- jobs ------------------------------------------------------------------------------

    def start_job(self, command: JobCommand) -> None:
        if command.execution_id in self._running:
            return  # pushed and polled at once
        self._running.add(command.execution_id)
        task = asyncio.create_task(self.run_job(command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run_job(self, command: JobCommand) -> JobResult:
        started = self.clock()
        try:
            with contextlib.suppress(ServerUnavailable, Refused):
                await self.client.ack(command.execution_id)
            handler = self.handlers.get(command.job_type)
            try:
                if handler is None:
                    raise JobFailed(
                        "E_UNSUPPORTED_JOB", f"this agent has no handler for {command.job_type!r}"
                    )
                output = await asyncio.wait_for(handler(command), command.timeout_seconds)
                result = JobResult(
                    execution_id=command.execution_id,
                    status=JobResultStatus.success,
                    output=output,
                )
            except JobFailed as exc:
                result = JobResult(
                    execution_id=command.execution_id,
                    status=JobResultStatus.failed,
                    error_code=exc.error_code,
                    error_message=str(exc),
                )
            except TimeoutError:
                result = JobResult(
                    execution_id=command.execution_id,
                    status=JobResultStatus.failed,
                    error_code="E_HANDLER_TIMEOUT",
                    error_message=f"the handler ran past {command.timeout_seconds} s",
                )
            result = result.model_copy(update={"started_at": started, "finished_at": self.clock()})
            self.state.save(self.state_path)
            await self.outbox.aput("result", result.model_dump(mode="json", exclude_none=True))
            self.stats.jobs_done += 1
            await self.deliver()
            return result
        finally:
            self._running.discard(command.execution_id)

    async def _receive_pushed_jobs(self, stop: asyncio.Event) -> None:
        """Jobs pushed over MQTT, when the server offered a broker; reconnects with backoff."""
        mqtt = self.state.mqtt
        if not mqtt or not self.state.api_key:
            return
        from homepot.agent.mqtt import DeviceMqttLink, JobReplayGuard

        # One guard for every connection: a job replayed after a reconnect is still refused.
        replay_guard = JobReplayGuard()
        delays = BROKER_RECONNECT.delays()
        while not stop.is_set():
            try:
                async with DeviceMqttLink(
                    mqtt["host"],
                    int(mqtt["port"]),
                    self.config.device_id,
                    self.state.api_key,
                    tls=bool(mqtt.get("tls")),
                    replay_guard=replay_guard,
                ) as link:
                    delays = BROKER_RECONNECT.delays()  # connected: the next outage starts over
                    async for command in link.commands():
                        self.start_job(command)
            except Exception as exc:  # the broker is optional; polling still delivers jobs
                logger.warning("MQTT link down (%s); reconnecting", exc)
            await wait_or_stop(stop, next(delays))

    async def run(self, stop: asyncio.Event) -> None:
        """Register (retrying while the server is away), then report until ``stop``."""
        await retry_until_stopped(
            self.ensure_registered,
            backoff=SERVER_RECONNECT,
            stop=stop,
            retry_on=lambda exc: isinstance(exc, ServerUnavailable),
            on_retry=lambda exc, delay: logger.warning(
                "cannot reach the server to register (%s); retrying in %.1f s", exc, delay
            ),
        )
        pushed = asyncio.create_task(self._receive_pushed_jobs(stop))
        try:
            while not stop.is_set():
                await self.report_once()
                await wait_or_stop(stop, self.config.interval_seconds)
        finally:
            pushed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pushed
            for task in list(self._tasks):
                task.cancel()
            self.outbox.close()
