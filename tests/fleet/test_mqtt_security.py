"""The broker is not a trust boundary left open: devices log in as themselves and reach only
their own topics, no key travels in a payload, and a forged or replayed job is refused even
on an open broker. Each test runs a Mosquitto of its own (tests/fleet/brokers.py)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import update

from homepot.agent.mqtt import DeviceMqttLink, JobReplayGuard
from homepot.analytics.models import DeviceMetrics, ErrorLog
from homepot.auth.models import Role
from homepot.config import Settings
from homepot.device.models import Device, HealthCheck
from homepot.fleet.device_keys import device_credentials_changed
from homepot.fleet.mqtt import share_group
from homepot.fleet.push import PushUnavailableError
from homepot.kit.keys import new_device_key
from homepot.main import create_app
from homepot.protocol.messages import Heartbeat, JobCommand, topics
from homepot.protocol.mqtt import SignedMessage, broker_password, device_secret
from tests.fleet.brokers import HOST, Broker, open_broker, secured_broker, tls_broker
from tests.fleet.test_mqtt import _batch, _command, _device_with_key, _eventually, mqtt_fleet
from tests.helpers import (
    auth_headers,
    create_bootstrap_key,
    create_registered_device,
    create_site,
    db_rows,
    flush,
)

__all__ = ["open_broker", "secured_broker", "tls_broker"]  # fixtures


@pytest.fixture
async def secured_app(settings: Settings, secured_broker: Broker) -> AsyncIterator[FastAPI]:
    """The app logged in to the secured broker with its own account, keeping the devices'
    broker accounts in the broker's password file."""
    fleet = mqtt_fleet(
        secured_broker.server_url,
        mqtt_password_file=secured_broker.password_file,
        mqtt_broker_pid_file=secured_broker.pid_file,
    )
    application = create_app(settings.model_copy(update={"fleet": fleet}))
    async with LifespanManager(application):
        assert application.state.mqtt_bridge.connected.is_set()
        yield application


@pytest.fixture
async def http(secured_app: FastAPI) -> AsyncIterator[AsyncClient]:
    transport = ASGITransport(app=secured_app, client=("203.0.113.9", 50000))
    async with AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def _register(
    app: FastAPI,
    http: AsyncClient,
    device_id: str | None = None,
    site_id: str | None = None,
    current_key: str | None = None,
) -> tuple[str, str]:
    extra = {"current_api_key": current_key} if current_key else {}
    device_id, headers = await create_registered_device(
        app, http, device_id=device_id, site_id=site_id, **extra
    )
    return device_id, headers["Authorization"].removeprefix("Bearer ")


@contextlib.asynccontextmanager
async def _linked(broker: Broker, device_id: str, api_key: str) -> AsyncIterator[DeviceMqttLink]:
    """The device's link, once the broker has reloaded its password file (SIGHUP)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        link = DeviceMqttLink(HOST, broker.port, device_id, api_key)
        try:
            await link.__aenter__()
            break
        except aiomqtt.MqttError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)
    try:
        yield link
    finally:
        await link.__aexit__(None, None, None)


async def _refused(broker: Broker, **login: Any) -> bool:
    try:
        async with aiomqtt.Client(HOST, broker.port, **login):
            return False
    except aiomqtt.MqttError:
        return True


async def _next(link: DeviceMqttLink) -> JobCommand:
    async def first() -> JobCommand:
        async for command in link.commands():
            return command
        raise AssertionError("the link stopped")

    return await asyncio.wait_for(first(), 10)


async def test_anonymous_and_unknown_clients_cannot_connect(
    secured_app: FastAPI, secured_broker: Broker
) -> None:
    assert await _refused(secured_broker)
    assert await _refused(secured_broker, username="pos-unknown", password="x" * 64)
    # Not even as the server with a guessed password.
    assert await _refused(secured_broker, username="HOMEPOT-SERVER", password="homepot")


async def test_a_device_reaches_only_its_own_topics(
    secured_app: FastAPI, secured_broker: Broker, http: AsyncClient, settings: Settings
) -> None:
    mine, my_key = await _register(secured_app, http)
    theirs, their_key = await _register(secured_app, http)
    async with (
        _linked(secured_broker, theirs, their_key) as their_link,
        _linked(secured_broker, mine, my_key),
        aiomqtt.Client(
            HOST,
            secured_broker.port,
            username=mine,
            password=broker_password(device_secret(my_key)),
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as intruder,
    ):
        # The intruder (a real device, logged in as itself) listens on the other device's
        # jobs and joins the share group a guess of the server's would give; it publishes a
        # job for the other device and telemetry in its name, signed with its own key.
        await intruder.subscribe(topics.jobs(theirs), qos=1)
        guessed = share_group(settings.database_url)
        assert guessed != secured_app.state.mqtt_bridge._group
        for group in (guessed, "anything"):
            await intruder.subscribe(f"$share/{group}/{topics.PREFIX}/+/telemetry", qos=1)
        await intruder.subscribe(topics.jobs(mine), qos=1)
        forged_job = SignedMessage.of(device_secret(my_key), topics.jobs(theirs), _command(1))
        await intruder.publish(topics.jobs(theirs), forged_job.model_dump_json(), qos=1)
        theirs_telemetry = topics.telemetry(theirs)
        forged = SignedMessage.of(device_secret(my_key), theirs_telemetry, _batch(cpu_percent=99))
        await intruder.publish(theirs_telemetry, forged.model_dump_json(), qos=1)

        # The other device gets the server's job and nothing before it: the forged job never
        # reached it.
        channel = secured_app.state.push_channel
        await channel.push(theirs, _command(execution_id=2))
        assert (await _next(their_link)).execution_id == 2
        assert their_link.refused_jobs == 0
        # Its telemetry reaches the server whole, although the intruder joined share groups.
        for cpu in range(10):
            await their_link.publish_telemetry(_batch(samples=1, cpu_percent=float(cpu)))

        async def ten_samples() -> list[Any]:
            await flush(secured_app)
            rows = await db_rows(secured_app, DeviceMetrics, device_id=theirs)
            return rows if len(rows) >= 10 else []

        stored = await _eventually(ten_samples)
        assert sorted(row.cpu_percent for row in stored) == [float(cpu) for cpu in range(10)]
        # The telemetry published in its name never got past the broker to be refused.
        assert await db_rows(secured_app, ErrorLog, error_code="MQTT_AUTH_REJECTED") == []

        # The intruder's first message is its own job: it received nothing of the other's.
        await channel.push(mine, _command(execution_id=3))

        async def first_delivery() -> aiomqtt.Message:
            async for message in intruder.messages:
                return message
            raise AssertionError("the intruder's connection closed")

        delivered = await asyncio.wait_for(first_delivery(), 10)
        assert delivered.topic.value == topics.jobs(mine)


async def test_registering_again_retires_the_old_broker_password(
    secured_app: FastAPI, secured_broker: Broker, http: AsyncClient
) -> None:
    site_id = await create_site(secured_app)
    device_id, old_key = await _register(secured_app, http, site_id=site_id)
    async with _linked(secured_broker, device_id, old_key) as link:
        await link.publish_heartbeat(Heartbeat(status="ok"))

        async def a_health_check() -> list[Any]:
            return await db_rows(secured_app, HealthCheck, device_id=device_id)

        assert await _eventually(a_health_check)
    _, new_key = await _register(
        secured_app, http, device_id=device_id, site_id=site_id, current_key=old_key
    )
    old_login = {"username": device_id, "password": broker_password(device_secret(old_key))}

    async def old_password_refused() -> bool:
        return await _refused(secured_broker, **old_login)

    await _eventually(old_password_refused)
    async with _linked(secured_broker, device_id, new_key) as link:
        await link.publish_heartbeat(Heartbeat(status="ok"))

        async def two_health_checks() -> list[Any]:
            rows = await db_rows(secured_app, HealthCheck, device_id=device_id)
            return rows if len(rows) == 2 else []

        assert await _eventually(two_health_checks)


async def test_a_deleted_or_revoked_device_loses_its_broker_account(
    secured_app: FastAPI, secured_broker: Broker, http: AsyncClient
) -> None:
    admin = await auth_headers(secured_app, http, Role.admin)
    site_id = await create_site(secured_app)
    logins = {}
    for _ in range(2):
        device_id, api_key = await _register(secured_app, http, site_id=site_id)
        async with _linked(secured_broker, device_id, api_key):
            pass  # its account works
        logins[device_id] = {
            "username": device_id,
            "password": broker_password(device_secret(api_key)),
        }
    deleted, revoked = logins

    assert (await http.delete(f"/api/v1/devices/{deleted}", headers=admin)).status_code == 204
    assert (await http.delete(f"/api/v1/devices/{revoked}/key", headers=admin)).status_code < 300
    for device_id in logins:

        async def refused(device_id: str = device_id) -> bool:
            return await _refused(secured_broker, **logins[device_id])

        await _eventually(refused)
    # Gone from the password file the broker reads, not only refused for a moment.
    users = {line.split(":", 1)[0] for line in secured_broker.password_file.read_text().split()}
    assert deleted not in users
    assert revoked not in users


async def test_no_key_travels_in_a_payload(open_broker: Broker) -> None:
    """What an eavesdropper on an open broker reads: signed bodies, never the key or its
    verifier."""
    device_id, api_key = f"pos-{uuid.uuid4().hex[:10]}", new_device_key()
    async with (
        aiomqtt.Client(HOST, open_broker.port) as eavesdropper,
        DeviceMqttLink(HOST, open_broker.port, device_id, api_key) as link,
    ):
        await eavesdropper.subscribe(f"{topics.PREFIX}/#", qos=1)
        await link.publish_telemetry(_batch(samples=1))
        await link.publish_heartbeat(Heartbeat(status="ok"))
        seen = []
        async for message in eavesdropper.messages:
            seen.append(bytes(message.payload))  # type: ignore[arg-type]
            if len(seen) == 2:
                break
    secret = device_secret(api_key)
    for payload in seen:
        assert api_key.encode() not in payload
        assert secret not in payload
        assert SignedMessage.model_validate_json(payload).body


async def test_forged_stale_and_replayed_jobs_are_refused_on_an_open_broker(
    open_broker: Broker,
) -> None:
    device_id, api_key = f"pos-{uuid.uuid4().hex[:10]}", new_device_key()
    topic = topics.jobs(device_id)
    secret = device_secret(api_key)
    genuine = SignedMessage.of(secret, topic, _command(execution_id=10)).model_dump_json()
    stale_command = _command(execution_id=11).model_copy(
        update={"issued_at": datetime.now(UTC) - timedelta(hours=1)}
    )
    async with (
        aiomqtt.Client(HOST, open_broker.port) as attacker,
        DeviceMqttLink(HOST, open_broker.port, device_id, api_key) as link,
    ):
        # Anyone on an open broker: an unsigned job, one signed with another key, one whose
        # body was altered after signing, a genuine one (run), the same again (a replay),
        # and one captured an hour ago.
        await attacker.publish(topic, _command(execution_id=20).model_dump_json(), qos=1)
        other = SignedMessage.of(device_secret(new_device_key()), topic, _command(21))
        await attacker.publish(topic, other.model_dump_json(), qos=1)
        altered = SignedMessage.model_validate_json(genuine)
        altered = altered.model_copy(
            update={"body": altered.body.replace('"restart"', '"firmware_update"')}
        )
        await attacker.publish(topic, altered.model_dump_json(), qos=1)
        await attacker.publish(topic, genuine, qos=1)
        await attacker.publish(topic, genuine, qos=1)
        stale = SignedMessage.of(secret, topic, stale_command)
        await attacker.publish(topic, stale.model_dump_json(), qos=1)
        fresh = SignedMessage.of(secret, topic, _command(execution_id=12))
        await attacker.publish(topic, fresh.model_dump_json(), qos=1)

        assert (await _next(link)).execution_id == 10
        assert (await _next(link)).execution_id == 12
        assert link.refused_jobs == 5


def test_the_replay_guard_forgets_only_what_its_window_refuses() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    clock = [now]
    guard = JobReplayGuard(clock=lambda: clock[0])
    command = _command(execution_id=1).model_copy(update={"issued_at": now})
    assert guard.refusal("a" * 64, command) is None
    assert "before" in (guard.refusal("a" * 64, command) or "")
    clock[0] = now + timedelta(minutes=4)
    assert "before" in (guard.refusal("a" * 64, command) or "")
    clock[0] = now + timedelta(minutes=6)
    assert "window" in (guard.refusal("a" * 64, command) or "")
    future = command.model_copy(update={"issued_at": clock[0] + timedelta(minutes=10)})
    assert "window" in (guard.refusal("b" * 64, future) or "")


async def test_accounts_follow_the_database_at_start_and_a_revoked_key_loses_its_own(
    settings: Settings, secured_broker: Broker
) -> None:
    # A device whose key was set while no server kept the broker's accounts.
    offline_app = create_app(settings)
    async with LifespanManager(offline_app):
        device_id, api_key = await _device_with_key(offline_app)
    login = {"username": device_id, "password": broker_password(device_secret(api_key))}
    assert await _refused(secured_broker, **login)

    fleet = mqtt_fleet(
        secured_broker.server_url,
        mqtt_password_file=secured_broker.password_file,
        mqtt_broker_pid_file=secured_broker.pid_file,
    )
    application = create_app(settings.model_copy(update={"fleet": fleet}))
    async with LifespanManager(application):

        async def accepted() -> bool:
            return not await _refused(secured_broker, **login)

        await _eventually(accepted)
        bridge = application.state.mqtt_bridge
        assert await bridge.secret_for(device_id) == device_secret(api_key)

        # What revoking the key does (the admin endpoint clears it, then tells the bridge).
        async with application.state.session_factory() as session:
            await session.execute(
                update(Device).where(Device.device_id == device_id).values(api_key_hash=None)
            )
            await session.commit()
        await device_credentials_changed(fleet, device_id, None)

        async def refused() -> bool:
            return await _refused(secured_broker, **login)

        await _eventually(refused)
        # No job can be signed for it any more: the push is left to (authenticated) polling.
        with pytest.raises(PushUnavailableError, match="no API key"):
            await application.state.push_channel.push(device_id, _command(execution_id=4))


async def test_server_and_devices_speak_tls_with_a_private_ca(
    settings: Settings, tls_broker: Broker
) -> None:
    fleet = mqtt_fleet(
        tls_broker.server_url,
        mqtt_ca_file=tls_broker.ca_file,
        mqtt_password_file=tls_broker.password_file,
        mqtt_broker_pid_file=tls_broker.pid_file,
    )
    application = create_app(settings.model_copy(update={"fleet": fleet}))
    async with LifespanManager(application):
        assert application.state.mqtt_bridge.connected.is_set()
        transport = ASGITransport(app=application, client=("203.0.113.9", 50000))
        async with AsyncClient(transport=transport, base_url="http://testserver") as http:
            registered = await http.post(
                "/api/v1/agent/register",
                json={
                    "site_id": (site_id := await create_site(application)),
                    "device_id": (device_id := f"pos-{uuid.uuid4().hex[:10]}"),
                    "bootstrap_key": await create_bootstrap_key(application, site_id),
                },
            )
        assert registered.status_code == 200, registered.text
        body = registered.json()
        assert body["mqtt"]["tls"] is True
        trusted = ssl.create_default_context(cafile=str(tls_broker.ca_file))
        # Without the fleet's CA the broker's certificate is refused.
        with pytest.raises(aiomqtt.MqttError):
            async with DeviceMqttLink(HOST, tls_broker.port, device_id, body["api_key"], tls=True):
                pass

        async def linked() -> DeviceMqttLink | None:
            link = DeviceMqttLink(
                HOST, tls_broker.port, device_id, body["api_key"], tls_context=trusted
            )
            try:
                return await link.__aenter__()
            except aiomqtt.MqttError:
                return None  # the broker is still reloading its password file

        link = await _eventually(linked)
        try:
            await link.publish_heartbeat(Heartbeat(status="ok"))

            async def a_health_check() -> list[Any]:
                return await db_rows(application, HealthCheck, device_id=device_id)

            assert await _eventually(a_health_check)
            await application.state.push_channel.push(device_id, _command(execution_id=8))
            assert (await _next(link)).execution_id == 8
        finally:
            await link.__aexit__(None, None, None)
