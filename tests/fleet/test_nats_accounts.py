"""The devices' accounts on a NATS cluster: HOMEPOT's users file, and a real nats-server
(Debian's 2.9) that reads it: a device reaches its own topics only, over MQTT only, and a
revoked key is refused once the node has reloaded."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import nats
import nats.errors
import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from homepot import cli
from homepot.config import FleetSettings, Settings
from homepot.db import create_engine
from homepot.device.models import Device
from homepot.fleet.broker_accounts import AccountFiles, PasswordFile, account_files
from homepot.fleet.device_keys import device_credentials_changed
from homepot.fleet.nats_accounts import DEVICE_MARKER, NatsAuthFile, nats_subject
from homepot.fleet.prepare import ConsumerState, prepare_brokers
from homepot.kit.keys import hash_key, new_device_key
from homepot.protocol.messages import topics
from homepot.protocol.mqtt import SERVER_USERNAME, broker_password, secret_from_key_hash
from homepot.site.models import Site
from tests.fleet.brokers import HOST, SecuredNatsNode, secured_nats_node
from tests.ports import free_port

__all__ = ["secured_nats_node"]  # the fixture, imported for pytest

OPERATOR_LINE = '{ user: "operator", password: "kept-as-it-is" }'


def _auth_file(tmp_path: Path) -> NatsAuthFile:
    path = tmp_path / "users.conf"
    path.write_text(f"authorization {{\n  users = [\n    {OPERATOR_LINE}\n  ]\n}}\n")
    return NatsAuthFile(path)


def test_device_users_are_set_and_removed_and_other_users_kept(tmp_path: Path) -> None:
    accounts = _auth_file(tmp_path)

    assert accounts.update({"pos-1": "secret-1", "pos-2": "secret-2"})
    assert not accounts.update({"pos-1": "secret-1"})  # unchanged: nothing written
    first_hash = accounts.devices()["pos-1"]
    assert accounts.update({"pos-1": "secret-1b"}, remove=["pos-2"])

    text = accounts.path.read_text()
    assert OPERATOR_LINE in text
    assert set(accounts.devices()) == {"pos-1"}
    assert accounts.devices()["pos-1"] != first_hash
    assert "secret-1" not in text  # bcrypt hashes only
    (line,) = [line for line in text.splitlines() if line.endswith(DEVICE_MARKER)]
    assert 'allowed_connection_types: ["MQTT"]' in line
    assert '"homepot.v1.devices.pos-1.telemetry"' in line
    assert '"homepot.v1.devices.pos-1.jobs"' in line
    assert ">" not in line.replace("$MQTT.sub.>", "")  # no wildcard beyond QoS 1 deliveries
    assert stat.S_IMODE(os.stat(accounts.path).st_mode) == 0o600


def test_a_user_name_the_configuration_cannot_hold_is_refused(tmp_path: Path) -> None:
    accounts = _auth_file(tmp_path)
    with pytest.raises(ValueError, match="user name"):
        accounts.update({'pos"1': "secret"})
    assert accounts.devices() == {}


def test_topics_map_to_subjects_as_nats_maps_them() -> None:
    assert nats_subject("homepot/v1/devices/pos-1/jobs/ack") == "homepot.v1.devices.pos-1.jobs.ack"
    # NATS 2.10 and newer carry a '.' inside a level as '//' (2.9 refuses such topics).
    assert nats_subject("homepot/v1/devices/pos.1/jobs") == "homepot.v1.devices.pos//1.jobs"


async def test_a_key_change_updates_every_broker_file_homepot_keeps(tmp_path: Path) -> None:
    settings = FleetSettings(
        mqtt_password_file=tmp_path / "mosquitto-passwords",
        nats_auth_file=tmp_path / "nats-users.conf",
    )
    files = account_files(settings)
    assert isinstance(files, AccountFiles)
    assert [type(f) for f in files.files] == [PasswordFile, NatsAuthFile]
    assert isinstance(account_files(FleetSettings(nats_auth_file=tmp_path / "n")), NatsAuthFile)
    assert account_files(FleetSettings()) is None

    await device_credentials_changed(settings, "pos-7", "a-key-hash")
    assert "pos-7" in NatsAuthFile(tmp_path / "nats-users.conf").devices()
    assert "pos-7:" in (tmp_path / "mosquitto-passwords").read_text()

    await device_credentials_changed(settings, "pos-7", None)  # revoked
    assert NatsAuthFile(tmp_path / "nats-users.conf").devices() == {}
    assert "pos-7:" not in (tmp_path / "mosquitto-passwords").read_text()


def test_nats_pid_files_are_read_from_a_list_or_commas() -> None:
    settings = FleetSettings.model_validate({"nats_pid_files": "/run/a.pid, /run/b.pid"})
    assert settings.nats_pid_files == [Path("/run/a.pid"), Path("/run/b.pid")]


# --- against a real nats-server -------------------------------------------------------------


@contextlib.asynccontextmanager
async def _mqtt(node: SecuredNatsNode, user: str, password: str) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        HOST,
        node.mqtt_port,
        username=user,
        password=password,
        identifier=f"{user}-{uuid.uuid4().hex[:6]}",
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=5,
    ) as client:
        yield client


async def _received(client: aiomqtt.Client, seconds: float) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                got.append((str(message.topic), bytes(message.payload)))  # type: ignore[arg-type]
    return got


async def _wait_for_reload(node: SecuredNatsNode, reloads: int) -> None:
    for _ in range(200):  # 10 s: the node logs each reload
        if node.log.count("Reloaded server configuration") >= reloads:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"the node did not reload {reloads} time(s):\n{node.log}")


async def _publish_until_refused(device: aiomqtt.Client) -> None:
    for _ in range(25):
        await device.publish(f"{topics.PREFIX}/pos-1/telemetry", b"after", qos=1)
        await asyncio.sleep(0.2)


async def test_a_device_reaches_its_own_topics_only_and_loses_them_when_revoked(
    secured_nats_node: SecuredNatsNode,
) -> None:
    node = secured_nats_node
    accounts = NatsAuthFile(node.users, [node.pid_file])
    own, other = broker_password(b"key-of-pos-1"), broker_password(b"key-of-pos-2")
    accounts.update({"pos-1": own, "pos-2": other})
    await _wait_for_reload(node, 1)

    async with (
        _mqtt(node, SERVER_USERNAME, node.server_password) as server,
        _mqtt(node, "pos-1", own) as device,
    ):
        await server.subscribe(f"{topics.PREFIX}/+/telemetry", qos=1)
        await device.subscribe(topics.jobs("pos-1"), qos=1)
        await device.subscribe(topics.jobs("pos-2"), qos=1)  # refused by the node
        await device.subscribe("$MQTT/sub/#", qos=0)  # NATS delivers nothing of others there
        await device.publish(f"{topics.PREFIX}/pos-1/telemetry", b"mine", qos=1)
        await device.publish(f"{topics.PREFIX}/pos-2/telemetry", b"forged", qos=1)
        await server.publish(topics.jobs("pos-1"), b"job for pos-1", qos=1)
        await server.publish(topics.jobs("pos-2"), b"job for pos-2", qos=1)

        assert await _received(server, 1.5) == [(f"{topics.PREFIX}/pos-1/telemetry", b"mine")]
        assert await _received(device, 1.5) == [(topics.jobs("pos-1"), b"job for pos-1")]

        # Over the NATS protocol a device's password opens nothing (it could reach $JS.API).
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(
                f"nats://{HOST}:{node.client_port}",
                user="pos-1",
                password=own,
                allow_reconnect=False,
                max_reconnect_attempts=0,
            )

        accounts.update({}, remove=["pos-1"])  # its key revoked
        await _wait_for_reload(node, 2)
        # The node drops the connection of a user that is gone.
        with pytest.raises(aiomqtt.MqttError):
            await _publish_until_refused(device)

    with pytest.raises(aiomqtt.MqttError):
        async with _mqtt(node, "pos-1", own):
            pass
    for user, password in (("pos-2", "wrong"), ("", "")):
        with pytest.raises(aiomqtt.MqttError):
            async with _mqtt(node, user, password):
                pass


# --- homepot broker prepare ------------------------------------------------------------------


async def test_prepare_writes_the_accounts_and_a_new_cluster_keeps_messages_before_any_server(
    secured_nats_node: SecuredNatsNode, settings: Settings
) -> None:
    node = secured_nats_node
    engine = create_engine(settings.database_url)
    key_hash = hash_key(new_device_key())
    async with AsyncSession(engine) as session, session.begin():
        session.add(Site(site_id="store-n", name="Store"))
        await session.flush()
        session.add(
            Device(device_id="pos-n1", site_id="store-n", name="Till", api_key_hash=key_hash)
        )
    server = f"{SERVER_USERNAME}:{node.server_password}@{HOST}"
    settings = settings.model_copy(
        update={
            "fleet": FleetSettings(
                uplink="jetstream",
                nats_urls=[f"nats://{server}:{node.client_port}"],
                mqtt_url=f"mqtt://{server}:{node.mqtt_port}",
                mqtt_protocol="3.1.1",
                mqtt_shared_subscription=False,
                nats_auth_file=node.users,
                nats_pid_files=[node.pid_file],
            )
        }
    )

    prepared = await prepare_brokers(settings, engine, wait_seconds=20)

    assert prepared.account_files == (str(node.users),)
    assert prepared.device_accounts == 1
    assert prepared.consumer == ConsumerState("homepot-uplink", True, 0, 0)
    await _wait_for_reload(node, 1)
    # A terminal sends before any server process ever ran: NATS keeps it for the servers.
    password = broker_password(secret_from_key_hash(key_hash))
    async with _mqtt(node, "pos-n1", password) as device:
        await device.publish(f"{topics.PREFIX}/pos-n1/telemetry", b"before any server", qos=1)
    again = await prepare_brokers(settings, engine, wait_seconds=20)
    assert again.consumer == ConsumerState("homepot-uplink", True, 1, 0)
    await engine.dispose()


def test_prepare_on_the_command_line(database_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    plain = runner.invoke(cli.app, ["--database-url", database_url, "broker", "prepare"])
    assert plain.exit_code == 0, plain.output
    assert "nothing written" in plain.output
    assert "uplink: mqtt" in plain.output

    env = {
        "HOMEPOT_FLEET__UPLINK": "jetstream",
        "HOMEPOT_FLEET__NATS_URLS": f"nats://user:secret@{HOST}:{free_port()}",
        "HOMEPOT_FLEET__NATS_AUTH_FILE": str(tmp_path / "users.conf"),
    }
    unreachable = runner.invoke(
        cli.app, ["--database-url", database_url, "broker", "prepare", "--json"], env=env
    )
    assert unreachable.exit_code == 1
    assert "cannot reach NATS" in unreachable.output
    assert "secret" not in unreachable.output
    # The accounts were written before NATS was tried (an empty fleet: none).
    assert NatsAuthFile(tmp_path / "users.conf").devices() == {}
