"""MQTT through the real Mosquitto broker: job push, the uplink bridge, reconnects."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiomqtt
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import update

from homepot.agent.mqtt import DeviceMqttLink
from homepot.analytics.models import DeviceMetrics, ErrorLog, JobOutcome
from homepot.config import FleetSettings, Settings
from homepot.device.models import Device, HealthCheck
from homepot.fleet.mqtt import UPLINK_LEADERSHIP, UPLINK_LEADERSHIP_CHECK_SECONDS
from homepot.fleet.push import MqttChannel, PushUnavailableError, UnavailableChannel
from homepot.job.models import ExecutionStatus, Job, JobExecution, JobStatus, JobTargetType
from homepot.kit.keys import hash_key, new_device_key
from homepot.kit.retry import Backoff
from homepot.kit.singleton import Leadership
from homepot.main import create_app
from homepot.protocol.channels import InProcessChannel
from homepot.protocol.messages import (
    DeviceErrorReport,
    ErrorCategory,
    ErrorSeverity,
    Heartbeat,
    JobCommand,
    JobResult,
    JobResultStatus,
    MetricSample,
    TelemetryBatch,
    topics,
)
from homepot.protocol.mqtt import SignedMessage, broker_address, device_secret, sign
from tests.fleet.brokers import Broker, open_broker
from tests.helpers import create_device, db_rows, flush
from tests.ports import refused_port

__all__ = ["open_broker"]  # fixture

BROKER_HOST = "127.0.0.1"
BROKER_PORT = 1883
BROKER_URL = f"mqtt://{BROKER_HOST}:{BROKER_PORT}"
T = TypeVar("T")


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((BROKER_HOST, port)) == 0


requires_broker = pytest.mark.skipif(
    not _answers(BROKER_PORT),
    reason=f"no MQTT broker at {BROKER_URL}; start it with scripts/ensure-services.sh",
)


async def _eventually(check: Callable[[], Awaitable[T]], *, within: float = 10.0) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {within} s: {check.__name__}")
        await asyncio.sleep(0.05)


async def _device_with_key(app: FastAPI, site_id: str | None = None) -> tuple[str, str]:
    """A device with its own API key; returns (device_id, api_key)."""
    device_id = await create_device(app, site_id=site_id, device_id=f"pos-{uuid.uuid4().hex[:10]}")
    api_key = new_device_key()
    async with app.state.session_factory() as session:
        await session.execute(
            update(Device)
            .where(Device.device_id == device_id)
            .values(api_key_hash=hash_key(api_key))
        )
        await session.commit()
    return device_id, api_key


def _batch(samples: int = 2, **metrics: Any) -> TelemetryBatch:
    values = {"cpu_percent": 41.5, "memory_percent": 62.0, "transaction_count": 3} | metrics
    return TelemetryBatch(
        samples=[
            MetricSample(
                event_id=uuid.uuid4(),
                timestamp=datetime.now(UTC),
                collection_interval_seconds=30,
                **values,
            )
            for _ in range(samples)
        ]
    )


def _command(execution_id: int = 7) -> JobCommand:
    return JobCommand(
        execution_id=execution_id,
        job_id=f"job-{uuid.uuid4().hex[:8]}",
        job_type="restart",
        payload={"reason": "test"},
        timeout_seconds=60,
        attempt=0,
        issued_at=datetime.now(UTC),
    )


async def _metrics(app: FastAPI, device_id: str) -> list[Any]:
    await flush(app)
    return await db_rows(app, DeviceMetrics, device_id=device_id)


async def _errors(app: FastAPI, device_id: str, code: str) -> list[Any]:
    await flush(app)
    return await db_rows(app, ErrorLog, device_id=device_id, error_code=code)


async def _next_command(link: DeviceMqttLink) -> JobCommand:
    async def first() -> JobCommand:
        async for command in link.commands():
            return command
        raise AssertionError("the link stopped without a command")

    return await asyncio.wait_for(first(), 5.0)


async def _publish_raw(topic: str, payload: bytes) -> None:
    async with aiomqtt.Client(BROKER_HOST, BROKER_PORT) as raw:
        await raw.publish(topic, payload, qos=1)


def mqtt_fleet(url: str = BROKER_URL, **options: Any) -> FleetSettings:
    """Fleet settings for a test's bridge: the broker forgets its session a minute after
    the test (the shared broker would otherwise keep queueing for it)."""
    return FleetSettings(mqtt_url=url, mqtt_session_expiry_seconds=60, **options)


def _signer(*keys: tuple[str, str]) -> Callable[[str], Awaitable[bytes | None]]:
    """What MqttChannel signs with: the secrets of these (device_id, api_key) pairs."""
    secrets = {device_id: device_secret(key) for device_id, key in keys}

    async def secret_for(device_id: str) -> bytes | None:
        return secrets.get(device_id)

    return secret_for


@pytest.fixture
async def mqtt_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with the MQTT bridge connected to the real broker."""
    application = create_app(settings.model_copy(update={"fleet": mqtt_fleet()}))
    async with LifespanManager(application):
        assert application.state.mqtt_bridge.connected.is_set()
        yield application


def test_broker_address_accepts_mqtt_urls_only() -> None:
    assert broker_address("mqtt://broker.local") == ("broker.local", 1883)
    assert broker_address("mqtt://127.0.0.1:11883") == ("127.0.0.1", 11883)
    with pytest.raises(ValueError, match="mqtt://127.0.0.1:1883"):
        broker_address("http://127.0.0.1:1883")


async def test_without_a_broker_the_app_pushes_in_process(settings: Settings) -> None:
    application = create_app(settings.model_copy(update={"fleet": FleetSettings(mqtt_url="")}))
    async with LifespanManager(application):
        channel = application.state.push_channel
        assert isinstance(channel, InProcessChannel)
        command = _command()
        await channel.push("pos-1", command)
        assert channel.inbox("pos-1").get_nowait() == command


@requires_broker
async def test_a_pushed_job_reaches_the_device() -> None:
    device_id, api_key = f"pos-{uuid.uuid4().hex[:10]}", new_device_key()
    command = _command(execution_id=42)
    async with (
        aiomqtt.Client(BROKER_HOST, BROKER_PORT) as server,
        DeviceMqttLink(BROKER_HOST, BROKER_PORT, device_id, api_key) as link,
    ):
        await MqttChannel(server, _signer((device_id, api_key))).push(device_id, command)
        assert await _next_command(link) == command


@requires_broker
async def test_another_devices_jobs_are_not_delivered() -> None:
    mine, other = f"pos-{uuid.uuid4().hex[:10]}", f"pos-{uuid.uuid4().hex[:10]}"
    my_key, other_key = new_device_key(), new_device_key()
    async with (
        aiomqtt.Client(BROKER_HOST, BROKER_PORT) as server,
        DeviceMqttLink(BROKER_HOST, BROKER_PORT, mine, my_key) as link,
    ):
        channel = MqttChannel(server, _signer((mine, my_key), (other, other_key)))
        await channel.push(other, _command(execution_id=1))
        await channel.push(mine, _command(execution_id=2))
        assert (await _next_command(link)).execution_id == 2


@requires_broker
async def test_the_app_pushes_jobs_through_the_broker(mqtt_app: FastAPI) -> None:
    device_id, api_key = await _device_with_key(mqtt_app)
    async with DeviceMqttLink.from_url(BROKER_URL, device_id, api_key) as link:
        assert isinstance(mqtt_app.state.push_channel, MqttChannel)
        await mqtt_app.state.push_channel.push(device_id, _command(execution_id=9))
        assert (await _next_command(link)).execution_id == 9


@requires_broker
async def test_telemetry_and_heartbeats_over_mqtt_are_stored(mqtt_app: FastAPI) -> None:
    device_id, api_key = await _device_with_key(mqtt_app)
    batch = _batch(samples=3, cpu_percent=77.0)
    async with DeviceMqttLink.from_url(BROKER_URL, device_id, api_key) as link:
        await link.publish_telemetry(batch)
        await link.publish_heartbeat(Heartbeat(status="ok", uptime_seconds=120))

        async def three_samples() -> list[Any]:
            rows = await _metrics(mqtt_app, device_id)
            return rows if len(rows) == 3 else []

        async def a_health_check() -> list[Any]:
            return await db_rows(mqtt_app, HealthCheck, device_id=device_id)

        stored = await _eventually(three_samples)
        assert {row.cpu_percent for row in stored} == {77.0}
        assert {row.collection_interval_seconds for row in stored} == {30}
        assert await _eventually(a_health_check)

        # The same batch again (a device retrying) is stored once.
        await link.publish_telemetry(batch)
        await link.publish_telemetry(_batch(samples=1))

        async def four_samples() -> list[Any]:
            rows = await _metrics(mqtt_app, device_id)
            return rows if len(rows) >= 4 else []

        assert len(await _eventually(four_samples)) == 4
    async with mqtt_app.state.session_factory() as session:
        device = await session.get(Device, device_id)
        assert device is not None
        assert device.last_seen_at is not None


@requires_broker
async def test_a_wrong_or_foreign_key_is_rejected_and_logged(mqtt_app: FastAPI) -> None:
    device_id, _ = await _device_with_key(mqtt_app)
    other_id, other_key = await _device_with_key(mqtt_app)
    wrong_key = new_device_key()

    async with DeviceMqttLink.from_url(BROKER_URL, device_id, wrong_key) as link:
        await link.publish_telemetry(_batch())
    # Another device's valid key, used on this device's topic.
    async with DeviceMqttLink.from_url(BROKER_URL, device_id, other_key) as link:
        await link.publish_heartbeat(Heartbeat(status="ok"))

    async def two_rejections() -> list[Any]:
        rows = await _errors(mqtt_app, device_id, "MQTT_AUTH_REJECTED")
        return rows if len(rows) == 2 else []

    rejections = await _eventually(two_rejections)
    assert {(row.category, row.severity) for row in rejections} == {("external_service", "warning")}
    assert all(
        f"not made with {device_id}'s current key" in row.error_message for row in rejections
    )
    # Neither key appears anywhere in the log.
    stored_text = json.dumps([[row.error_message, row.context] for row in rejections])
    assert wrong_key not in stored_text
    assert other_key not in stored_text
    # Nothing was stored for either device.
    assert await _metrics(mqtt_app, device_id) == []
    assert await db_rows(mqtt_app, HealthCheck, device_id=device_id) == []
    assert await db_rows(mqtt_app, HealthCheck, device_id=other_id) == []


@requires_broker
async def test_a_payload_naming_another_device_is_rejected(mqtt_app: FastAPI) -> None:
    device_id, api_key = await _device_with_key(mqtt_app)
    other_id, _ = await _device_with_key(mqtt_app)
    async with DeviceMqttLink.from_url(BROKER_URL, device_id, api_key) as link:
        await link.publish_heartbeat(Heartbeat(device_id=other_id, status="ok"))

    async def rejected() -> list[Any]:
        return await _errors(mqtt_app, device_id, "MQTT_AUTH_REJECTED")

    [row] = await _eventually(rejected)
    assert f"names {other_id}" in row.error_message
    assert await db_rows(mqtt_app, HealthCheck, device_id=other_id) == []
    assert await db_rows(mqtt_app, HealthCheck, device_id=device_id) == []


@requires_broker
async def test_malformed_messages_are_dropped_and_the_bridge_keeps_going(
    mqtt_app: FastAPI,
) -> None:
    device_id, api_key = await _device_with_key(mqtt_app)
    topic = topics.telemetry(device_id)
    await _publish_raw(topic, b"\xff not json at all")
    out_of_range = _batch(samples=1).model_dump(mode="json")
    out_of_range["samples"][0]["cpu_percent"] = 150
    body = json.dumps(out_of_range)
    signed = SignedMessage(body=body, mac=sign(device_secret(api_key), topic, body))
    await _publish_raw(topic, signed.model_dump_json().encode())
    async with DeviceMqttLink.from_url(BROKER_URL, device_id, api_key) as link:
        await link.publish_telemetry(_batch(samples=1, cpu_percent=12.5))

    async def the_good_sample() -> list[Any]:
        return await _metrics(mqtt_app, device_id)

    [stored] = await _eventually(the_good_sample)
    assert stored.cpu_percent == 12.5

    async def two_bad_payloads() -> list[Any]:
        rows = await _errors(mqtt_app, device_id, "MQTT_BAD_PAYLOAD")
        return rows if len(rows) == 2 else []

    bad = await _eventually(two_bad_payloads)
    assert {(row.category, row.severity) for row in bad} == {("validation", "warning")}
    assert any("samples.0.cpu_percent" in row.error_message for row in bad)
    assert all(api_key not in row.error_message for row in bad)


async def _dispatched_execution(app: FastAPI, device_id: str) -> int:
    """A restart job for ``device_id`` whose execution has been pushed (not yet acknowledged)."""
    now = datetime.now(UTC)
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    async with app.state.session_factory() as session:
        session.add(
            Job(
                job_id=job_id,
                job_type="restart",
                target_type=JobTargetType.device,
                target_id=device_id,
                payload={},
                status=JobStatus.pending,
                created_by="tester",
            )
        )
        await session.flush()
        execution = JobExecution(
            job_id=job_id,
            device_id=device_id,
            status=ExecutionStatus.dispatched,
            attempt=0,
            not_before=now,
            first_dispatched_at=now,
            dispatched_at=now,
            deadline_at=now + timedelta(minutes=5),
            delivery="push",
        )
        session.add(execution)
        await session.commit()
        return execution.id


async def _execution(app: FastAPI, execution_id: int) -> JobExecution:
    async with app.state.session_factory() as session:
        execution = await session.get(JobExecution, execution_id)
        assert execution is not None
        return execution


@requires_broker
async def test_job_acks_and_results_over_mqtt_finish_the_execution(mqtt_app: FastAPI) -> None:
    device_id, api_key = await _device_with_key(mqtt_app)
    execution_id = await _dispatched_execution(mqtt_app, device_id)
    async with DeviceMqttLink.from_url(BROKER_URL, device_id, api_key) as link:
        await link.publish_ack(execution_id)

        async def running() -> bool:
            execution = await _execution(mqtt_app, execution_id)
            return execution.status is ExecutionStatus.running

        await _eventually(running)
        await link.publish_result(
            JobResult(
                execution_id=execution_id,
                status=JobResultStatus.failed,
                error_code="PRINTER_JAMMED",
                error_message="the receipt printer is jammed",
            )
        )
        # Acknowledging an execution the device does not have is refused and logged.
        await link.publish_ack(execution_id + 1000)

        async def an_outcome() -> list[Any]:
            await flush(mqtt_app)
            return await db_rows(mqtt_app, JobOutcome, device_id=device_id)

        [outcome] = await _eventually(an_outcome)
        assert (outcome.status, outcome.error_code) == ("failed", "PRINTER_JAMMED")
        assert (await _execution(mqtt_app, execution_id)).status is ExecutionStatus.failed

        async def a_refusal() -> list[Any]:
            return await _errors(mqtt_app, device_id, "MQTT_MESSAGE_REJECTED")

        [refusal] = await _eventually(a_refusal)
        assert f"execution {execution_id + 1000} does not exist" in refusal.error_message


async def test_a_broker_that_does_not_answer_leaves_jobs_to_polling(settings: Settings) -> None:
    with refused_port() as closed_port:
        application = create_app(
            settings.model_copy(
                update={"fleet": FleetSettings(mqtt_url=f"mqtt://{BROKER_HOST}:{closed_port}")}
            )
        )
        await _polls_only(application, closed_port)


async def _polls_only(application: FastAPI, closed_port: int) -> None:
    async with LifespanManager(application):
        channel = application.state.push_channel
        assert isinstance(channel, UnavailableChannel)
        with pytest.raises(PushUnavailableError, match="polling"):
            await channel.push("pos-1", _command())
        await flush(application)
        [logged] = await db_rows(application, ErrorLog, error_code="MQTT_DISCONNECTED")
        assert logged.category == "external_service"
        assert str(closed_port) in logged.error_message


async def test_the_bridge_reconnects_after_the_broker_restarts(
    settings: Settings, open_broker: Broker
) -> None:
    port = open_broker.port
    application = create_app(
        settings.model_copy(update={"fleet": mqtt_fleet(f"mqtt://{BROKER_HOST}:{port}")})
    )
    async with LifespanManager(application):
        bridge = application.state.mqtt_bridge
        assert isinstance(application.state.push_channel, MqttChannel)

        open_broker.stop()

        async def disconnected() -> bool:
            return isinstance(application.state.push_channel, UnavailableChannel)

        await _eventually(disconnected)
        with pytest.raises(PushUnavailableError, match="unreachable"):
            await application.state.push_channel.push("pos-1", _command())

        open_broker.start()

        async def reconnected() -> bool:
            return bridge.connected.is_set()

        await _eventually(reconnected, within=15)
        device_id, api_key = await _device_with_key(application)
        async with DeviceMqttLink(BROKER_HOST, port, device_id, api_key) as link:
            await application.state.push_channel.push(device_id, _command(execution_id=5))
            assert (await _next_command(link)).execution_id == 5
            await link.publish_heartbeat(Heartbeat(status="ok"))

            async def a_health_check() -> list[Any]:
                return await db_rows(application, HealthCheck, device_id=device_id)

            assert await _eventually(a_health_check)
        await flush(application)
        [outage] = await db_rows(application, ErrorLog, error_code="MQTT_DISCONNECTED")
        assert outage.severity == "error"


async def test_a_reader_cut_off_from_its_broker_lets_the_uplink_go_for_good(
    backend: str, settings: Settings, open_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without shared subscriptions one process reads the uplink (an advisory lock). When its
    broker goes away it resigns, so that a process that reaches a broker reads; it must not
    take the lock back while it waits to reconnect (its role watcher did, two seconds
    later, and no other process ever read the uplink again)."""
    if backend != "postgresql":
        pytest.skip("the uplink's lock is a PostgreSQL advisory lock; SQLite runs one process")
    fleet = mqtt_fleet(
        f"mqtt://{BROKER_HOST}:{open_broker.port}",
        mqtt_protocol="3.1.1",
        mqtt_shared_subscription=False,
    )
    # Waits between reconnections longer than a role check: the bridge's first wait is where
    # the watcher took the lock back (at the default backoff, now and then).
    monkeypatch.setattr("homepot.fleet.mqtt.BROKER_RECONNECT", Backoff(initial=8, maximum=8))
    application = create_app(settings.model_copy(update={"fleet": fleet}))
    async with LifespanManager(application):
        bridge = application.state.mqtt_bridge
        leadership = application.state.leadership

        async def reads() -> bool:
            return bool(bridge.reads_uplink and bridge.connected.is_set())

        await _eventually(reads, within=15)
        assert leadership.leads(UPLINK_LEADERSHIP)

        open_broker.stop()

        async def resigned() -> bool:
            return not leadership.leads(UPLINK_LEADERSHIP)

        await _eventually(resigned, within=15)
        # Several role checks later (every UPLINK_LEADERSHIP_CHECK_SECONDS), still let go,
        # and another process can take the lock.
        await asyncio.sleep(3 * UPLINK_LEADERSHIP_CHECK_SECONDS)
        assert not leadership.leads(UPLINK_LEADERSHIP)
        other = Leadership(application.state.engine)
        try:
            assert await other.holds(UPLINK_LEADERSHIP)
        finally:
            await other.release()


@requires_broker
async def test_every_device_message_delivered_twice_is_stored_once(mqtt_app: FastAPI) -> None:
    """QoS 1 redelivers a message the server stored but had not acknowledged (killed between
    the commit and the PUBACK): the same bytes again. Each kind is stored once."""
    device_id, api_key = await _device_with_key(mqtt_app)
    heartbeat = Heartbeat(status="ok", uptime_seconds=60)
    report = DeviceErrorReport(
        severity=ErrorSeverity.error, error_code="PRINTER_JAM", message="jam"
    )
    batch = _batch(samples=2)
    async with DeviceMqttLink.from_url(BROKER_URL, device_id, api_key) as link:
        for _ in range(2):
            await link.publish_heartbeat(heartbeat)
            await link.publish_error(report)
            await link.publish_telemetry(batch)
        # A different heartbeat, with the same content but its own id: stored too.
        await link.publish_heartbeat(Heartbeat(status="ok", uptime_seconds=60))

        async def two_health_checks() -> list[Any]:
            rows = await db_rows(mqtt_app, HealthCheck, device_id=device_id)
            return rows if len(rows) >= 2 else []

        await _eventually(two_health_checks)
    await mqtt_app.state.recorder.flush()
    checks = await db_rows(mqtt_app, HealthCheck, device_id=device_id)
    assert len(checks) == 2
    assert len({check.event_id for check in checks}) == 2
    assert len(await _errors(mqtt_app, device_id, "PRINTER_JAM")) == 1
    assert len(await _metrics(mqtt_app, device_id)) == 2


async def test_a_device_error_report_over_mqtt_is_stored(mqtt_app: FastAPI) -> None:
    device_id, api_key = await _device_with_key(mqtt_app)
    occurred = (datetime.now(UTC) - timedelta(minutes=2)).replace(microsecond=0)
    report = DeviceErrorReport(
        category=ErrorCategory.external_service,
        severity=ErrorSeverity.critical,
        error_code="EXT_SERVICE_TIMEOUT",
        message="Payment gateway timeout: acquirer-us did not answer within 30 s",
        occurred_at=occurred,
        context={"gateway": "acquirer-us", "api_key": api_key},
    )
    async with DeviceMqttLink.from_url(BROKER_URL, device_id, api_key) as link:
        await link.publish_error(report)

        async def the_report() -> list[Any]:
            return await _errors(mqtt_app, device_id, "EXT_SERVICE_TIMEOUT")

        (row,) = await _eventually(the_report)
    assert (row.category, row.severity, row.timestamp) == ("external_service", "critical", occurred)
    assert row.error_message == report.message
    assert row.context["source"] == "device"
    assert row.context["gateway"] == "acquirer-us"
    assert row.context["api_key"] == "[REDACTED]"
