"""A simulated fleet: N terminals across M sites in one asyncio process, speaking the same
protocol as the real agent (HTTP, and MQTT when the server offers a broker).

The model is in pure functions so that the live simulator and the backfill share it:

- :func:`site_load` — how busy a site is at a moment (0 closed ... 1 at its peak), from its
  ``site_operating_schedules`` read in the site's own time zone;
- :func:`expected_transactions` — the site's expected daily volume, spread over the day by
  that load and shared among its terminals;
- :class:`TerminalModel` — one terminal's readings: its hardware's own normal, load-driven
  CPU, memory and latency, autocorrelated noise, benign events (settlement at closing, log
  rotation, a reboot after a firmware update), and a :class:`~homepot.simulation.faults.Fault`
  bends them. Faults and benign events alike go to the labels file.

``--speed X`` compresses time: the simulated day (load, fault lengths) runs X times faster,
and so does reporting. Stored timestamps are wall-clock (the server refuses samples from the
future), and the labels file uses the same clock, so labels line up with the stored rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from homepot.agent.client import DeviceClient, Refused, ServerUnavailable, Unauthorized
from homepot.config import API_PREFIX
from homepot.kit.retry import SERVER_RECONNECT, Backoff, retry_async, wait_or_stop
from homepot.protocol.messages import (
    DeviceErrorReport,
    ErrorCategory,
    ErrorSeverity,
    Heartbeat,
    JobCommand,
    JobResultStatus,
    MetricSample,
    RegisterRequest,
    RegisterResponse,
    TelemetryBatch,
)
from homepot.simulation.faults import (
    GATEWAY_WARNING_CODE,
    LINK_WARNING_CODE,
    PAYMENT_TIMEOUT_CODE,
    BenignEvent,
    Fault,
    FaultEffects,
    FaultKind,
    FaultPlanner,
    LabelWriter,
    warning_counts,
)
from homepot.simulation.fleet_config import (
    MAX_BACKLOG_SAMPLES,
    PUSHED_POLL_SHARE,
    REGISTRATION_ATTEMPTS,
    REGISTRATION_MAX_SECONDS,
    SIM_AGENT_VERSION,
    SimulationConfig,
    SimulationStats,
    split_evenly,
)
from homepot.simulation.jobs import simulate_job
from homepot.simulation.model import (
    FIRMWARE_REBOOT,
    SITE_TIMEZONES,
    SimulationError,
    SiteProfile,
    TerminalModel,
    deal_terminals,
    default_week,
    load_schedule_file,
    profile_from_week,
    site_ids,
    site_load,
    week_body,
)

logger = logging.getLogger(__name__)


def _names_a_sample(refusal: Refused) -> bool:
    return refusal.names_the_message and not isinstance(refusal, Unauthorized)


JobInbox = Callable[[str], "asyncio.Queue[JobCommand]"]


@dataclass
class SimulatedTerminal:
    model: TerminalModel
    client: DeviceClient
    site_id: str
    fault: Fault | None = None
    backlog: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=MAX_BACKLOG_SAMPLES)
    )
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    registration: RegisterResponse | None = None
    mqtt: Any = None  # a homepot.fleet.mqtt.DeviceMqttLink when the server offers a broker
    pool: int = 0  # which of the simulator's HTTP clients (and report caps) it uses
    jobs: set[asyncio.Task[None]] = field(default_factory=set)  # running job executions
    # time.monotonic() before which it sends nothing (the server's Retry-After).
    resume_at: float = 0.0
    rebooting_until: datetime | None = None  # silent while a firmware update restarts it
    last_simulated: datetime | None = None  # the simulated moment of its previous sample

    @property
    def device_id(self) -> str:
        return self.model.device_id


class FleetSimulator:
    """Sets the fleet up through the API, then runs every terminal until ``stop`` is set.

    ``http`` carries the operator's calls, and the terminals' too unless ``device_http``
    (from :func:`device_connection_pools`) is given: the terminals are then spread over
    those clients, and each client carries at most its pool's share of the reports.
    """

    def __init__(
        self,
        config: SimulationConfig,
        http: httpx.AsyncClient,
        *,
        device_http: list[httpx.AsyncClient] | None = None,
        job_inbox: JobInbox | None = None,
        use_mqtt: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        token_provider: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.http = http
        self.job_inbox = job_inbox
        self.token_provider = token_provider
        self.use_mqtt = use_mqtt
        self.clock = clock
        self.rng = random.Random(config.seed)
        # The warnings of trouble draw apart, so that the rest of a seeded run stays as it was.
        self._trouble_rng = random.Random(None if config.seed is None else f"trouble/{config.seed}")
        self.stats = SimulationStats()
        self.device_http = device_http or [http]
        # One report cap per client, so that no pool ever queues a report.
        self._in_flight = [
            asyncio.Semaphore(share)
            for share in split_evenly(config.max_concurrent_reports, len(self.device_http))
        ]
        self.terminals: list[SimulatedTerminal] = []
        self.sites: dict[str, SiteProfile] = {}
        self._token: str | None = config.token
        self._labels = LabelWriter(config.labels) if config.labels else None
        self.planner = FaultPlanner(
            random.Random(self.rng.random()),
            config.fault_rate,
            time_scale=config.speed,
            min_silence=timedelta(seconds=config.min_fault_silence_seconds),
        )

    @property
    def tick(self) -> timedelta:
        """Wall-clock time between two reports of one terminal."""
        return timedelta(seconds=self.config.interval_seconds / self.config.speed)

    # -- set-up through the API ------------------------------------------------------------

    async def _admin_headers(self) -> dict[str, str]:
        if self._token is None and self.token_provider is not None:
            self._token = await self.token_provider()
        if self._token is None:
            if not (self.config.admin_email and self.config.admin_password):
                raise SimulationError(
                    "creating sites and bootstrap keys needs an operator or admin: pass "
                    "--token, or --admin-email and --admin-password"
                )
            response = await self.http.post(
                f"{API_PREFIX}/auth/token",
                data={"username": self.config.admin_email, "password": self.config.admin_password},
            )
            if response.status_code != 200:
                raise SimulationError(
                    f"logging in as {self.config.admin_email} failed "
                    f"({response.status_code}): {response.text[:200]}"
                )
            self._token = response.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    async def _api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(2):
            headers = await self._admin_headers()
            try:
                response = await self.http.request(
                    method, API_PREFIX + path, headers=headers, **kwargs
                )
            except httpx.TransportError as exc:
                raise SimulationError(
                    f"the server at {self.config.server_url} is unreachable: {exc}"
                ) from exc
            renewable = self.token_provider is not None or self.config.admin_password
            if response.status_code != 401 or not renewable or attempt:
                return response
            self._token = None  # expired: log in again, once
        return response

    async def prepare_site(
        self, number: int, site_id: str, file_profiles: dict[str, SiteProfile]
    ) -> str:
        """Make sure the site exists with a schedule; returns a fresh bootstrap key for it."""
        given = file_profiles.get(site_id)
        timezone = given.timezone if given else SITE_TIMEZONES[number % len(SITE_TIMEZONES)]
        response = await self._api("GET", f"/sites/{site_id}")
        if response.status_code == 404:
            created = await self._api(
                "POST",
                "/sites",
                json={
                    "site_id": site_id,
                    "name": f"Simulated store {number + 1}",
                    "timezone": timezone,
                    "simulated": True,
                },
            )
            if created.status_code not in (201, 409):
                raise SimulationError(
                    f"creating {site_id} failed ({created.status_code}): {created.text[:200]}"
                )
        elif response.status_code == 200:
            timezone = response.json()["timezone"]
        else:
            raise SimulationError(
                f"reading {site_id} failed ({response.status_code}): {response.text[:200]}"
            )
        self.sites[site_id] = await self._site_schedule(site_id, timezone, number, given)
        # A rerun re-registers the same terminal ids: that needs an admin's key (a site key
        # alone never replaces a registered device's key); an operator's registers new ones.
        key = await self._api(
            "POST", f"/sites/{site_id}/bootstrap-key", json={"replaces_existing_devices": True}
        )
        if key.status_code == 403:
            key = await self._api("POST", f"/sites/{site_id}/bootstrap-key")
        if key.status_code not in (200, 201):
            raise SimulationError(
                f"issuing a bootstrap key for {site_id} failed "
                f"({key.status_code}): {key.text[:200]}"
            )
        return str(key.json()["bootstrap_key"])

    async def _site_schedule(
        self, site_id: str, timezone: str, number: int, given: SiteProfile | None
    ) -> SiteProfile:
        """The schedule file's week, else the site's own, else the default week; a site
        without a schedule on the server is given the week the simulation uses (admin only)."""
        response = await self._api("GET", f"/sites/{site_id}/schedules")
        stored = response.status_code == 200 and bool(response.json().get("days"))
        if given is not None:
            profile = SiteProfile(site_id, given.timezone, given.days)
        elif stored:
            return profile_from_week(response.json(), number)
        else:
            profile = SiteProfile(site_id, timezone, default_week(number))
        if response.status_code == 200 and not stored:
            body = week_body(profile.days)
            written = await self._api("PUT", f"/sites/{site_id}/schedules", json=body)
            if written.status_code != 200:
                logger.warning(
                    "could not store a schedule for %s (%s): %s",
                    site_id,
                    written.status_code,
                    written.text[:200],
                )
        return profile

    async def setup(self) -> None:
        config = self.config
        file_profiles = load_schedule_file(config.schedules) if config.schedules else {}
        keys = {}
        for number, site_id in enumerate(site_ids(config.site_prefix, config.sites)):
            keys[site_id] = await self.prepare_site(number, site_id, file_profiles)
        assignments = deal_terminals(list(keys), config.devices, config.device_prefix)
        per_site = Counter(site_id for _device_id, site_id in assignments)
        for number, (device_id, site_id) in enumerate(assignments):
            model = TerminalModel(
                device_id,
                self.sites[site_id],
                per_site[site_id],
                random.Random(f"{config.seed}/{device_id}"),
            )
            model.boot(self.simulated_time(self.clock()))
            pool = number % len(self.device_http)
            client = DeviceClient(self.device_http[pool])
            self.terminals.append(SimulatedTerminal(model, client, site_id, pool=pool))
        gate = asyncio.Semaphore(config.registration_concurrency)

        async def register(terminal: SimulatedTerminal) -> None:
            async with gate:
                await self._register(terminal, keys[terminal.site_id])

        await asyncio.gather(*(register(t) for t in self.terminals))
        self._opening_faults(self.clock())

    def _opening_faults(self, now: datetime) -> None:
        """Faults at start, on terminals of open sites first (a closed shop shows no fault)."""
        terminals = self.rng.sample(self.terminals, len(self.terminals))
        terminals.sort(key=lambda t: site_load(t.model.site, now) == 0)
        for kind, terminal in zip(self.config.opening_faults, terminals, strict=False):
            self._inject(
                terminal,
                self.planner.plan(terminal.device_id, terminal.site_id, kind, now, precursor=False),
            )

    async def _register(self, terminal: SimulatedTerminal, bootstrap_key: str) -> None:
        request = RegisterRequest(
            site_id=terminal.site_id,
            device_id=terminal.device_id,
            bootstrap_key=bootstrap_key,
            name=f"Simulated terminal {terminal.device_id}",
            firmware_version=terminal.model.firmware_version,
            agent_version=SIM_AGENT_VERSION,
            simulated=True,
            device_type=terminal.model.device_type,
        )
        try:
            # A busy server, or a kept-alive connection it closed: try again, later.
            terminal.registration = await retry_async(
                lambda: terminal.client.register(request),
                backoff=SERVER_RECONNECT,
                attempts=REGISTRATION_ATTEMPTS,
                max_seconds=REGISTRATION_MAX_SECONDS,
                retry_on=lambda exc: isinstance(exc, ServerUnavailable),
            )
        except (ServerUnavailable, Refused) as exc:
            raise SimulationError(f"registering {terminal.device_id} failed: {exc}") from exc
        self.stats.registered += 1

    # -- running ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> SimulationStats:
        """Run every terminal (and the operator) until ``stop`` is set."""
        if not self.terminals:
            await self.setup()
        async with asyncio.TaskGroup() as group:
            for terminal in self.terminals:
                group.create_task(self._run_terminal(terminal, stop))
            if self.config.operator:
                group.create_task(self._run_operator(stop))
        if self._labels is not None:
            self._labels.close()
        return self.stats

    async def _run_terminal(self, terminal: SimulatedTerminal, stop: asyncio.Event) -> None:
        tick = self.tick
        # Spread the fleet over the interval, as real terminals switched on at random times.
        if await wait_or_stop(stop, self.rng.uniform(0, tick.total_seconds())):
            return
        async with contextlib.AsyncExitStack() as stack:
            await self._connect_mqtt(terminal, stack)
            jobs = asyncio.create_task(self._receive_jobs(terminal, stop))
            try:
                while not stop.is_set():
                    async with self._in_flight[terminal.pool]:
                        await self.report(terminal)
                    if await wait_or_stop(stop, tick.total_seconds()):
                        break
            finally:
                # Jobs still running stop with their terminal, before its MQTT link closes.
                running = [jobs, *terminal.jobs]
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)

    async def _connect_mqtt(
        self, terminal: SimulatedTerminal, stack: contextlib.AsyncExitStack
    ) -> None:
        info = terminal.registration.mqtt if terminal.registration else None
        if info is None or not self.use_mqtt or terminal.client.api_key is None:
            return
        from homepot.agent.mqtt import DeviceMqttLink

        try:
            terminal.mqtt = await stack.enter_async_context(
                DeviceMqttLink(
                    info.host,
                    info.port,
                    terminal.device_id,
                    terminal.client.api_key,
                    tls=info.tls,
                )
            )
        except Exception as exc:  # the broker is optional: HTTP carries everything
            logger.warning("%s: MQTT unavailable (%s); using HTTP", terminal.device_id, exc)

    def _fault_effects(self, terminal: SimulatedTerminal, now: datetime) -> FaultEffects:
        if terminal.fault is not None and now >= terminal.fault.end:
            if terminal.fault.kind is FaultKind.memory_leak_crash:
                terminal.model.boot(self.simulated_time(now))
            terminal.fault = None
        if terminal.fault is None:
            fault = self.planner.maybe_start(terminal.device_id, terminal.site_id, now, self.tick)
            if fault is not None:
                self._inject(terminal, fault)
        return terminal.model.effects_of(terminal.fault, now, simulated=self.simulated_time(now))

    def _warning(
        self, terminal: SimulatedTerminal, effects: FaultEffects, now: datetime
    ) -> DeviceErrorReport | None:
        """A warning of the link or the gateway in trouble (or, rarely, of a healthy one):
        one report per tick at most, as the terminal sends one error per report."""
        hours = self.config.interval_seconds / 3600
        link, gateway = warning_counts(self._trouble_rng, effects, hours)
        if link:
            return DeviceErrorReport(
                category=ErrorCategory.api,
                severity=ErrorSeverity.warning,
                error_code=LINK_WARNING_CODE,
                message=f"Segments to the server retransmitted {link} time(s) in the last "
                f"{self.config.interval_seconds:.0f} s",
                occurred_at=now,
                context={"retransmit_bursts": link},
            )
        if gateway:
            return DeviceErrorReport(
                category=ErrorCategory.external_service,
                severity=ErrorSeverity.warning,
                error_code=GATEWAY_WARNING_CODE,
                message=f"Payment gateway slow: {gateway} answer(s) over 8 s in the last "
                f"{self.config.interval_seconds:.0f} s",
                occurred_at=now,
                context={"slow_answers": gateway},
            )
        return None

    def _inject(self, terminal: SimulatedTerminal, fault: Fault) -> None:
        terminal.fault = fault
        self.stats.faults += 1
        if self._labels is not None:
            self._labels.write(fault)

    def simulated_time(self, now: datetime) -> datetime:
        """The moment on the simulated clock (it runs ``speed`` times faster since start)."""
        return self.stats.started_at + (now - self.stats.started_at) * self.config.speed

    def wall_time(self, simulated: datetime) -> datetime:
        """The wall-clock moment of a simulated one (labels use the stored rows' clock)."""
        return self.stats.started_at + (simulated - self.stats.started_at) / self.config.speed

    def _label_benign(self, event: BenignEvent) -> None:
        if self._labels is not None:
            self._labels.write(
                replace(event, start=self.wall_time(event.start), end=self.wall_time(event.end))
            )

    async def report(self, terminal: SimulatedTerminal) -> None:
        """One reporting tick: a sample into the backlog, then heartbeat and the backlog."""
        now = self.clock()
        if terminal.rebooting_until is not None and now < terminal.rebooting_until:
            return
        effects = self._fault_effects(terminal, now)
        if effects.crashed:
            terminal.started_at = now  # it reboots when the fault ends
            return
        simulated = self.simulated_time(now)
        interval = timedelta(seconds=self.config.interval_seconds)
        for event in terminal.model.benign_events(
            terminal.last_simulated or simulated - interval, simulated
        ):
            self._label_benign(event)
        terminal.last_simulated = simulated
        fields, timeouts = terminal.model.sample(simulated, interval, effects)
        error_report = None
        if timeouts:
            gateway = terminal.fault.details.get("gateway") if terminal.fault else None
            fields["extra_metrics"]["payment_gateway"] = gateway
            error_report = DeviceErrorReport(
                category=ErrorCategory.external_service,
                severity=ErrorSeverity.critical,
                error_code=PAYMENT_TIMEOUT_CODE,
                message=f"Payment gateway timeout: {gateway} did not answer within 30 s "
                f"({timeouts} payment(s) in the last {self.config.interval_seconds:.0f} s)",
                occurred_at=now,
                context={"gateway": gateway, "timeouts": timeouts},
            )
        else:
            error_report = self._warning(terminal, effects, now)
        sample = MetricSample(
            # Random, not seeded: a second run must not repeat (and lose) the first's ids.
            event_id=uuid.uuid4(),
            timestamp=now,
            collection_interval_seconds=self.tick.total_seconds(),
            **fields,
        ).model_dump(mode="json", exclude_none=True)
        if len(terminal.backlog) == terminal.backlog.maxlen:
            self.stats.samples_dropped += 1
        terminal.backlog.append(sample)
        if not effects.reachable or time.monotonic() < terminal.resume_at:
            return
        heartbeat = Heartbeat(
            status="degraded"
            if terminal.fault is not None and terminal.fault.active_at(now)
            else "ok",
            firmware_version=terminal.model.firmware_version,
            config_version=effects.config_version or terminal.model.config_version,
            uptime_seconds=round((now - terminal.started_at).total_seconds(), 1),
        )
        try:
            await self._send(terminal, heartbeat, error_report)
        except Unauthorized:
            logger.warning(
                "%s: its key was refused; the simulation re-registers it next run",
                terminal.device_id,
            )
            self.stats.refused += 1
        except Refused as exc:
            # Not about a sample (those are dropped one by one): the backlog stays.
            self.stats.refused += 1
            logger.warning("%s: refused: %s", terminal.device_id, exc)
        except ServerUnavailable as exc:
            self.stats.unavailable += 1
            if exc.retry_after:
                terminal.resume_at = time.monotonic() + exc.retry_after

    async def _send(
        self,
        terminal: SimulatedTerminal,
        heartbeat: Heartbeat,
        error_report: DeviceErrorReport | None = None,
    ) -> None:
        link = terminal.mqtt
        if link is None:
            await self._report_over_http(terminal, heartbeat, error_report)
            self.stats.heartbeats += 1
            return
        try:
            await link.publish_heartbeat(heartbeat)
            samples = list(terminal.backlog)
            for start in range(0, len(samples), 500):
                batch = TelemetryBatch.model_validate({"samples": samples[start : start + 500]})
                await link.publish_telemetry(batch)
            if error_report is not None:
                await link.publish_error(error_report)
        except Exception as exc:
            raise ServerUnavailable(f"MQTT: {exc}") from exc
        self.stats.samples_sent += len(terminal.backlog)
        terminal.backlog.clear()
        self.stats.heartbeats += 1
        if self.rng.random() < PUSHED_POLL_SHARE:
            # Now and then, for the executions whose push was not acknowledged in time.
            for command in await terminal.client.poll_jobs():
                self._start_job(terminal, command)

    async def _report_over_http(
        self,
        terminal: SimulatedTerminal,
        heartbeat: Heartbeat,
        error_report: DeviceErrorReport | None,
    ) -> None:
        """One ``POST /agent/report``: the heartbeat, the oldest 500 samples of the backlog
        and the error; its answer brings the jobs. Without push the report asks for jobs every
        poll_every ticks on average; with push now and then, for missed pushes."""
        share = (
            PUSHED_POLL_SHARE if self.job_inbox is not None else 1 / max(1, self.config.poll_every)
        )
        jobs_limit = 10 if self.rng.random() < share else 0
        chunk = [terminal.backlog[i] for i in range(min(500, len(terminal.backlog)))]
        errors = [error_report] if error_report is not None else []
        report_id = uuid.uuid4()
        try:
            answer = await terminal.client.report(
                report_id, heartbeat=heartbeat, samples=chunk, errors=errors, jobs_limit=jobs_limit
            )
        except Refused as exc:
            if not _names_a_sample(exc) or not chunk:
                raise
            # A sample is refused by name: the backlog goes the careful way (refused samples
            # dropped one by one), then the report without samples.
            await self._deliver_backlog(terminal)
            chunk = []
            answer = await terminal.client.report(
                report_id, heartbeat=heartbeat, errors=errors, jobs_limit=jobs_limit
            )
        for _ in chunk:
            terminal.backlog.popleft()
        self.stats.samples_sent += len(chunk)
        await self._deliver_backlog(terminal)  # what one report could not carry
        for command in answer.jobs:
            self._start_job(terminal, command)

    async def _deliver_backlog(self, terminal: SimulatedTerminal) -> None:
        """Send the backlog oldest first, 500 at a time. A sample leaves it once the server
        took it, or refused it by name; a refused chunk is sent again one by one, so that
        only the samples at fault are dropped."""
        while terminal.backlog:
            chunk = [terminal.backlog[i] for i in range(min(500, len(terminal.backlog)))]
            try:
                await terminal.client.send_raw_telemetry(chunk)
            except Refused as exc:
                if not _names_a_sample(exc):
                    raise
                for _ in chunk:
                    await self._deliver_alone(terminal)
                continue
            for _ in chunk:
                terminal.backlog.popleft()
            self.stats.samples_sent += len(chunk)

    async def _deliver_alone(self, terminal: SimulatedTerminal) -> None:
        try:
            await terminal.client.send_raw_telemetry([terminal.backlog[0]])
            self.stats.samples_sent += 1
        except Refused as exc:
            if not _names_a_sample(exc):
                raise
            self.stats.samples_refused += 1
            logger.warning("%s: a sample was refused and dropped: %s", terminal.device_id, exc)
        terminal.backlog.popleft()

    async def _receive_jobs(self, terminal: SimulatedTerminal, stop: asyncio.Event) -> None:
        if terminal.mqtt is not None:
            with contextlib.suppress(Exception):
                async for command in terminal.mqtt.commands():
                    self._start_job(terminal, command)
            return
        if self.job_inbox is None:
            return
        inbox = self.job_inbox(terminal.device_id)
        while not stop.is_set():
            command = await inbox.get()
            # Like a real device: a crashed or cut-off terminal never hears the push (and so
            # never acknowledges it); it gets the job by polling once it is back.
            if not self._is_down(terminal):
                self._start_job(terminal, command)

    def _is_down(self, terminal: SimulatedTerminal) -> bool:
        effects = terminal.model.effects_of(terminal.fault, self.clock())
        return effects.crashed or not effects.reachable

    def _start_job(self, terminal: SimulatedTerminal, command: JobCommand) -> None:
        self.stats.jobs_received += 1
        task = asyncio.create_task(self._execute(terminal, command))
        terminal.jobs.add(task)
        task.add_done_callback(terminal.jobs.discard)

    async def _execute(self, terminal: SimulatedTerminal, command: JobCommand) -> None:
        started = self.clock()
        try:
            if terminal.mqtt is not None:
                await terminal.mqtt.publish_ack(command.execution_id)
            else:
                await terminal.client.ack(command.execution_id)
        except Exception as exc:  # an ack is best effort: the result still counts
            logger.info("%s: ack of %s failed: %s", terminal.device_id, command.execution_id, exc)
        fault = terminal.fault
        if fault is not None and not fault.active_at(self.clock()):
            fault = None  # only its precursor yet: the terminal still works
        result = await simulate_job(terminal.model, command, speed=self.config.speed, fault=fault)
        result = result.model_copy(update={"started_at": started, "finished_at": self.clock()})
        if command.job_type == "firmware_update" and result.status is JobResultStatus.success:
            # The new version needs a restart: off for a few minutes, then a fresh start.
            now = self.clock()
            self._label_benign(
                terminal.model.firmware_reboot(self.simulated_time(now), terminal.site_id)
            )
            terminal.rebooting_until = now + FIRMWARE_REBOOT / self.config.speed
            terminal.started_at = terminal.rebooting_until

        async def send_result() -> None:
            if terminal.mqtt is not None:
                await terminal.mqtt.publish_result(result)
            else:
                await terminal.client.send_result(result)

        tick = self.tick.total_seconds()
        try:
            await retry_async(
                send_result,
                backoff=Backoff(initial=tick, maximum=4 * tick),
                attempts=5,
                max_seconds=20 * tick,
                retry_on=lambda exc: not isinstance(exc, Refused),
            )
        except Refused as exc:
            logger.info(
                "%s: result of %s refused: %s", terminal.device_id, command.execution_id, exc
            )
        except Exception as exc:
            logger.info(
                "%s: result of %s not delivered: %s", terminal.device_id, command.execution_id, exc
            )
        if result.status is JobResultStatus.success:
            self.stats.jobs_succeeded += 1
        else:
            self.stats.jobs_failed += 1

    # -- the operator ----------------------------------------------------------------------

    async def _run_operator(self, stop: asyncio.Event) -> None:
        """A person at the dashboard: page views, searches, reads, now and then a job."""
        session_id = uuid.uuid4().hex
        rng = random.Random(self.rng.random())
        step = 0
        while not await wait_or_stop(stop, self.config.operator_interval_seconds if step else 1.0):
            try:
                await self._operator_step(rng, session_id, step)
            except (httpx.TransportError, SimulationError) as exc:
                logger.info("operator step failed: %s", exc)
            step += 1

    async def _operator_step(self, rng: random.Random, session_id: str, step: int) -> None:
        terminal = rng.choice(self.terminals)
        pages = [
            ("page_view", "/dashboard", None, None),
            ("page_view", "/devices", None, None),
            ("search", "/devices", "device-search", terminal.device_id[-4:]),
            ("click", "/devices", f"device-row-{terminal.device_id}", None),
            ("page_view", f"/devices/{terminal.device_id}", None, None),
            ("page_view", "/analytics", None, None),
            ("click", "/analytics", "refresh-button", None),
        ]
        events = []
        for activity, page, element, query in rng.sample(pages, k=rng.randint(3, len(pages))):
            events.append(
                {
                    "event_id": str(uuid.uuid4()),
                    "activity_type": activity,
                    "session_id": session_id,
                    "page_url": page,
                    "element_id": element,
                    "search_query": query,
                    "duration_ms": rng.randint(800, 90_000) if activity == "page_view" else None,
                }
            )
        response = await self._api("POST", "/analytics/user-activities", json={"events": events})
        if response.status_code == 202:
            self.stats.activities += len(events)
        await self._api("GET", "/devices", params={"site_id": terminal.site_id})
        await self._api("GET", f"/devices/{terminal.device_id}")
        await self._api(
            "GET",
            "/analytics/device-metrics",
            params={"device_id": terminal.device_id, "limit": 50},
        )
        self.stats.operator_calls += 4
        action = step % 4
        if action == 0:
            body = {
                "job_type": "restart",
                "target_type": "device",
                "target_id": terminal.device_id,
                "description": "Operator restart from the dashboard",
                "timeout_seconds": 120,
            }
        elif action == 1:
            version = rng.choice(("2.6.0", "2.6.2", "2.7.0"))
            body = {
                "job_type": "config_change",
                "target_type": "site",
                "target_id": terminal.site_id,
                "payload": {"config": {"config_version": version, "receipt_footer": "Thank you!"}},
                "description": f"Roll out configuration {version}",
                "timeout_seconds": 120,
            }
        elif action == 2:
            body = {
                "job_type": "firmware_update",
                "target_type": "device",
                "target_id": terminal.device_id,
                "payload": {"version": "2.7.1"},
                "timeout_seconds": 300,
            }
        else:
            await self._api(
                "PATCH",
                f"/devices/{terminal.device_id}",
                json={"config": {"printer_timeout_ms": rng.choice((1500, 3000, 4500))}},
            )
            self.stats.operator_calls += 1
            return
        await self._api("POST", "/jobs", json=body)
        self.stats.operator_calls += 1
