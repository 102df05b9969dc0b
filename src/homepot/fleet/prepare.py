"""Getting the brokers ready before terminals and server processes arrive
(``homepot broker prepare``).

- The devices' broker accounts, rebuilt from the database into every file HOMEPOT keeps
  (Mosquitto's password file, a NATS cluster's users file; homepot.fleet.broker_accounts):
  after a restore, or when the files are new, every registered device can connect at once,
  without waiting for a server's MQTT bridge to start.
- With the JetStream uplink, the durable consumer the server processes share. NATS keeps the
  devices' QoS 1 messages in ``$MQTT_msgs`` only while a consumer is interested in them, so on
  a new cluster whatever terminals send before the first server process started was dropped
  (docs/scaling.md). NATS creates that stream when the first MQTT client of the account
  connects: the server's own MQTT account connects once if it is missing, then the consumer
  is created with the settings' limits (homepot.fleet.jetstream.ensure_consumer).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from dataclasses import dataclass

import aiomqtt
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from homepot.config import FleetSettings, Settings
from homepot.fleet.broker_accounts import account_files, sync_device_accounts
from homepot.protocol.mqtt import parse_broker_url

logger = logging.getLogger(__name__)


class BrokerNotReady(Exception):
    """A broker could not be prepared; the message says which and why."""


@dataclass(frozen=True)
class ConsumerState:
    name: str
    settings_applied: bool  # False: it existed with settings NATS refuses to change
    waiting: int  # messages it has not been given yet
    unacknowledged: int


@dataclass(frozen=True)
class PreparedBrokers:
    account_files: tuple[str, ...]
    device_accounts: int
    consumer: ConsumerState | None


def _paths(fleet: FleetSettings) -> tuple[str, ...]:
    """The account files :func:`account_files` keeps, as the settings name them."""
    return tuple(str(p) for p in (fleet.mqtt_password_file, fleet.nats_auth_file) if p)


async def prepare_brokers(
    settings: Settings, engine: AsyncEngine, *, wait_seconds: float = 30.0
) -> PreparedBrokers:
    """Write every device's broker account and, with the JetStream uplink, create the shared
    consumer. Raises BrokerNotReady when NATS cannot be reached or its stream does not come."""
    fleet = settings.fleet
    accounts = account_files(fleet)
    written = 0
    if accounts is not None:
        async with AsyncSession(engine) as session:
            written = await sync_device_accounts(session, accounts)
    consumer = None
    if fleet.uplink == "jetstream":
        consumer = await _prepare_consumer(fleet, wait_seconds)
    return PreparedBrokers(_paths(fleet), written, consumer)


async def _prepare_consumer(fleet: FleetSettings, wait_seconds: float) -> ConsumerState:
    import nats  # only servers (and this command) configured for JetStream load it
    import nats.errors

    from homepot.fleet.jetstream import MQTT_STREAM, ensure_consumer, wait_for_mqtt_stream

    try:
        # Each node tried twice, not nats-py's default of 60 times 2 s.
        client = await nats.connect(
            servers=fleet.nats_urls,
            connect_timeout=2,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
        )
    except (OSError, nats.errors.Error) as exc:
        raise BrokerNotReady(f"cannot reach NATS at {_shown(fleet.nats_urls)}: {exc}") from exc
    try:
        js = client.jetstream()
        # NATS makes its MQTT streams when an MQTT client of the account comes.
        if not await wait_for_mqtt_stream(
            js, on_first_miss=lambda: _connect_mqtt_once(fleet), seconds=wait_seconds
        ):
            raise BrokerNotReady(
                f"NATS has no {MQTT_STREAM} stream after {wait_seconds:.0f} s; is MQTT"
                " enabled on the cluster (mqtt { listen: ... }) and JetStream too?"
            )
        applied = await ensure_consumer(js, fleet)
        info = await js.consumer_info(MQTT_STREAM, fleet.jetstream_consumer)
        return ConsumerState(
            fleet.jetstream_consumer, applied, info.num_pending or 0, info.num_ack_pending or 0
        )
    finally:
        with contextlib.suppress(Exception):
            await client.close()


async def _connect_mqtt_once(fleet: FleetSettings) -> None:
    if not fleet.mqtt_url:
        raise BrokerNotReady(
            "NATS has no $MQTT_msgs stream yet and HOMEPOT_FLEET__MQTT_URL is empty: the"
            " stream comes with the first MQTT client, so give the server's MQTT URL"
        )
    address = parse_broker_url(fleet.mqtt_url)
    tls = None
    if address.tls:
        tls = ssl.create_default_context(
            cafile=str(fleet.mqtt_ca_file) if fleet.mqtt_ca_file else None
        )
    try:
        async with aiomqtt.Client(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            identifier="homepot-broker-prepare",
            protocol=aiomqtt.ProtocolVersion.V311,
            tls_context=tls,
            timeout=10,
        ):
            pass
    except aiomqtt.MqttError as exc:
        raise BrokerNotReady(
            f"cannot connect to the MQTT side of NATS at {address.host}:{address.port}: {exc}"
        ) from exc


def _shown(urls: list[str]) -> str:
    """The URLs without their user and password."""
    return ", ".join(url.split("@", 1)[-1] for url in urls)
