"""No session of the uplink's share group is left without a reader.

The server processes read the device uplink through a shared subscription
(``$share/<group>/...``), each with a persistent MQTT 5 session of its own
(:class:`homepot.fleet.mqtt.UplinkBridge`). The broker keeps a session after its process has
stopped, for the session expiry (a day by default), and the session stays a member of the
group: Mosquitto goes on giving it its round-robin share of the device messages, queued for
nobody, and beyond ``max_queued_messages`` (1,000 by default) it drops them. A stopped
process's session is picked up by the process that takes its slot again; but after scaling
down (four workers to two), after a restart that raced its predecessor's lock (the new
process got another slot), or under a new client id (another host name, another configured
id), nobody would.

So every bridge records its session (``mqtt_sessions``: client id, broker, group) and holds
the session's lock (a PostgreSQL advisory lock, :func:`session_lock`) for as long as it runs.
Every few seconds each live process looks at the recorded sessions of its broker; one whose
lock it can take has no process: it connects with that client id (``clean_start`` false),
unsubscribes it from the group (the broker stops routing messages to it), stores what was
queued in it through the bridge's normal path (the same batching, storing, spooling and
acknowledgement, so each message is stored once: see :mod:`homepot.fleet.uplink_store`),
and once it is quiet and everything is acknowledged, ends the session (a clean start with
session expiry 0), replays the session's spool when it is on this host, deletes the row and
releases the lock.

Races, decided by the lock: two processes finding the same orphan (one takes the lock, the
other skips it); a restarted process whose slot gives it the client id being drained (it
waits for the lock, then starts a new session: the old one is ended by then, and whatever
came in between went to the other members); an owner whose lock connection failed while it
kept its broker connection (another process may adopt its session and take the client id
over; the owner reconnects and takes it back, subscribing again; the adopter, disconnected,
leaves that session alone for a minute, meanwhile the owner takes its lock again).

On SQLite there is one server process and no locks: every recorded session of the broker
other than the process's own was left by an earlier configuration (another host name or
client id) and is drained the same way. Servers reading the uplink through JetStream
(:mod:`homepot.fleet.jetstream`, a durable consumer) or without shared subscriptions (one
``-uplink`` session that the next holder of the uplink's lock takes over) are not affected.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiomqtt
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite

from homepot.db import utcnow
from homepot.fleet.models import MqttSession
from homepot.kit.retry import BROKER_RECONNECT
from homepot.protocol.messages import topics

if TYPE_CHECKING:
    from homepot.fleet.mqtt import UplinkBridge

logger = logging.getLogger(__name__)

# How often each process looks for sessions nobody reads (one upsert and one select).
SCAN_SECONDS = 5.0
# A session is drained once nothing came from it for this long and all it sent is stored.
# The broker sends what is queued as soon as acknowledgements free its in-flight window
# (milliseconds); a message it held back for longer would go with the session's end.
QUIET_SECONDS = 2.0
# How often a drain looks at what came and what is stored.
DRAIN_POLL_SECONDS = 0.05
# After its owner took a session back (or the broker went away mid-drain), it is left alone
# for this long: the owner takes its lock again meanwhile.
TAKEN_BACK_PAUSE_SECONDS = 60.0


def session_lock(client_id: str) -> str:
    """The name of the advisory lock its process holds for the session's life."""
    return f"homepot-mqtt-session:{client_id}"


class OrphanSessions:
    """Finds, drains and ends the sessions of the bridge's group that no process reads."""

    def __init__(self, bridge: UplinkBridge) -> None:
        self._bridge = bridge
        # Sessions whose owner took them back, left alone until then (loop time).
        self._paused: dict[str, float] = {}
        self._lock_lost_logged = False

    async def record_own_session(self) -> None:
        """Record the bridge's session before it connects; until the database answers."""
        delays = BROKER_RECONNECT.delays()
        while True:
            try:
                await self._record_own()
                return
            except Exception as exc:
                delay = next(delays)
                logger.warning(
                    "MQTT bridge: cannot record session %s yet (%s); retrying in %.1f s",
                    self._bridge.client_id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def run(self) -> None:
        """At start and every ``SCAN_SECONDS`` while connected; never raises."""
        while True:
            await self._bridge.connected.wait()
            try:
                await self.scan()
            except Exception as exc:  # the database or the broker away: the next scan retries
                logger.warning("MQTT bridge: looking for orphaned sessions failed: %s", exc)
            await asyncio.sleep(SCAN_SECONDS)

    async def scan(self) -> list[str]:
        """Record this process's session; drain and end each recorded one nobody reads.
        Returns the client ids of the sessions ended."""
        bridge = self._bridge
        await self._record_own()
        leadership = bridge.leadership
        distributed = leadership is not None and leadership.distributed
        if distributed and leadership is not None:
            # Its lock went with a failed lock connection: take it again.
            holds_own = await leadership.holds(session_lock(bridge.client_id))
            if not holds_own and not self._lock_lost_logged:
                logger.error(
                    "MQTT bridge: the lock of this process's session %s is held by another"
                    " process (or the database does not answer); it may be taken over",
                    bridge.client_id,
                )
            self._lock_lost_logged = not holds_own
        ended: list[str] = []
        now = asyncio.get_running_loop().time()
        for client_id, group in await self._recorded():
            if client_id == bridge.client_id or self._paused.get(client_id, 0.0) > now:
                continue
            lock = session_lock(client_id)
            if distributed and leadership is not None and not await leadership.holds(lock):
                continue  # its process is alive (or another process drains it)
            try:
                if await self._adopt(client_id, group):
                    ended.append(client_id)
            finally:
                if distributed and leadership is not None:
                    await leadership.resign(lock)
        return ended

    async def _adopt(self, client_id: str, group: str) -> bool:
        bridge = self._bridge
        logger.warning(
            "MQTT bridge: session %s of the share group has no process; draining and ending it",
            client_id,
        )
        try:
            client = bridge.session_client(client_id)
            async with client:
                generation = bridge.open_adoption(client)
                try:
                    # Out of the group first: from now on the broker gives its share to the
                    # live members. What is queued in the session stays and comes here.
                    await client.unsubscribe([f"$share/{group}/{topic}" for topic in topics.UPLINK])
                    received = await self._drain(client, generation)
                finally:
                    bridge.close_adoption(generation)
            if len(client.messages):
                # Came after it looked quiet, unacknowledged: the session keeps them for the
                # next scan.
                return False
            # A clean start with session expiry 0: the session and its subscriptions are gone
            # when this connection closes.
            async with bridge.session_client(client_id, ending=True):
                pass
        except aiomqtt.MqttError as exc:
            self._paused[client_id] = asyncio.get_running_loop().time() + TAKEN_BACK_PAUSE_SECONDS
            logger.warning(
                "MQTT bridge: stopped draining session %s (%s): its process took it back, or"
                " the broker went away; what it did not acknowledge stays in the session",
                client_id,
                exc,
            )
            return False
        if not await bridge.replay_spool_of(client_id):
            return False  # its spool is replayed at the next scan, then the row goes
        await self._forget(client_id)
        bridge.stats["orphaned_sessions_ended"] += 1
        bridge.stats["orphaned_messages"] += received
        logger.warning(
            "MQTT bridge: ended orphaned session %s; %d device messages queued in it were handled",
            client_id,
            received,
        )
        return True

    async def _drain(self, client: aiomqtt.Client, generation: int) -> int:
        """Hand what the session sends to the bridge until it is quiet and all is settled."""
        bridge = self._bridge
        loop = asyncio.get_running_loop()
        messages = client.messages
        received = 0
        last = loop.time()
        while True:
            # Only what is already here: nothing is taken that a cancellation could lose.
            while len(messages):
                bridge.receive_adopted(await anext(messages), generation)
                received += 1
                last = loop.time()
            if not client._client.is_connected():
                raise aiomqtt.MqttError("the connection closed while draining")
            if bridge.unsettled(generation) == 0 and loop.time() - last >= QUIET_SECONDS:
                return received
            await asyncio.sleep(DRAIN_POLL_SECONDS)

    def _insert(self, dialect: str) -> postgresql.Insert | sqlite.Insert:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        return insert(MqttSession)

    async def _record_own(self) -> None:
        bridge = self._bridge
        async with bridge.session_factory() as session:
            statement = self._insert(session.get_bind().dialect.name).values(
                client_id=bridge.client_id,
                broker=bridge.broker,
                share_group=bridge.group,
                seen_at=utcnow(),
            )
            await session.execute(
                statement.on_conflict_do_update(
                    index_elements=["client_id", "broker"],
                    set_={
                        "share_group": statement.excluded.share_group,
                        "seen_at": statement.excluded.seen_at,
                    },
                )
            )
            await session.commit()

    async def _recorded(self) -> list[tuple[str, str]]:
        bridge = self._bridge
        async with bridge.session_factory() as session:
            rows = await session.execute(
                select(MqttSession.client_id, MqttSession.share_group)
                .where(MqttSession.broker == bridge.broker)
                .order_by(MqttSession.client_id)
            )
            return [(client_id, group) for client_id, group in rows]

    async def _forget(self, client_id: str) -> None:
        bridge = self._bridge
        async with bridge.session_factory() as session:
            await session.execute(
                delete(MqttSession).where(
                    MqttSession.client_id == client_id, MqttSession.broker == bridge.broker
                )
            )
            await session.commit()
