"""A normal (non-editable) install of the wheel initialises a database and serves.

The wheel is built from a copy of the sources (no network: the running interpreter's setuptools
and wheel, ``--no-build-isolation``) and installed with ``--no-deps`` into a fresh venv. The
venv sees the dependencies through a ``.pth`` file naming the test runner's site-packages, but
never the source tree or the editable install's finder: what runs is the wheel alone, from a
directory holding no ``alembic.ini`` and no ``migrations/``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import httpx

from homepot.dbtools import TABLE_NAMES
from tests.ports import free_port

REPOSITORY = Path(__file__).resolve().parents[1]


def _dependency_paths() -> list[str]:
    """The runner's site-packages, minus anything that would import homepot from source."""
    paths = []
    for entry in sys.path:
        path = Path(entry or ".").resolve()
        if path.name not in ("site-packages", "dist-packages") or not path.is_dir():
            continue
        # A project venv may live inside the repository (.venv, as CI's): that is fine; a
        # site-packages holding homepot itself (a regular install) is not.
        if (path / "homepot").exists() or path.is_relative_to(REPOSITORY / "src"):
            continue
        paths.append(str(path))
    return paths


def _run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _build_wheel(tmp_path: Path, env: dict[str, str]) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPOSITORY / name, source / name)
    shutil.copytree(
        REPOSITORY / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    dist = tmp_path / "dist"
    built = _run(
        sys.executable,
        *("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"),
        *("-w", str(dist), str(source)),
        cwd=tmp_path,
        env=env,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("homepot-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path, env: dict[str, str]) -> Path:
    root = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    site_packages = _run(
        str(python),
        "-c",
        "import sysconfig; print(sysconfig.get_path('purelib'))",
        cwd=tmp_path,
        env=env,
    ).stdout.strip()
    (Path(site_packages) / "homepot_test_dependencies.pth").write_text(
        "\n".join(_dependency_paths()) + "\n"
    )
    installed = _run(
        sys.executable,
        *("-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)),
        cwd=tmp_path,
        env=env,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return root


def _wait_for_health(base: str, server: subprocess.Popen[str], log: Path) -> httpx.Response:
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, f"the installed server exited:\n{log.read_text()}"
        try:
            return httpx.get(f"{base}/api/v1/health", timeout=2)
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"no answer within 60 s:\n{log.read_text()}"
            time.sleep(0.3)


def test_the_installed_wheel_initialises_a_database_and_serves(tmp_path: Path) -> None:
    # No PYTHONPATH (it would put src/ first), no HOMEPOT_ settings of the test run.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HOMEPOT_"))}
    env["COLUMNS"] = "250"
    wheel = _build_wheel(tmp_path, env)
    root = _fresh_venv(tmp_path, wheel, env)
    work = tmp_path / "work"  # no alembic.ini, no migrations/: only what the wheel carries
    work.mkdir()

    where = _run(
        str(root / "bin" / "python"),
        *(
            "-c",
            "import homepot, homepot.db; print(homepot.__file__); print(homepot.db.MIGRATIONS)",
        ),
        cwd=work,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    module, migrations = (Path(line) for line in where.stdout.split())
    assert module.is_relative_to(root.resolve()) or module.is_relative_to(root)
    assert "site-packages" in module.parts
    assert not module.resolve().is_relative_to(REPOSITORY)
    assert (migrations / "env.py").is_file()
    assert list((migrations / "versions").glob("*.py"))

    homepot = str(root / "bin" / "homepot")
    url = f"sqlite:///{work / 'installed.db'}"
    init = _run(homepot, "--database-url", url, "db", "init", "--sample-data", cwd=work, env=env)
    assert init.returncode == 0, init.stdout + init.stderr
    count = _run(homepot, "--database-url", url, "db", "count", "--json", cwd=work, env=env)
    assert count.returncode == 0, count.stderr
    rows = json.loads(count.stdout)
    assert set(rows) == set(TABLE_NAMES)
    # message_receipts is bookkeeping of received device messages: sample data has none.
    assert [table for table, n in rows.items() if n == 0] == ["message_receipts"]

    port = free_port()
    log = work / "serve.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [homepot, "--database-url", url, "serve", "--port", str(port)],
            cwd=work,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        health = _wait_for_health(f"http://127.0.0.1:{port}", server, log)
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        # The dashboard's templates and static files are package data too.
        login = httpx.get(f"http://127.0.0.1:{port}/login", timeout=10)
        assert login.status_code == 200
        assert "/static/page-login.js" in login.text
        script = httpx.get(f"http://127.0.0.1:{port}/static/page-login.js", timeout=10)
        assert script.status_code == 200
        assert script.text.strip()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover - a server that will not stop
            server.kill()
            server.wait()
