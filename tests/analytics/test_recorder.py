"""The recorder under load, outage, restart and shutdown: no loss, no duplicates."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from homepot.analytics import recorder as recorder_module
from homepot.analytics.copy_writer import json_text
from homepot.analytics.models import (
    ConfigurationHistory,
    DeviceMetrics,
    DeviceStateHistory,
    ErrorLog,
)
from homepot.analytics.recorder import Recorder
from homepot.config import AnalyticsSettings
from homepot.db import create_engine
from homepot.kit.jsonlimits import MAX_DEPTH
from homepot.kit.redaction import TOO_DEEP
from tests.faults.servers import TcpProxy


def _settings(tmp_path: Path, **overrides: object) -> AnalyticsSettings:
    values: dict[str, object] = {
        "spool_dir": tmp_path / "spool",
        "flush_interval_seconds": 0.05,
        "retry_attempts": 2,
        "retry_backoff_seconds": 0.01,
        "spool_replay_interval_seconds": 0.05,
    }
    values.update(overrides)
    return AnalyticsSettings.model_validate(values)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url)
    yield eng
    await eng.dispose()


def _unreachable_url(backend: str, tmp_path: Path) -> str:
    if backend == "postgresql":
        return "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
    return f"sqlite+aiosqlite:///{tmp_path}/missing-dir/homepot.db"


async def _metric_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        result = await connection.execute(select(DeviceMetrics.event_id).order_by(DeviceMetrics.id))
        return [row[0] for row in result]


def _record_metrics(recorder: Recorder, count: int, start: int = 0) -> list[str]:
    ids = []
    for n in range(start, start + count):
        event_id = recorder.record(
            DeviceMetrics, device_id=f"pos-terminal-{n % 7:03d}", cpu_percent=float(n % 100)
        )
        assert event_id is not None
        ids.append(event_id)
    return ids


async def test_batches_are_written_in_order_without_waiting(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path, batch_size=100))
    await recorder.start()
    ids = _record_metrics(recorder, 1234)
    assert recorder.queued > 0  # record() returned before anything was written
    await recorder.stop()
    assert await _metric_ids(engine) == ids
    snapshot = recorder.snapshot()
    assert snapshot["written"] == 1234
    assert snapshot["written_by_table"] == {"device_metrics": 1234}
    assert snapshot["queued"] == 0


async def test_postgresql_builds_each_batch_while_the_one_before_is_copied(
    engine: AsyncEngine, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python (building rows) and the database (taking a COPY) work at the same time, while
    the batches still reach the table one after the other, in order."""
    if backend != "postgresql":
        pytest.skip("COPY is PostgreSQL's; SQLite takes one batch at a time")
    recorder = Recorder(engine, _settings(tmp_path, batch_size=100))
    # Batches of batch_size (a backlog's larger batches are the next test's).
    monkeypatch.setattr(recorder_module, "_BACKLOG_BATCH_FACTOR", 1)
    happened: list[str] = []
    copy_rows, built_batch = recorder._copy_rows, recorder._built_batch

    async def copy(by_table: dict[str, list[dict[str, object]]]) -> None:
        happened.append("copy")
        await copy_rows(by_table)
        happened.append("copied")

    def build(size: int, *, start: int = 0) -> list[tuple[str, dict[str, object]]]:
        happened.append("build")
        return built_batch(size, start=start)

    monkeypatch.setattr(recorder, "_copy_rows", copy)
    monkeypatch.setattr(recorder, "_built_batch", build)
    ids = _record_metrics(recorder, 500)
    await recorder.flush()
    assert await _metric_ids(engine) == ids
    # Never two COPYs at once; each batch from the third on is built during a COPY.
    assert "".join("(" if step == "copy" else ")" for step in happened if step != "build") == (
        "()" * 5
    )
    during = [
        happened[:n].count("copy") > happened[:n].count("copied")
        for n, step in enumerate(happened)
        if step == "build"
    ]
    assert during == [False, False, True, True, True]


async def test_a_backlog_is_written_in_larger_batches_on_postgresql(
    engine: AsyncEngine, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst costs fewer COPYs (each a commit): while a backlog waits, a batch takes half of
    it, up to 8 x batch_size; a queue that keeps up is written batch_size at a time. SQLite
    keeps batch_size (its INSERTs bind every value)."""
    recorder = Recorder(engine, _settings(tmp_path, batch_size=100))
    sizes: list[int] = []
    built_batch = recorder._built_batch

    def build(size: int, *, start: int = 0) -> list[tuple[str, dict[str, object]]]:
        sizes.append(size)
        return built_batch(size, start=start)

    monkeypatch.setattr(recorder, "_built_batch", build)
    ids = _record_metrics(recorder, 3_000)
    await recorder.flush()
    assert await _metric_ids(engine) == ids  # all of it, once, in order
    assert sum(sizes) == 3_000
    if backend == "postgresql":
        # 3,000 waiting: 800 (8 x 100), then 800 of the 2,200 behind it, then half of what
        # waits, down to batch_size.
        assert sizes[:2] == [800, 800]
        assert max(sizes) == 800
        assert len(sizes) < 12
    else:
        assert set(sizes) == {100}
    sizes.clear()
    ids += _record_metrics(recorder, 150, start=3_000)
    await recorder.flush()
    assert sizes == [100, 50]  # no backlog: batch_size at a time
    assert await _metric_ids(engine) == ids


async def test_a_flush_whose_caller_gives_up_still_finishes_its_write(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller cancelled while it waits for flush() (its client went away, a timeout) does
    not cut the write off halfway: a cancelled aiosqlite call left its connection wedged,
    and every later flush and the shutdown waited for it forever."""
    recorder = Recorder(engine, _settings(tmp_path, batch_size=50))
    writing, release = asyncio.Event(), asyncio.Event()
    cancelled: list[bool] = []
    write = recorder._write

    async def slow_write(batch: list[tuple[str, dict[str, object]]]) -> None:
        writing.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        await write(batch)

    monkeypatch.setattr(recorder, "_write", slow_write)
    ids = _record_metrics(recorder, 120)
    caller = asyncio.create_task(recorder.flush())
    await asyncio.wait_for(writing.wait(), 10)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    release.set()
    await asyncio.wait_for(recorder.flush(), 30)
    assert cancelled == []
    assert await _metric_ids(engine) == ids
    assert recorder.snapshot()["queued"] == 0


async def test_outage_spills_to_disk_and_replays_in_order_without_loss_or_duplicates(
    engine: AsyncEngine, backend: str, tmp_path: Path
) -> None:
    healthy = engine
    broken = create_engine(_unreachable_url(backend, tmp_path))
    recorder = Recorder(broken, _settings(tmp_path, batch_size=50))
    await recorder.start()

    before = _record_metrics(recorder, 120)
    await recorder.flush()
    snapshot = recorder.snapshot()
    assert snapshot["spilled"] == 120
    assert snapshot["retried"] >= 2
    assert snapshot["spool_pending_batches"] == 3
    assert snapshot["last_error"]
    assert await _metric_ids(healthy) == []

    # More events while the database is still down join the end of the backlog.
    during = _record_metrics(recorder, 30, start=120)
    await recorder.flush()
    assert recorder.snapshot()["spilled"] == 150

    # The database comes back: the backlog is replayed first, then new events follow.
    recorder.engine = healthy
    after = _record_metrics(recorder, 10, start=150)
    await recorder.stop()
    assert await _metric_ids(healthy) == before + during + after
    snapshot = recorder.snapshot()
    assert snapshot["replayed"] == snapshot["spilled"] >= 150  # everything spilled came back
    assert snapshot["spool_pending_batches"] == 0
    assert not list((tmp_path / "spool").glob("*.jsonl"))
    await broken.dispose()


async def test_spool_survives_a_restart(engine: AsyncEngine, backend: str, tmp_path: Path) -> None:
    broken = create_engine(_unreachable_url(backend, tmp_path))
    first = Recorder(broken, _settings(tmp_path, retry_attempts=0))
    await first.start()
    ids = _record_metrics(first, 25)
    await first.stop()  # shutdown during the outage: everything goes to the spool
    assert first.snapshot()["spilled"] == 25
    await broken.dispose()

    second = Recorder(engine, _settings(tmp_path))
    assert second.snapshot()["spool_pending_batches"] == 1
    await second.start()
    await second.stop()
    assert await _metric_ids(engine) == ids


async def test_a_batch_replayed_after_it_was_already_written_is_stored_once(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path))
    ids = _record_metrics(recorder, 5)
    batch = list(recorder._queue)
    await recorder.flush()
    # The acknowledgement was lost: the same batch is spooled and replayed.
    recorder.spool.write(batch)
    await recorder.flush()
    assert await _metric_ids(engine) == ids
    assert recorder.snapshot()["duplicates_skipped"] == 5


async def test_a_batch_spooled_before_the_source_column_existed_is_replayed_as_device(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path))
    ids = _record_metrics(recorder, 3)
    old_batch = [
        (table, {k: v for k, v in row.items() if k != "source"}) for table, row in recorder._queue
    ]
    recorder._queue.clear()
    recorder.spool.write(old_batch)

    await recorder.flush()  # the column's server default fills the gap

    assert await _metric_ids(engine) == ids
    async with engine.connect() as connection:
        sources = set(await connection.scalars(select(DeviceMetrics.source)))
    assert sources == {"device"}


async def test_shutdown_drains_everything_queued(engine: AsyncEngine, tmp_path: Path) -> None:
    recorder = Recorder(engine, _settings(tmp_path, flush_interval_seconds=60, batch_size=10_000))
    await recorder.start()
    ids = _record_metrics(recorder, 2500)
    await asyncio.sleep(0)
    await recorder.stop()
    assert await _metric_ids(engine) == ids


async def test_memory_bound_drops_new_events_and_counts_them(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path, queue_max_events=10))
    kept = [
        recorder.record(ErrorLog, category="api", severity="info", error_message="m")
        for _ in range(10)
    ]
    assert None not in kept
    assert recorder.record(ErrorLog, category="api", severity="info", error_message="m") is None
    assert recorder.snapshot()["dropped"] == 1
    await recorder.flush()
    async with engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(ErrorLog)) == 10


async def test_unknown_column_is_a_programming_error(engine: AsyncEngine, tmp_path: Path) -> None:
    recorder = Recorder(engine, _settings(tmp_path))
    with pytest.raises(ValueError, match="no column"):
        recorder.record(DeviceMetrics, device_id="d", cpu=1.0)


async def test_disabled_recorder_records_nothing(engine: AsyncEngine, tmp_path: Path) -> None:
    recorder = Recorder(engine, _settings(tmp_path, enabled=False))
    assert recorder.record(DeviceMetrics, device_id="d") is None
    assert recorder.queued == 0


async def test_postgres_outage_through_a_cut_connection(
    engine: AsyncEngine, backend: str, database_url: str, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("a network outage needs a database reached over the network")
    proxy = TcpProxy(engine.url.port or 5432)
    await proxy.start()
    proxied = create_engine(
        database_url.replace(f":{engine.url.port or 5432}/", f":{proxy.port}/", 1)
    )
    recorder = Recorder(proxied, _settings(tmp_path, batch_size=40))
    await recorder.start()
    first = _record_metrics(recorder, 40)
    await recorder.flush()
    assert await _metric_ids(engine) == first

    await proxy.cut()
    during = _record_metrics(recorder, 100, start=40)
    await recorder.flush()
    assert recorder.snapshot()["spilled"] == 100
    assert await _metric_ids(engine) == first

    await proxy.start()  # same port: the database is back
    after = _record_metrics(recorder, 5, start=140)
    await recorder.stop()
    assert await _metric_ids(engine) == first + during + after
    await proxied.dispose()
    await proxy.cut()


async def test_a_claim_left_by_a_dead_process_is_released(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path))
    ids = _record_metrics(recorder, 3)
    recorder.spool.write(list(recorder._queue))
    recorder._queue.clear()
    (spooled,) = (tmp_path / "spool").glob("*.jsonl")
    # A process (pid 2**22 + 1 is above Linux's pid_max) claimed it and died mid-replay.
    spooled.rename(spooled.with_name(f"{spooled.stem}.{2**22 + 1}.replaying"))

    restarted = Recorder(engine, _settings(tmp_path))
    assert restarted.snapshot()["spool_pending_batches"] == 1
    await restarted.flush()
    assert await _metric_ids(engine) == ids
    assert not list((tmp_path / "spool").iterdir())


async def test_values_the_database_cannot_take_are_cleaned_before_queueing(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path))
    recorder.record(
        ErrorLog,
        category="api",
        severity="error",
        error_message="nul\x00byte",
        device_id="d" * 500,  # longer than the column
        context={"k\x00": ["v\x00"]},
    )
    await recorder.flush()
    async with engine.connect() as connection:
        row = (await connection.execute(select(ErrorLog.__table__))).one()
    assert row.error_message == "nulbyte"
    assert row.device_id == "d" * 64
    assert row.context == {"k": ["v"]}
    assert recorder.snapshot()["rejected"] == 0


async def test_a_row_the_database_refuses_does_not_stall_the_rest(
    engine: AsyncEngine, backend: str, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path))
    good_before = _record_metrics(recorder, 3)
    recorder.record(DeviceMetrics, device_id=None)  # violates NOT NULL
    poison = 1
    if backend == "postgresql":  # SQLite stores any integer; PostgreSQL's int4 does not
        recorder.record(DeviceMetrics, device_id="pos-terminal-bad", transaction_count=2**40)
        poison += 1
    good_after = _record_metrics(recorder, 3, start=3)
    await recorder.flush()
    assert await _metric_ids(engine) == good_before + good_after
    snapshot = recorder.snapshot()
    assert snapshot["rejected"] == poison
    assert snapshot["spool_pending_batches"] == 0


async def test_secret_configuration_parameters_keep_no_values(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path))
    for name, old, new in [("payment_api_key", "old-key", "new-key"), ("max_connections", 10, 15)]:
        recorder.record(
            ConfigurationHistory,
            entity_type="device",
            entity_id="pos-terminal-001",
            parameter_name=name,
            old_value={"value": old},
            new_value={"value": new},
        )
    await recorder.flush()
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(ConfigurationHistory.__table__).order_by(ConfigurationHistory.id)
            )
        ).all()
    assert [(r.old_value, r.new_value) for r in rows] == [
        ({"value": "[REDACTED]"}, {"value": "[REDACTED]"}),
        ({"value": 10}, {"value": 15}),
    ]


async def test_events_tied_to_a_transaction_follow_its_outcome(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path))
    factory = async_sessionmaker(engine)
    async with factory() as session:
        await session.execute(select(1))  # producers record after a flush: inside a transaction
        kept = recorder.record_after_commit(
            session, DeviceStateHistory, device_id="pos-1", new_state="online"
        )
        assert recorder.queued == 0  # nothing is queued before the commit
        await session.commit()
    async with factory() as session:
        await session.execute(select(1))
        recorder.record_after_commit(
            session, DeviceStateHistory, device_id="pos-2", new_state="error"
        )
        await session.rollback()
        await session.commit()  # a later commit must not resurrect the rolled-back event
    async with factory() as session:
        await session.execute(select(1))
        recorder.record_after_commit(
            session, DeviceStateHistory, device_id="pos-3", new_state="error"
        )  # closed without a commit
    await recorder.flush()
    async with engine.connect() as connection:
        stored = (await connection.execute(select(DeviceStateHistory.event_id))).scalars().all()
    assert stored == [kept]


async def test_values_json_cannot_encode_are_normalised_and_cost_no_batch(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path))
    before = _record_metrics(recorder, 3)
    identifier = uuid.UUID("9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f")
    recorder.record(
        ErrorLog,
        category="api",
        severity="error",
        error_message="odd values",
        context={
            "uuid": identifier,
            "decimal": Decimal("12.50"),
            "not_a_number": Decimal("NaN"),
            "when": datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
            "raw": b"\xff\x00",
            "text_bytes": b"ok",
            "tags": {"b", "a"},
            "nan": float("nan"),
            "inf": float("inf"),
            "pair": (1, 2),
            7: "int key",
        },
    )
    after = _record_metrics(recorder, 3, start=3)
    await recorder.flush()
    assert await _metric_ids(engine) == before + after
    async with engine.connect() as connection:
        (context,) = (await connection.execute(select(ErrorLog.context))).scalars()
    assert context == {
        "uuid": "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f",
        "decimal": 12.5,
        "not_a_number": None,
        "when": "2026-11-30T12:00:00+00:00",
        "raw": "base64:/wA=",
        "text_bytes": "ok",
        "tags": ["a", "b"],
        "nan": None,
        "inf": None,
        "pair": [1, 2],
        "7": "int key",
    }
    assert recorder.snapshot()["rejected"] == 0


async def test_json_values_beyond_the_fast_encoder_are_stored_whole(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # orjson (the COPY path's JSON encoder) refuses ints beyond 64 bits; json takes them.
    recorder = Recorder(engine, _settings(tmp_path))
    extra = {"serial": 2**70, "negative": -(2**65), "ok": 1.5, "name": "Kasse 3 – Café"}
    recorder.record(DeviceMetrics, device_id="pos-terminal-json", extra_metrics=extra)
    recorder.record(DeviceMetrics, device_id="pos-terminal-json", extra_metrics={"plain": 1})
    await recorder.flush()
    async with engine.connect() as connection:
        stored = (
            (
                await connection.execute(
                    select(DeviceMetrics.extra_metrics).order_by(DeviceMetrics.id)
                )
            )
            .scalars()
            .all()
        )
    assert stored == [extra, {"plain": 1}]
    assert recorder.snapshot()["rejected"] == 0


def test_json_text_falls_back_to_json_for_what_orjson_refuses() -> None:
    assert json.loads(json_text({"a": [1, 2.5, None, True, "x"]})) == {
        "a": [1, 2.5, None, True, "x"]
    }
    assert json.loads(json_text({"big": 2**70})) == {"big": 2**70}
    assert json.loads(json_text({"s": "\ud800"})) == {"s": "\ud800"}


async def test_a_value_the_database_refuses_costs_its_own_event_only(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path))
    good = _record_metrics(recorder, 4)
    recorder.record(DeviceMetrics, device_id="pos-terminal-bad", cpu_percent="not a number")
    more = _record_metrics(recorder, 4, start=4)
    await recorder.flush()
    assert await _metric_ids(engine) == good + more
    snapshot = recorder.snapshot()
    assert (snapshot["rejected"], snapshot["spilled"], snapshot["queued"]) == (1, 0, 0)


async def test_an_unwritable_spool_keeps_the_events_in_memory_and_says_so(
    engine: AsyncEngine, backend: str, tmp_path: Path
) -> None:
    broken = create_engine(_unreachable_url(backend, tmp_path))
    await asyncio.to_thread((tmp_path / "spool").write_text, "a file, not a directory")
    recorder = Recorder(broken, _settings(tmp_path, retry_attempts=0, batch_size=10))
    ids = _record_metrics(recorder, 25)
    await recorder.flush()
    snapshot = recorder.snapshot()
    assert snapshot["spool_failures"] == 1
    assert snapshot["spool_writable"] is False
    assert snapshot["last_spool_error"]
    # Nothing was taken off the queue: the 25 events and the error report about the spool.
    assert snapshot["queued"] == 26
    assert (snapshot["spilled"], snapshot["dropped"], snapshot["rejected"]) == (0, 0, 0)

    await asyncio.to_thread((tmp_path / "spool").unlink)
    recorder.engine = engine
    await recorder.flush()
    assert await _metric_ids(engine) == ids
    snapshot = recorder.snapshot()
    assert (snapshot["queued"], snapshot["spool_writable"]) == (0, True)
    async with engine.connect() as connection:
        codes = list((await connection.execute(select(ErrorLog.error_code))).scalars())
    assert codes == ["ANALYTICS_SPOOL_UNWRITABLE"]
    await broken.dispose()


async def test_json_nested_too_deep_is_cut_not_a_crash(engine: AsyncEngine, tmp_path: Path) -> None:
    recorder = Recorder(engine, _settings(tmp_path))
    nested: dict[str, object] = {"leaf": 1}
    for _ in range(800):  # deeper than the interpreter's recursion limit allows redaction
        nested = {"k": nested}
    recorder.record(
        ErrorLog, category="api", severity="error", error_message="deep", context=nested
    )
    await recorder.flush()
    async with engine.connect() as connection:
        (context,) = (await connection.execute(select(ErrorLog.context))).scalars()
    depth = 0
    while isinstance(context, dict):
        context, depth = context["k"], depth + 1
    assert (depth, context) == (MAX_DEPTH, TOO_DEEP)


def test_the_conflict_target_is_the_unique_key_holding_event_id() -> None:
    from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, UniqueConstraint

    from homepot.analytics.recorder import conflict_columns

    # device_metrics is partitioned by time on PostgreSQL, so its key carries the timestamp.
    assert conflict_columns(DeviceMetrics.__table__) == ("event_id", "timestamp")
    # A table partitioned by time must carry the partition column in every unique key.
    partitioned = Table(
        "partitioned_events",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("event_id", String(64)),
        Column("timestamp", DateTime(timezone=True)),
        UniqueConstraint("event_id", "timestamp"),
    )
    assert conflict_columns(partitioned) == ("event_id", "timestamp")
    plain = Table("no_key", MetaData(), Column("id", Integer, primary_key=True))
    with pytest.raises(RuntimeError, match="no unique key holding event_id"):
        conflict_columns(plain)


async def test_a_batch_holding_the_same_event_twice_stores_it_once(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path))
    start = datetime.now(UTC)
    moments = [start + timedelta(seconds=n) for n in range(3)]
    ids = [
        recorder.record(DeviceMetrics, device_id="pos-terminal-001", timestamp=moment)
        for moment in moments
    ]
    # The same event: its id and its moment (the key of a table partitioned by time).
    recorder.record(
        DeviceMetrics, event_id=ids[1], device_id="pos-terminal-001", timestamp=moments[1]
    )
    await recorder.flush()
    assert await _metric_ids(engine) == ids
    assert recorder.snapshot()["duplicates_skipped"] == 1
    assert recorder.snapshot()["written"] == 3


def _metric_rows(count: int, **fields: object) -> list[dict[str, object]]:
    now = datetime.now(UTC)
    return [
        {
            "event_id": uuid.uuid4().hex,
            "timestamp": now - timedelta(seconds=n),
            "device_id": "pos-1",
            "cpu_percent": 12.5,
            "transaction_count": n,
            "extra_metrics": {"site_load": 0.5, "api_key": "sk_live_secret", "note": "ok"},
            **fields,
        }
        for n in range(count)
    ]


async def test_record_many_stores_a_batch_redacting_what_is_not_vouched_for(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path))
    rows = _metric_rows(30)
    storable = frozenset({"event_id", "timestamp", "cpu_percent", "transaction_count"})

    assert recorder.record_many(DeviceMetrics, rows, storable=storable) == 30
    await recorder.flush()

    async with engine.connect() as connection:
        stored = (await connection.execute(select(DeviceMetrics.__table__))).mappings().all()
    assert sorted(row["event_id"] for row in stored) == sorted(str(r["event_id"]) for r in rows)
    assert {row["extra_metrics"]["api_key"] for row in stored} == {"[REDACTED]"}
    assert {row["extra_metrics"]["site_load"] for row in stored} == {0.5}
    assert {row["source"] for row in stored} == {"device"}  # the column's default


async def test_record_many_drops_beyond_the_memory_bound_and_counts_it(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    recorder = Recorder(engine, _settings(tmp_path, queue_max_events=10))
    assert recorder.record_many(DeviceMetrics, _metric_rows(4)) == 4
    assert recorder.record_many(DeviceMetrics, _metric_rows(8)) == 6
    assert recorder.snapshot()["dropped"] == 2
    assert recorder.record_many(DeviceMetrics, _metric_rows(1)) == 0


async def test_record_many_refuses_what_record_refuses(engine: AsyncEngine, tmp_path: Path) -> None:
    recorder = Recorder(engine, _settings(tmp_path))
    with pytest.raises(ValueError, match="no column"):
        recorder.record_many(DeviceMetrics, _metric_rows(1, cpu=1.0))
    with pytest.raises(ValueError, match="aware timestamp"):
        recorder.record_many(DeviceMetrics, _metric_rows(1, timestamp=datetime(2026, 1, 1)))
    assert recorder.queued == 0
    disabled = Recorder(engine, _settings(tmp_path, enabled=False))
    assert disabled.record_many(DeviceMetrics, _metric_rows(3)) == 0
