"""The uplink on a three-node NATS cluster: one server process reading it over MQTT (3.1.1,
one reader) against the same process reading it from the shared JetStream consumer.

For each mode: a fresh PostgreSQL database, a fresh cluster (Debian's nats-server, free local
ports), one uvicorn process; ``--devices`` terminals spread over the three nodes publish
``--messages`` one-sample telemetry messages (QoS 1, up to ``--in-flight`` per terminal
unacknowledged); the clock stops when the last sample is stored. Prints messages per second
and the server's CPU per message, with the load average (the machine is shared).

    PYTHONPATH=src .venv/bin/python benchmarks/jetstream_uplink.py --messages 3000
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from _common import ServerProcess, benchmark_database, server_environment
from sqlalchemy import func, select

# The test suite's cluster and device helpers: the benchmark runs what the tests run.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fleet.brokers import HOST, NatsCluster  # noqa: E402
from tests.fleet.test_mqtt import _batch, _device_with_key  # noqa: E402

from homepot.agent.mqtt import DeviceMqttLink  # noqa: E402
from homepot.analytics.models import DeviceMetrics  # noqa: E402
from homepot.db import create_engine, create_session_factory  # noqa: E402

SECRET = "benchmark-secret-that-is-long-enough-for-hs256"
DEFAULT_POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


async def metrics(base_url: str) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{base_url}/metrics", timeout=5)
    samples: dict[str, float] = {}
    for line in answer.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def wait_until(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not happen within {within} s")
        await asyncio.sleep(0.2)


def run_mode(mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cluster_dir = workdir / f"nats-{mode}"
    cluster_dir.mkdir()
    cluster = NatsCluster(shutil.which("nats-server") or "/usr/sbin/nats-server", cluster_dir)
    cluster.start()
    try:
        with benchmark_database("postgresql", args.postgres_server, f"js_{mode}") as url:
            return asyncio.run(measure(mode, args, workdir, cluster, url))
    finally:
        cluster.stop()


async def measure(
    mode: str, args: argparse.Namespace, workdir: Path, cluster: NatsCluster, url: str
) -> dict[str, Any]:
    engine = create_engine(url)
    factory = create_session_factory(engine)
    stand_in = SimpleNamespace(state=SimpleNamespace(session_factory=factory))
    devices = [await _device_with_key(stand_in) for _ in range(args.devices)]  # type: ignore[arg-type]
    settings = {
        "HOMEPOT_FLEET__MQTT_URL": cluster.url(0),
        "HOMEPOT_FLEET__MQTT_PROTOCOL": "3.1.1",
        "HOMEPOT_FLEET__MQTT_SHARED_SUBSCRIPTION": "false",
    }
    if mode == "jetstream":
        settings |= {
            "HOMEPOT_FLEET__UPLINK": "jetstream",
            "HOMEPOT_FLEET__NATS_URLS": cluster.nats_url(0),
        }
    server = ServerProcess(server_environment(url, workdir, secret=SECRET, **settings), workdir)
    server.start(timeout=120)
    try:
        ready = (
            "homepot_jetstream_connected"
            if mode == "jetstream"
            else 'homepot_singleton_leader{task="homepot-mqtt-uplink"}'
        )

        async def reading() -> bool:
            return (await metrics(server.base_url)).get(ready) == 1

        await wait_until(reading, 60, f"the {mode} reader starting")
        share = [
            args.messages // args.devices + (i < args.messages % args.devices)
            for i in range(args.devices)
        ]
        bodies = [[_batch(samples=1) for _ in range(n)] for n in share]

        async def send(index: int) -> None:
            device_id, key = devices[index]
            gate = asyncio.Semaphore(args.in_flight)
            port = cluster.mqtt_ports[index % cluster.NODES]
            async with DeviceMqttLink(HOST, port, device_id, key) as link:

                async def one(body: Any) -> None:
                    async with gate:
                        await link.publish_telemetry(body)

                await asyncio.gather(*(one(body) for body in bodies[index]))

        async def stored() -> int:
            async with factory() as session:
                count = await session.scalar(select(func.count()).select_from(DeviceMetrics))
            return int(count or 0)

        assert server.process is not None
        load_average = f"{os.getloadavg()[0]:.1f}"
        started = time.monotonic()
        cpu_before = cpu_seconds(server.process.pid)
        await asyncio.gather(*(send(i) for i in range(args.devices)))

        async def all_stored() -> bool:
            return await stored() >= args.messages

        await wait_until(all_stored, 300, "storing every message")
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(server.process.pid) - cpu_before
    finally:
        server.stop()
        await engine.dispose()
    return {
        "mode": mode,
        "messages": args.messages,
        "seconds": elapsed,
        "messages_per_s": args.messages / elapsed,
        "server_cpu_us_per_message": cpu * 1e6 / args.messages,
        "load_average": load_average,
    }


def main() -> None:
    # aiomqtt warns for every publish queued behind the in-flight ones: expected here.
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--devices", type=int, default=6)
    parser.add_argument("--in-flight", type=int, default=20, help="per terminal")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="homepot-jetstream-") as directory:
        results = []
        for mode in ("mqtt", "jetstream"):
            workdir = Path(directory) / mode
            workdir.mkdir()
            results.append(run_mode(mode, args, workdir))
    print(f"{'uplink':<10} {'messages':>8} {'seconds':>8} {'msg/s':>8} {'server µs/msg':>14} load")
    for r in results:
        print(
            f"{r['mode']:<10} {r['messages']:>8} {r['seconds']:>8.1f} {r['messages_per_s']:>8.0f}"
            f" {r['server_cpu_us_per_message']:>14.0f} {r['load_average']}"
        )


if __name__ == "__main__":
    main()
