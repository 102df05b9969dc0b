"""Set-up shared by the benchmarks: a throw-away migrated database, the real server as a
subprocess (:class:`ServerProcess`), clean exits, statistics.

Not a benchmark itself. The scripts import it as ``_common`` (they run as plain files from
``benchmarks/``, so this directory is first on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import asyncpg
import httpx
from rich.console import Console
from sqlalchemy.engine import make_url

from homepot.db import run_migrations

DEFAULT_POSTGRES_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def raise_keyboard_interrupt_on_sigterm() -> None:
    """Treat SIGTERM like Ctrl-C, so that every ``finally`` runs and nothing is left behind."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _maintenance_dsn(server_url: str) -> str:
    """asyncpg's DSN for the server's ``postgres`` database (no SQLAlchemy driver suffix)."""
    url = make_url(server_url).set(drivername="postgresql", database="postgres")
    return url.render_as_string(hide_password=False)


def _run_on_server(server_url: str, statement: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(_maintenance_dsn(server_url))
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


@contextmanager
def benchmark_database(kind: str, postgres_server: str, label: str) -> Iterator[str]:
    """A freshly migrated database of ``kind`` ("postgresql" or "sqlite"); removed on exit.

    Yields the SQLAlchemy async URL. The PostgreSQL database is created on ``postgres_server``
    under a unique name and dropped WITH (FORCE) afterwards, even after Ctrl-C or an error.
    """
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix=f"homepot-{label}-") as directory:
            url = f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}"
            run_migrations(url)
            yield url
        return
    if kind != "postgresql":
        raise ValueError(f"unknown database kind {kind!r}: use postgresql or sqlite")
    name = f"homepot_bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    _run_on_server(postgres_server, f'CREATE DATABASE "{name}"')
    try:
        database = make_url(postgres_server).set(drivername="postgresql+asyncpg", database=name)
        url = database.render_as_string(hide_password=False)
        run_migrations(url)
        yield url
    finally:
        _run_on_server(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (0..1) by linear interpolation; values need not be sorted."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def describe_database(url: str) -> str:
    """The URL without any password, for printing."""
    return make_url(url).render_as_string(hide_password=True)


# -- the server under test ------------------------------------------------------------------

HEALTH_PATH = "/api/v1/health"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_environment(
    database_url: str, workdir: Path, *, secret: str, **settings: str
) -> dict[str, str]:
    """The caller's environment without any HOMEPOT_ setting, plus the benchmark's own:
    its database, token secret and spool directory, no MQTT unless ``settings`` says so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPOT_")}
    env.update(
        HOMEPOT_DATABASE_URL=database_url,
        HOMEPOT_ENVIRONMENT="development",
        HOMEPOT_AUTH__SECRET_KEY=secret,
        HOMEPOT_ANALYTICS__SPOOL_DIR=str(workdir / "spool"),
        HOMEPOT_FLEET__MQTT_URL="",
    )
    env.update(settings)
    return env


class ServerProcess:
    """The real server: ``uvicorn --factory homepot.main:create_app``, one worker, on
    127.0.0.1 and a free port, ``--no-access-log``, its output in ``workdir``.

    ``uvicorn_args`` are added to the command line (e.g. ``--loop uvloop``); ``pin_cpu``
    runs it under ``taskset -c``; ``before_start`` is Python run in the server process before
    uvicorn starts (e.g. a module constant set for the run). It runs in a session of its own,
    so that Ctrl-C reaches only the benchmark, which then stops it with SIGINT: the recorder
    drains what is queued.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        workdir: Path,
        *,
        uvicorn_args: Sequence[str] = (),
        pin_cpu: str | None = None,
        before_start: str | None = None,
    ) -> None:
        self.env = dict(env)
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"server-{self.port}.log"
        self.uvicorn_args = list(uvicorn_args)
        self.pin_cpu = pin_cpu
        self.before_start = before_start
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        arguments = [
            "--factory",
            "homepot.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.uvicorn_args,
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        if self.before_start is None:
            command = [sys.executable, "-m", "uvicorn", *arguments]
        else:
            start = (
                f"import sys, uvicorn; {self.before_start}; "
                "sys.argv[0] = 'uvicorn'; sys.exit(uvicorn.main())"
            )
            command = [sys.executable, "-c", start, *arguments]
        if self.pin_cpu is not None:
            command = ["taskset", "-c", self.pin_cpu, *command]
        return command

    def start(self, timeout: float = 30.0) -> None:
        """Start it and wait until its health check answers."""
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited at start-up:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}{HEALTH_PATH}", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        """SIGINT (the recorder drains), then SIGKILL after ``timeout`` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(
                f"the server did not shut down within {timeout:.0f}s and was killed:\n"
                f"{self.log_tail()}"
            ) from None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the server is not started")
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return "(no server output)"
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(no server output)"

    def log_errors(self) -> list[str]:
        """Server log lines that look like errors (tracebacks' last lines, ERROR records)."""
        if not self.log.exists():
            return []
        lines = self.log.read_text(errors="replace").splitlines()
        # The exception lines close each traceback ("sqlalchemy.exc.TimeoutError: ...").
        exception = re.compile(r"^[\w.]+(Error|Exception|Timeout)\b")
        return [line for line in lines if "ERROR" in line or exception.match(line)]
