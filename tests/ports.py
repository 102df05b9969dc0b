"""Local TCP ports for the servers tests start (brokers, NATS nodes, PostgreSQL, the app).

A port the kernel hands out for ``bind(("127.0.0.1", 0))`` lies in the ephemeral range, the
range it also takes outgoing connections' source ports from. Released and passed to a
server, such a port can be taken meanwhile by any outgoing connection on the machine: in CI
(2026-12-02) a NATS node could not listen on its route port because another node's dial to
a route had just got it as its source port ("bind: address already in use"). So a test's
server port is chosen below the ephemeral range, at random (two test workers choose
independently), and checked free.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"
# Below Linux's default ephemeral range (32768-60999) and above the usual service ports.
LOWEST = 20000


def _ephemeral_start() -> int:
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        return int(low)
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nothing listens on now, outside the range of outgoing connections' ports."""
    top = _ephemeral_start() - 1
    if top - LOWEST < 1000:  # an unusual range: fall back to what the kernel picks
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            return int(probe.getsockname()[1])
    for _ in range(200):
        port = random.randint(LOWEST, top)
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free local port between {LOWEST} and {top}")


def free_ports(count: int) -> list[int]:
    """``count`` different free ports (free_port twice may pick the same one)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@contextmanager
def refused_port() -> Iterator[int]:
    """A local port where a connection is refused, for as long as the block runs.

    A port that was free a moment ago is not enough: another test may listen on it since,
    and a connection to an unused port in the ephemeral range can connect to itself (TCP
    simultaneous open, when the kernel picks that same port as the source): an MQTT client
    then read its own CONNECT back ("Unrecognised command 16", CI 2026-12-02). Held bound and
    not listening, the port refuses every connection and is no one's source port.
    """
    with socket.socket() as held:
        held.bind((HOST, 0))
        yield int(held.getsockname()[1])
