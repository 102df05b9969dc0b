"""Mosquitto brokers of a test's own, on a free port: open, or secured as README describes
(password file + ACL kept by HOMEPOT, no anonymous clients), with persistence, so that a
test can restart one without touching the shared broker."""

from __future__ import annotations

import getpass
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from homepot.fleet.broker_accounts import PasswordFile, acl_rules
from homepot.protocol.mqtt import SERVER_USERNAME
from tests.ports import HOST, free_port, free_ports

__all__ = ["HOST"]  # the tests import it from here


def answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((HOST, port)) == 0


class Broker:
    """A Mosquitto on a free port; ``secured`` adds the password file and the ACL."""

    def __init__(self, binary: str, directory: Path, *, secured: bool, tls: bool = False) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.secured = secured
        self.password_file = directory / "passwords"
        self.acl_file = directory / "acl"
        self.pid_file = directory / "mosquitto.pid"
        self.server_password = secrets.token_urlsafe(24)
        (directory / "data").mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {HOST}",
            # The broker keeps sessions and queued messages across its own restarts.
            "persistence true",
            f"persistence_location {directory / 'data'}/",
            # Far beyond a test's bursts: the broker holds what the bridge has not taken.
            "max_queued_messages 1000000",
            # Mosquitto drops root for the user 'mosquitto', who cannot read a test's files.
            f"user {getpass.getuser()}",
        ]
        if secured:
            lines += [
                "allow_anonymous false",
                f"password_file {self.password_file}",
                f"acl_file {self.acl_file}",
            ]
            self.acl_file.write_text(acl_rules())
            # Written before the broker starts: nothing to reload yet.
            PasswordFile(self.password_file).update({SERVER_USERNAME: self.server_password})
        else:
            lines.append("allow_anonymous true")
        self.tls = tls
        if tls:
            # A private CA and the broker's certificate for 127.0.0.1, as a fleet would have.
            self.ca_file = directory / "ca.crt"
            _make_certificates(directory)
            lines += [
                f"cafile {self.ca_file}",
                f"certfile {directory / 'broker.crt'}",
                f"keyfile {directory / 'broker.key'}",
            ]
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def accounts(self) -> PasswordFile:
        return PasswordFile(self.password_file, self.pid_file)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{HOST}:{self.port}"

    @property
    def server_url(self) -> str:
        """The URL the HOMEPOT server connects with (its own account when secured)."""
        if not self.secured:
            return self.url
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{SERVER_USERNAME}:{self.server_password}@{HOST}:{self.port}"

    def start(self) -> None:
        log = (self.directory / "mosquitto.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
        )
        self.pid_file.write_text(str(self.process.pid))
        for _ in range(100):
            if answers(self.port):
                return
            if self.process.poll() is not None:
                pytest.fail(f"mosquitto exited with {self.process.returncode}")
            time.sleep(0.05)
        pytest.fail(f"mosquitto did not answer on port {self.port}")

    def stop(self) -> None:
        """A clean stop (SIGTERM): the broker saves its sessions and queued messages."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def _make_certificates(directory: Path) -> None:
    def openssl(*arguments: str) -> None:
        subprocess.run(["openssl", *arguments], cwd=directory, check=True, capture_output=True)

    new_key = ["-newkey", "rsa:2048", "-nodes"]
    openssl("req", "-x509", *new_key, "-days", "1", "-subj", "/CN=HOMEPOT test CA",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", *new_key, "-subj", f"/CN={HOST}", "-keyout", "broker.key",
            "-out", "broker.csr")  # fmt: skip
    (directory / "san.ext").write_text(f"subjectAltName=IP:{HOST}\n")
    signed_by_ca = ["-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"]
    openssl("x509", "-req", "-in", "broker.csr", *signed_by_ca, "-days", "1",
            "-extfile", "san.ext", "-out", "broker.crt")  # fmt: skip


def _binary() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.skip("mosquitto is not installed; install Debian's mosquitto package")
    return binary


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[Broker]:
    directory = tmp_path / "secured-broker"
    directory.mkdir()
    broker = Broker(_binary(), directory, secured=True)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def open_broker(tmp_path: Path) -> Iterator[Broker]:
    directory = tmp_path / "open-broker"
    directory.mkdir()
    broker = Broker(_binary(), directory, secured=False)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Broker]:
    """Secured, and TLS only (as on 8883), with a private CA."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificates")
    directory = tmp_path / "tls-broker"
    directory.mkdir()
    broker = Broker(_binary(), directory, secured=True, tls=True)
    broker.start()
    yield broker
    broker.stop()


class NatsCluster:
    """Three nats-servers routed into one cluster, each with JetStream and MQTT (3.1.1) on
    free loopback ports, stores in ``directory``: devices and servers may use any node."""

    NODES = 3

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * self.NODES
        self._configure(attempt=0)

    def _configure(self, *, attempt: int) -> None:
        """Nine different ports and a fresh store for each node (each attempt's own)."""
        ports = free_ports(3 * self.NODES)
        self.client_ports = ports[0 : self.NODES]
        self.route_ports = ports[self.NODES : 2 * self.NODES]
        self.mqtt_ports = ports[2 * self.NODES :]
        routes = ", ".join(f"nats-route://{HOST}:{port}" for port in self.route_ports)
        self.configs: list[Path] = []
        for node in range(self.NODES):
            config = self.directory / f"node{node}.conf"
            store = self.directory / f"store{node}-{attempt}"
            config.write_text(
                f"server_name: node{node}\n"
                f"listen: {HOST}:{self.client_ports[node]}\n"
                f'jetstream {{ store_dir: "{store}",'
                " max_memory_store: 64MB, max_file_store: 256MB }\n"
                f"cluster {{ name: homepot-test, listen: {HOST}:{self.route_ports[node]},"
                f" routes: [{routes}] }}\n"
                # Sessions and QoS 1 messages replicated on every node: any node may die.
                # A message not acknowledged (its reader's node died) is sent again after 2 s.
                f"mqtt {{ listen: {HOST}:{self.mqtt_ports[node]}, stream_replicas: 3,"
                ' ack_wait: "2s" }\n'
            )
            self.configs.append(config)

    def url(self, node: int) -> str:
        return f"mqtt://{HOST}:{self.mqtt_ports[node]}"

    def nats_url(self, node: int) -> str:
        return f"nats://{HOST}:{self.client_ports[node]}"

    def alive(self) -> list[int]:
        return [
            node
            for node, process in enumerate(self.processes)
            if process and process.poll() is None
        ]

    ATTEMPTS = 3

    def start(self) -> None:
        """Start the nodes and wait for every MQTT port. A node that exits meanwhile (a port
        taken between choosing and binding it) makes a new attempt on other ports; the
        failure, if it comes, quotes each attempt's logs."""
        for attempt in range(self.ATTEMPTS):
            if attempt:
                self.stop()
                self._configure(attempt=attempt)
            for node, config in enumerate(self.configs):
                with (self.directory / f"node{node}.log").open("ab") as log:
                    log.write(f"--- attempt {attempt}\n".encode())
                    log.flush()
                    self.processes[node] = subprocess.Popen(
                        [self.binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
                    )
            deadline = time.monotonic() + 30
            while len(self.alive()) == self.NODES:
                if all(answers(port) for port in self.mqtt_ports):
                    return
                if time.monotonic() > deadline:
                    pytest.fail(
                        "the NATS cluster's MQTT ports did not answer within 30 s\n" + self.logs()
                    )
                time.sleep(0.1)
        pytest.fail(f"a NATS node exited at start, {self.ATTEMPTS} times\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"node{node}.log:\n"
            + (self.directory / f"node{node}.log").read_text(errors="replace")[-3000:]
            for node in range(self.NODES)
        )

    def kill(self, node: int) -> None:
        process = self.processes[node]
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def stop(self) -> None:
        for node in range(self.NODES):
            self.kill(node)


def _nats_binary() -> str:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        pytest.skip("nats-server is not installed; install Debian's nats-server package")
    return binary


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    directory = tmp_path / "nats"
    directory.mkdir()
    cluster = NatsCluster(_nats_binary(), directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class SecuredNatsNode:
    """One nats-server with JetStream and MQTT on free loopback ports whose users come from
    an included file (``users``) that HOMEPOT keeps (homepot.fleet.nats_accounts), holding
    the server's own account from the start; ``pid_file`` makes it reload."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.client_port, self.mqtt_port = free_ports(2)
        self.users = directory / "users.conf"
        self.pid_file = directory / "nats.pid"
        self.server_password = secrets.token_hex(16)
        self.users.write_text(
            "authorization {\n  users = [\n"
            f'    {{ user: "{SERVER_USERNAME}", password: "{self.server_password}" }}\n'
            "  ]\n}\n"
        )
        self.config = directory / "node.conf"
        self.config.write_text(
            "server_name: secured\n"
            f"listen: {HOST}:{self.client_port}\n"
            f'pid_file: "{self.pid_file}"\n'
            f'jetstream {{ store_dir: "{directory / "store"}",'
            " max_memory_store: 64MB, max_file_store: 256MB }\n"
            f"mqtt {{ listen: {HOST}:{self.mqtt_port} }}\n"
            f'include "{self.users.name}"\n'
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        return (self.directory / "node.log").read_text(errors="replace")

    def start(self) -> None:
        log = (self.directory / "node.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while not (answers(self.mqtt_port) and self.pid_file.exists()):
            if time.monotonic() > deadline:
                pytest.fail(f"nats-server did not answer within 30 s:\n{self.log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def secured_nats_node(tmp_path: Path) -> Iterator[SecuredNatsNode]:
    directory = tmp_path / "secured-nats"
    directory.mkdir()
    node = SecuredNatsNode(_nats_binary(), directory)
    try:
        node.start()
        yield node
    finally:
        node.stop()
