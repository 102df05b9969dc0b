"""The devices' accounts on a NATS cluster, kept in step with their keys.

On Mosquitto HOMEPOT keeps the ``password_file`` (homepot.fleet.broker_accounts). A NATS
cluster (its MQTT side: devices connect to it as to any broker) authenticates against the
``authorization { users = [...] }`` block of its configuration, which each node reads from a
file it includes: ``fleet.nats_auth_file``. HOMEPOT writes a device's user there when it
registers or gets a new key and removes it when its key is revoked or the device is deleted,
then asks every node listed in ``fleet.nats_pid_files`` to reload (SIGHUP).

A device's user is its device id and its password the one it uses on any broker
(:func:`homepot.protocol.mqtt.broker_password`), stored as a bcrypt hash (NATS's only
hashed form; the passwords are 256-bit random HMACs, so the lowest cost loses no security
and keeps a reconnecting fleet cheap for the nodes). Its permissions are subjects, NATS's
mapping of the MQTT topics (``a/b/c`` is ``a.b.c``; a ``.`` inside a level is ``//``): it
may publish its own uplink messages and subscribe to its own jobs, nothing else, so it can
neither read nor write another device's topics nor reach the JetStream API (``$JS.>``),
where it could delete the stream or the consumer the server processes share.

Other users in the file (the server's own account, an operator's) are kept as they are;
HOMEPOT's lines carry the marker :data:`DEVICE_MARKER`. Several server processes may share
the file: changes are made under a lock and written atomically.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import signal
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import bcrypt

from homepot.protocol.messages import topics

logger = logging.getLogger(__name__)

DEVICE_MARKER = "# homepot-device"
_BCRYPT_COST = 4
# The uplink topics a device publishes and the one it reads (homepot.fleet.broker_accounts'
# ACL says the same for Mosquitto).
UPLINK_SUFFIXES = ("telemetry", "heartbeat", "errors", "jobs/ack", "jobs/result")
_DEVICE_LINE = re.compile(r'^\s*\{\s*user:\s*"(?P<user>[^"]+)",\s*password:\s*"(?P<hash>[^"]+)"')


def nats_subject(topic: str) -> str:
    """The NATS subject an MQTT topic is published on by NATS's MQTT side."""
    return ".".join(level.replace(".", "//") for level in topic.split("/"))


def device_permissions(device_id: str) -> str:
    """A device's permissions in NATS's configuration syntax: its own uplink subjects to
    publish, its jobs to subscribe to.

    A QoS 1 subscription is served by a JetStream consumer that NATS's MQTT side creates for
    the client, delivering on ``$MQTT.sub.<random>``: the client needs to subscribe there
    too (else its jobs never arrive). An MQTT client subscribing to ``$MQTT/sub/#`` receives
    none of those deliveries (tried with nats-server 2.9.10: another device's jobs did not
    reach it, at QoS 0 or 1), and a device user may connect over MQTT only
    (``allowed_connection_types``), so no plain NATS client can take them with its password.
    """
    own = f"{topics.PREFIX}/{device_id}"
    publish = ", ".join(f'"{nats_subject(f"{own}/{suffix}")}"' for suffix in UPLINK_SUFFIXES)
    jobs = nats_subject(topics.jobs(device_id))
    return (
        f'{{ publish: {{ allow: [{publish}] }}, subscribe: {{ allow: ["{jobs}", '
        f'"{_QOS1_DELIVERIES}"] }} }}'
    )


_QOS1_DELIVERIES = "$MQTT.sub.>"


def _valid_user(user: str) -> str:
    if not user or any(char in user for char in '"\\\n\r') or user.strip() != user:
        raise ValueError(f"not a user name NATS's configuration can hold: {user!r}")
    return user


class NatsAuthFile:
    """The ``authorization`` block a NATS node includes: device users set and removed one
    by one, the other users kept; written atomically under a lock; then the nodes reload."""

    def __init__(self, path: Path, pid_files: Sequence[Path] = ()) -> None:
        self.path = path
        self.pid_files = tuple(pid_files)

    def update(self, set_passwords: Mapping[str, str], remove: Iterable[str] = ()) -> bool:
        """Set these devices' passwords and remove those devices; True when the file
        changed (and the nodes were asked to reload)."""
        removed = set(remove)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_name(self.path.name + ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            others, devices = self._read()
            before = dict(devices)
            for user in removed:
                devices.pop(user, None)
            for user, password in set_passwords.items():
                hashed = devices.get(_valid_user(user))
                if hashed is not None and bcrypt.checkpw(password.encode(), hashed.encode()):
                    continue  # unchanged: no new salt, no reload for nothing
                salt = bcrypt.gensalt(_BCRYPT_COST)
                devices[user] = bcrypt.hashpw(password.encode(), salt).decode()
            if devices == before and self.path.exists():
                return False
            self._write(others, devices)
        self.reload_nodes()
        return True

    def devices(self) -> dict[str, str]:
        """The device users in the file and their password hashes."""
        return self._read()[1]

    def _read(self) -> tuple[list[str], dict[str, str]]:
        """The other users' lines as they are, and the device users' hashes."""
        others: list[str] = []
        devices: dict[str, str] = {}
        if not self.path.exists():
            return others, devices
        inside = False
        for line in self.path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith("users") and stripped.endswith("["):
                inside = True
            elif inside and stripped == "]":
                inside = False
            elif inside and stripped:
                match = _DEVICE_LINE.match(line)
                if match and stripped.endswith(DEVICE_MARKER):
                    devices[match["user"]] = match["hash"]
                else:
                    others.append(stripped)
        return others, devices

    def _write(self, others: Sequence[str], devices: Mapping[str, str]) -> None:
        lines = [
            f"# The users of this NATS cluster. HOMEPOT keeps the lines marked '{DEVICE_MARKER}'",
            "# (homepot.fleet.nats_accounts); add the server's own account and others above them.",
            "authorization {",
            "  users = [",
            *(f"    {line}" for line in others),
            *(
                f'    {{ user: "{user}", password: "{hashed}", '
                f'allowed_connection_types: ["MQTT"], '
                f"permissions: {device_permissions(user)} }} {DEVICE_MARKER}"
                for user, hashed in sorted(devices.items())
            ),
            "  ]",
            "}",
        ]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def reload_nodes(self) -> None:
        """SIGHUP every node whose pid file is listed: each rereads its configuration."""
        for pid_file in self.pid_files:
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)
            except (OSError, ValueError) as exc:
                logger.warning(
                    "could not ask the NATS node of %s to reload its users: %s", pid_file, exc
                )
