"""The recorder's counters as Prometheus metrics, read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from homepot.analytics.recorder import Recorder

_COUNTERS = {
    "enqueued": "Events handed to the recorder",
    "written": "Events written to the database",
    "duplicates_skipped": "Events already stored (same event_id), not written again",
    "retried": "Batch write attempts repeated after a failure",
    "spilled": "Events spilled to the on-disk spool",
    "replayed": "Spooled events written after the database came back",
    "dropped": "Events dropped because the in-memory queue was full",
    "rejected": "Events the database refused as data (written to the log, not stored)",
    "flushes": "Flush passes of the recorder",
}


class RecorderCollector(Collector):
    def __init__(self, recorder: Callable[[], Recorder | None]) -> None:
        self.recorder = recorder

    def collect(self) -> Iterator[Metric]:
        recorder = self.recorder()
        if recorder is None:
            return
        snapshot = recorder.snapshot()
        for name, help_text in _COUNTERS.items():
            yield CounterMetricFamily(f"homepot_recorder_{name}", help_text, value=snapshot[name])
        yield GaugeMetricFamily(
            "homepot_recorder_queued", "Events waiting in memory", value=snapshot["queued"]
        )
        yield GaugeMetricFamily(
            "homepot_recorder_spool_pending_batches",
            "Batches waiting in the on-disk spool",
            value=snapshot["spool_pending_batches"],
        )
        last = recorder.stats.last_flush_at
        yield GaugeMetricFamily(
            "homepot_recorder_last_flush_timestamp_seconds",
            "Unix time of the last flush",
            value=last.timestamp() if last else 0,
        )
        by_table = CounterMetricFamily(
            "homepot_recorder_written_by_table",
            "Events written, by table",
            labels=["table"],
        )
        for table, count in snapshot["written_by_table"].items():
            by_table.add_metric([table], count)
        yield by_table
