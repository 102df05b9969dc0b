"""A PostgreSQL of the test's own and a TCP proxy in front of it: the faults are real.

:class:`OwnPostgres` runs ``initdb`` into a temporary directory and serves on a free port on
127.0.0.1; it can be stopped, started, and started in its start-up phase (a standby with
hot standby off answers every connection with SQLSTATE 57P03, "the database system is not
accepting connections", until it is promoted). The shared server on 5432 is never touched.

:class:`TcpProxy` sits between the app and that server and can cut every connection
(refusing new ones) or stall them (connections are accepted and bytes held, as a
black-holed network does), and then let traffic flow again.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.ports import free_port

PG_BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


# pg_isready exit status of a server that is up but refuses connections (start-up phase).
REJECTING = 1


class OwnPostgres:
    """A throw-away PostgreSQL cluster (trust auth, user ``postgres``, fsync off)."""

    def __init__(self) -> None:
        if not PG_BINARIES:
            pytest.skip("PostgreSQL's server binaries (/usr/lib/postgresql/*/bin) are missing")
        self.bin = PG_BINARIES[-1]
        self.port = free_port()
        # Under /tmp, not pytest's (root-only) tmp_path: the server may run as another user.
        self.root = Path(tempfile.mkdtemp(prefix="homepot-pg-"))
        self.data = self.root / "data"
        self._user = "postgres" if os.geteuid() == 0 else None  # initdb refuses root
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-N")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "60",
            # Only matters while it runs as a standby: then no connection is accepted.
            "hot_standby": "off",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def url(self, port: int | None = None, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{port or self.port}/{database}"

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        command = [str(self.bin / tool), *args]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        subprocess.run(command, check=check, capture_output=True, timeout=60)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def start_in_startup_phase(self) -> None:
        """Start as a standby that accepts no connection (57P03) until :meth:`promote`."""
        signal = self.data / "standby.signal"
        signal.touch()
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(signal, entry.pw_uid, entry.pw_gid)
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-W", "start")
        # Started without waiting (it never becomes ready), so wait until it is up and
        # refusing: promoting a server that is not yet in standby fails.
        deadline = time.monotonic() + 60
        while self._ready_state() != REJECTING:
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not reach its start-up phase within 60 s")
            time.sleep(0.1)

    def _ready_state(self) -> int:
        """pg_isready's answer: 0 accepting, 1 rejecting (starting up), 2 no answer."""
        command = [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(command, capture_output=True, timeout=30).returncode

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")

    def make_standby(self) -> OwnPostgres:
        """A streaming replica of this (running) server: ``pg_basebackup -R`` into a directory
        of its own, on another free port, readable (hot standby). Start it with :meth:`start`."""
        standby = OwnPostgres.__new__(OwnPostgres)
        standby.bin, standby._user = self.bin, self._user
        standby.port = free_port()
        standby.root = Path(tempfile.mkdtemp(prefix="homepot-pg-standby-"))
        standby.data = standby.root / "data"
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(standby.root, entry.pw_uid, entry.pw_gid)
        self._run(
            *("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"),
            *("-D", str(standby.data), "-R", "-X", "stream", "--checkpoint=fast"),
        )
        settings = {
            "port": str(standby.port),
            "unix_socket_directories": f"'{standby.root}'",
            "hot_standby": "on",
        }
        with (standby.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        return standby

    def close(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


class TcpProxy:
    """A loopback TCP proxy that can cut or stall every connection through it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        """Listen (again, on the same port after a cut) and let traffic flow."""
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Close every connection and refuse new ones, as a stopped server or a cable."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None
        self._writers.clear()

    def stall(self) -> None:
        """Accept connections, answer nothing: bytes are held in both directions."""
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update({writer, up_writer})


class AppServer:
    """``homepot.main:create_app`` in a uvicorn process of its own, on a free port.

    ``env`` adds HOMEPOT_ variables to the test's environment; the process's output goes
    to ``log`` (shown when it exits early).
    """

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"server-{self.port}.log"
        self.env = {
            **os.environ,
            "HOMEPOT_ANALYTICS__SPOOL_DIR": str(workdir / f"spool-{self.port}"),
            "HOMEPOT_DATA_DIR": str(workdir / "data"),
            "PYTHONPATH": os.pathsep.join(sys.path),
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import sys

        command = [
            *(sys.executable, "-m", "uvicorn", "--factory", "homepot.main:create_app"),
            *("--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info"),
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def wait_until_up(self, within: float = 60) -> None:
        import httpx

        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with httpx.AsyncClient() as http:
            while loop.time() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    pytest.fail(f"the server exited:\n{self.log.read_text()[-3000:]}")
                try:
                    answer = await http.get(f"{self.url}/api/v1/health", timeout=1)
                    if answer.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        pytest.fail(f"the server did not answer within {within} s:\n{self.log.read_text()[-3000:]}")

    async def metrics(self) -> dict[str, float]:
        """The Prometheus samples, ``name{labels}`` -> value."""
        import httpx

        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{self.url}/metrics", timeout=5)
        answer.raise_for_status()
        samples: dict[str, float] = {}
        for line in answer.text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        stop_all([self])


def stop_all(servers: list[AppServer]) -> None:
    """Shut the servers down together (SIGINT, a clean stop), killing any still up after 30 s."""
    import signal

    running = [s.process for s in servers if s.process is not None and s.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGINT)
    for process in running:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
