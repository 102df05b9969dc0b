"""Which background singletons this process runs, its MQTT bridge's counters and what its
risk passes read, as Prometheus metrics read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from homepot.kit.singleton import Leadership


class LeadershipCollector(Collector):
    """``homepot_singleton_leader{task}`` (1 in the process that runs the task's passes),
    ``homepot_singleton_passes_total{task}`` and ``homepot_singleton_skipped_total{task}``
    (passes left to another process). Summed over the processes of one database, each task
    has one leader, and its passes are counted once."""

    def __init__(self, leadership: Callable[[], Leadership | None]) -> None:
        self.leadership = leadership

    def collect(self) -> Iterator[Metric]:
        leadership = self.leadership()
        if leadership is None:
            return
        tasks = sorted(set(leadership.passes) | set(leadership.skipped))
        leader = GaugeMetricFamily(
            "homepot_singleton_leader",
            "1 when this process runs the background task's passes",
            labels=["task"],
        )
        passes = CounterMetricFamily(
            "homepot_singleton_passes",
            "Passes of the background task run by this process",
            labels=["task"],
        )
        skipped = CounterMetricFamily(
            "homepot_singleton_skipped",
            "Passes of the background task left to the process that leads it",
            labels=["task"],
        )
        for task in tasks:
            leader.add_metric([task], 1 if leadership.leads(task) else 0)
            passes.add_metric([task], leadership.passes.get(task, 0))
            skipped.add_metric([task], leadership.skipped.get(task, 0))
        yield leader
        yield passes
        yield skipped


class _UplinkCollector(Collector):
    """An uplink reader's counters and gauges, read from its ``snapshot()`` (None: no reader).

    Subclasses name the metrics: ``COUNTERS`` (snapshot key → help; published as
    ``<PREFIX>_<key>_total``) and ``GAUGES`` (metric name → (help, snapshot key); a boolean
    is published as 1 or 0).
    """

    PREFIX: str
    COUNTERS: dict[str, str]
    GAUGES: dict[str, tuple[str, str]]

    def __init__(self, snapshot: Callable[[], dict[str, Any] | None]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()
        if snapshot is None:
            return
        for name, help_text in self.COUNTERS.items():
            yield CounterMetricFamily(
                f"{self.PREFIX}_{name}", help_text, value=snapshot.get(name, 0)
            )
        for metric, (help_text, key) in self.GAUGES.items():
            yield GaugeMetricFamily(metric, help_text, value=float(snapshot.get(key) or 0))


class MqttBridgeCollector(_UplinkCollector):
    """The MQTT bridge's counters (``homepot_mqtt_uplink_{received,acknowledged,spooled,
    replayed}_total``), from its snapshot; nothing without a broker."""

    PREFIX = "homepot_mqtt_uplink"
    COUNTERS = {
        "received": "Device messages received from the broker by this process",
        "acknowledged": "Device messages acknowledged to the broker once stored or spooled",
        "spooled": "Device messages written to the bridge's spool (database unavailable)",
        "replayed": "Spooled device messages stored after the database came back",
    }
    GAUGES = {
        "homepot_mqtt_connected": (
            "1 while this process is connected to the broker",
            "connected",
        ),
    }


class JetStreamUplinkCollector(_UplinkCollector):
    """The JetStream uplink reader's counters (``homepot_jetstream_uplink_{received,
    acknowledged,redelivered,skipped}_total``); nothing unless ``fleet.uplink`` is jetstream."""

    PREFIX = "homepot_jetstream_uplink"
    COUNTERS = {
        "received": "Device messages this process fetched from the shared JetStream consumer",
        "acknowledged": "Fetched device messages acknowledged to JetStream once stored",
        "redelivered": "Fetched device messages NATS had delivered before (to any process)",
        "skipped": "Fetched messages that are not device messages (pushed jobs), acknowledged",
    }
    GAUGES = {
        "homepot_jetstream_uplink_held": (
            "Device messages fetched by this process and not yet stored",
            "held",
        ),
        "homepot_jetstream_connected": ("1 while this process is connected to NATS", "connected"),
    }


class RiskReadsCollector(_UplinkCollector):
    """What this process's risk passes read (``homepot_risk_metric_rows_read_total``,
    ``homepot_risk_baselines_computed_total``) and the baselines it keeps; nothing until
    risk scoring runs here (homepot.insights.risk_reads)."""

    PREFIX = "homepot_risk"
    COUNTERS = {
        "metric_rows_read": "device_metrics rows read by this process's risk passes",
        "baselines_computed": "Device baselines recomputed (a day of samples read for each)",
    }
    GAUGES = {
        "homepot_risk_baselines_kept": (
            "Device baselines this process keeps between its risk passes",
            "kept",
        ),
    }
