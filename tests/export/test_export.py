"""Pseudonymized exports: `homepot export` and POST /api/v1/analytics/exports.

Rows are stored here straight through the ORM, canaries and all (no recorder redaction), so
that the export alone has to keep e-mail addresses, addresses, tokens and cards out.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import tracemalloc
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from pydantic import SecretStr
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from homepot import __version__, cli
from homepot.analytics.models import (
    APIRequestLog,
    ConfigurationHistory,
    DeviceMetrics,
    DeviceStateHistory,
    ErrorLog,
    JobOutcome,
    SiteOperatingSchedule,
    UserActivity,
)
from homepot.audit.models import AuditLog
from homepot.auth.models import Role, User
from homepot.config import Settings
from homepot.db import create_engine, create_session_factory
from homepot.export.pseudonym import Pseudonymizer
from homepot.export.service import ExportRequest, export_tables, time_range_of
from homepot.export.tables import EXPORT_TABLES, resolve_tables
from homepot.main import create_app
from tests.helpers import auth_headers, db_rows, flush

KEY = "export-key-for-tests-0123456789"
OTHER_KEY = "another-export-key-9876543210"
DAY = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
RAW_USER = "5f0c6a1b2d3e4f5061728394a5b6c7d8"
RAW_SESSION = "session-raw-0042"
EMAIL = "ann.lee@example.com"
IPV4 = "198.51.100.23"
IPV6 = "2001:db8:abcd:12:34::7"
CARD = "4111 1111 1111 1111"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
DEVICE_KEY = "hpd_Zx81kQpLmN0vB7cT2yR5uW9e"
SECRETS = (
    EMAIL,
    "ann.lee%40example.com",
    IPV4,
    IPV6,
    "2001:db8:abcd:12",
    CARD,
    "4111111111111111",
    "bearer-value-abcdefgh",
    "s3cr3t-value",
    JWT[:20],
    DEVICE_KEY,
    "0123456789abcdef0123456789abcdef01234567",
    "hunter22",
    "k-123-secret",
    RAW_USER,
    RAW_SESSION,
    KEY,
)
CANARY = (
    f"mail {EMAIL} from {IPV4} and {IPV6}, card {CARD}, "
    "Authorization: Bearer bearer-value-abcdefgh token=s3cr3t-value "
    f"jwt {JWT} key {DEVICE_KEY} digest 0123456789abcdef0123456789abcdef01234567 "
    f"by user {RAW_USER}"
)
CANARY_JSON: dict[str, Any] = {
    "note": CANARY,
    "password": "hunter22",
    "nested": [{"api_key": "k-123-secret"}, CANARY],
    "user_id": RAW_USER,
    "session_id": RAW_SESSION,
    "count": 3,
}
_EMAIL_PATTERN = re.compile(r"[\w.+-]+(?:@|%40)[\w-]+\.[\w.-]+")
_IPV4_PATTERN = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b(?!/24)")


def canary_rows(when: datetime = DAY) -> list[Any]:
    """One row per analytics table with a canary in every free-text and JSON column."""
    return [
        User(id=RAW_USER, email=EMAIL, password_hash="x", role=Role.operator),
        APIRequestLog(
            timestamp=when,
            endpoint=f"/api/v1/users?email=ann.lee%40example.com&q={IPV4}",
            route="/api/v1/users",
            method="GET",
            status_code=500,
            response_time_ms=12.5,
            user_id=RAW_USER,
            ip_address=IPV4,
            user_agent=CANARY[:500],
            error_message=CANARY,
            query_params=CANARY_JSON,
        ),
        APIRequestLog(
            timestamp=when + timedelta(seconds=1),
            endpoint="/api/v1/devices",
            method="GET",
            status_code=200,
            response_time_ms=3.0,
            user_id=None,
            ip_address=IPV6,
        ),
        DeviceStateHistory(
            timestamp=when,
            device_id="pos-1",
            previous_state="online",
            new_state="maintenance",
            changed_by=RAW_USER,
            reason=CANARY,
            extra_data=CANARY_JSON,
        ),
        DeviceStateHistory(
            timestamp=when, device_id="pos-1", new_state="online", changed_by="system"
        ),
        JobOutcome(
            timestamp=when,
            job_id="job-1",
            job_type="restart",
            device_id="pos-1",
            status="failed",
            error_message=CANARY,
            initiated_by=RAW_USER,
            extra_data=CANARY_JSON,
        ),
        ErrorLog(
            timestamp=when,
            category="api",
            severity="error",
            error_message=CANARY,
            stack_trace=CANARY,
            endpoint=f"/api/v1/users/{EMAIL}",
            user_id=RAW_USER,
            context=CANARY_JSON,
        ),
        UserActivity(
            timestamp=when,
            user_id=RAW_USER,
            session_id=RAW_SESSION,
            activity_type="search",
            page_url=f"/search?q={EMAIL}",
            element_id=EMAIL,
            search_query=CANARY,
            extra_data=CANARY_JSON,
        ),
        DeviceMetrics(
            timestamp=when, device_id="pos-1", cpu_percent=12.0, extra_metrics=CANARY_JSON
        ),
        ConfigurationHistory(
            timestamp=when,
            entity_type="device",
            entity_id="pos-1",
            parameter_name="receipt_footer",
            old_value=CANARY_JSON,
            new_value={"value": CANARY},
            changed_by=RAW_USER,
            change_reason=CANARY,
            performance_before=CANARY_JSON,
            rollback_reason=CANARY,
        ),
        SiteOperatingSchedule(
            site_id="store-1",
            day_of_week=0,
            open_time=time(8, 0),
            close_time=time(20, 0),
            notes=CANARY,
            special_considerations=CANARY_JSON,
        ),
    ]


def simulated_rows(count: int, when: datetime = DAY) -> list[Any]:
    """``count`` rows of the simulation in device_metrics and one simulated schedule."""
    return [
        *(
            DeviceMetrics(
                timestamp=when + timedelta(minutes=n),
                device_id="sim-pos-0001",
                cpu_percent=30.0,
                source="simulated",
            )
            for n in range(count)
        ),
        SiteOperatingSchedule(site_id="sim-site-001", day_of_week=3, source="simulated"),
    ]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def store(engine: AsyncEngine, rows: list[Any]) -> None:
    async with create_session_factory(engine)() as session, session.begin():
        session.add_all(rows)


async def export(
    engine: AsyncEngine,
    out: Path,
    *,
    key: str = KEY,
    fmt: str = "parquet",
    tables: list[str] | None = None,
    since: date | datetime | None = None,
    until: date | datetime | None = None,
    batch_size: int = 5_000,
    include_simulated: bool = False,
) -> dict[str, Any]:
    request = ExportRequest(
        tables=resolve_tables(tables),
        time_range=time_range_of(since, until),
        format="csv" if fmt == "csv" else "parquet",
        include_simulated=include_simulated,
    )
    await export_tables(engine, request, out, Pseudonymizer(key), batch_size=batch_size)
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return manifest


def read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))
    return list(pq.read_table(path).to_pylist())


def file_names(out: Path) -> list[str]:
    return sorted(path.name for path in out.iterdir())


def every_cell(out: Path) -> list[str]:
    cells = [(out / "manifest.json").read_text()]
    for path in out.iterdir():
        if path.name != "manifest.json":
            cells += [str(value) for row in read_rows(path) for value in row.values()]
    return cells


# --- what leaves the system ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
async def test_no_email_address_token_card_or_full_ip_leaves_in_any_cell(
    engine: AsyncEngine, tmp_path: Path, fmt: str
) -> None:
    await store(engine, canary_rows())
    manifest = await export(engine, tmp_path, fmt=fmt)

    assert all(manifest["tables"][t.name]["rows"] >= 1 for t in EXPORT_TABLES)
    cells = every_cell(tmp_path)
    for secret in SECRETS:
        leaks = [cell for cell in cells if secret in cell]
        assert not leaks, f"{secret!r} leaked: {leaks[0][:300]}"
    assert not [c for c in cells if _EMAIL_PATTERN.search(c)]
    assert not [c for c in cells if _IPV4_PATTERN.search(c)]
    requests = read_rows(tmp_path / f"api_request_logs.{fmt}")
    assert {r["ip_address"] for r in requests} == {"198.51.100.0/24", "2001:db8:abcd::/48"}
    # What is scrubbed is marked, and what is not personal survives.
    errors = read_rows(tmp_path / f"error_logs.{fmt}")[0]
    assert "[EMAIL]" in errors["error_message"]
    assert "************1111" in errors["error_message"]
    context = json.loads(errors["context"])
    assert context["password"] == "[REDACTED]"
    assert context["nested"][0] == {"api_key": "[REDACTED]"}
    assert context["count"] == 3


FORMULAS = (
    '=HYPERLINK("http://evil.example/x","click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A9)",
    "\t=1+1",
)


async def test_csv_cells_that_a_spreadsheet_would_run_as_formulas_are_escaped(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    when = DAY
    await store(
        engine,
        [
            ErrorLog(
                timestamp=when + timedelta(seconds=index),
                category="api",
                severity="error",
                error_code=f"E{index}",
                error_message=formula,
                endpoint="/api/v1/x",
            )
            for index, formula in enumerate(FORMULAS)
        ]
        + [
            DeviceMetrics(
                timestamp=when, device_id="pos-9", cpu_percent=-0.0, transaction_volume=-12.5
            )
        ],
    )
    await export(engine, tmp_path, fmt="csv", tables=["error_logs", "device_metrics"])

    messages = {
        row["error_code"]: row["error_message"] for row in read_rows(tmp_path / "error_logs.csv")
    }
    assert messages == {f"E{index}": "'" + formula for index, formula in enumerate(FORMULAS)}
    # Numbers stay numbers: only text is escaped.
    [metrics] = read_rows(tmp_path / "device_metrics.csv")
    assert metrics["transaction_volume"] == "-12.5"
    # Parquet keeps the text as it was: the escape is for spreadsheets only.
    await export(engine, tmp_path / "pq", tables=["error_logs"])
    stored = {row["error_message"] for row in read_rows(tmp_path / "pq" / "error_logs.parquet")}
    assert stored == set(FORMULAS)


async def test_pseudonyms_join_up_with_one_key_and_differ_with_another(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await store(engine, canary_rows())
    first = await export(engine, tmp_path / "a")
    second = await export(engine, tmp_path / "b")
    other = await export(engine, tmp_path / "c", key=OTHER_KEY)

    def users(out: Path) -> dict[str, Any]:
        return {
            "activity": read_rows(out / "user_activities.parquet")[0]["user_id"],
            "session": read_rows(out / "user_activities.parquet")[0]["session_id"],
            "request": read_rows(out / "api_request_logs.parquet")[0]["user_id"],
            "config": read_rows(out / "configuration_history.parquet")[0]["changed_by"],
            "job": read_rows(out / "job_outcomes.parquet")[0]["initiated_by"],
            "states": sorted(
                r["changed_by"] for r in read_rows(out / "device_state_history.parquet")
            ),
        }

    a, b, c = users(tmp_path / "a"), users(tmp_path / "b"), users(tmp_path / "c")
    pseudonym = a["activity"]
    assert re.fullmatch(r"u_[0-9a-f]{32}", pseudonym)
    assert RAW_USER not in pseudonym
    # The same user is one pseudonym in every table, so events still join up.
    assert a["request"] == a["config"] == a["job"] == pseudonym
    assert a["states"] == sorted([pseudonym, "system"])
    assert a["session"].startswith("s_")
    assert a["session"] != pseudonym
    assert a == b
    assert c["activity"] != pseudonym
    assert c["session"] != a["session"]
    assert first["key_id"] == second["key_id"] != other["key_id"]
    # Inside free text the user is the same pseudonym.
    assert pseudonym in read_rows(tmp_path / "a" / "error_logs.parquet")[0]["error_message"]


async def test_manifest_describes_the_export_without_the_key(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await store(engine, canary_rows())
    manifest = await export(
        engine, tmp_path, tables=["requests", "device_metrics"], since=date(2026, 11, 1),
        until=date(2026, 11, 28),
    )  # fmt: skip

    assert set(manifest["tables"]) == {"api_request_logs", "device_metrics"}
    assert file_names(tmp_path) == [
        "api_request_logs.parquet",
        "device_metrics.parquet",
        "manifest.json",
    ]
    requests = manifest["tables"]["api_request_logs"]
    assert requests["rows"] == 2
    assert requests["file"] == "api_request_logs.parquet"
    assert requests["min_timestamp"] == "2026-11-10T12:00:00Z"
    assert requests["max_timestamp"] == "2026-11-10T12:00:01Z"
    columns = {c["name"]: c for c in requests["columns"]}
    assert columns["timestamp"]["type"] == "timestamp[us, tz=UTC]"
    assert columns["user_id"]["treatment"] == "user pseudonym"
    assert columns["query_params"]["type"] == "json"
    assert manifest["time_range"] == {
        "since": "2026-11-01T00:00:00Z",
        "until": "2026-11-29T00:00:00Z",
        "until_inclusive": False,
    }
    assert manifest["format"] == "parquet"
    assert manifest["software_version"] == __version__
    assert manifest["key_id"] == Pseudonymizer(KEY).key_id
    assert re.fullmatch(r"[0-9a-f]{16}", manifest["key_id"])
    assert set(manifest["pseudonymization"]) >= {"user_ids", "ip_addresses", "free_text"}
    assert KEY not in (tmp_path / "manifest.json").read_text()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
async def test_files_open_in_polars_and_pyarrow_with_their_types(
    engine: AsyncEngine, tmp_path: Path, fmt: str
) -> None:
    await store(engine, canary_rows())
    await export(engine, tmp_path, fmt=fmt)

    if fmt == "parquet":
        frame = pl.read_parquet(tmp_path / "device_metrics.parquet")
        assert frame.schema["timestamp"] == pl.Datetime("us", "UTC")
        assert frame.schema["cpu_percent"] == pl.Float64
        schedules = pq.read_table(tmp_path / "site_operating_schedules.parquet")
        assert schedules.schema.field("open_time").type == pa.time64("us")
        assert schedules.column("open_time").to_pylist() == [time(8, 0)]
    else:
        frame = pl.read_csv(tmp_path / "device_metrics.csv", try_parse_dates=True)
        assert frame.schema["cpu_percent"] == pl.Float64
    assert frame.height == 1
    assert frame["timestamp"][0] == DAY
    assert json.loads(frame["extra_metrics"][0])["password"] == "[REDACTED]"


async def test_since_and_until_choose_the_rows_and_a_date_until_covers_its_day(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await store(
        engine,
        [
            DeviceMetrics(
                timestamp=DAY + timedelta(days=offset, hours=11), device_id=f"pos-{offset}"
            )
            for offset in range(-2, 3)
        ],
    )
    await store(engine, [SiteOperatingSchedule(site_id="s", day_of_week=1, is_closed=True)])
    manifest = await export(
        engine, tmp_path, tables=["device-metrics", "site-schedules"], since=DAY.date(),
        until=DAY.date() + timedelta(days=1),
    )  # fmt: skip

    devices = [r["device_id"] for r in read_rows(tmp_path / "device_metrics.parquet")]
    assert devices == ["pos-0", "pos-1"]  # day 0 23:00 and day 1 23:00, oldest first
    # Schedules are configuration: exported whole, whenever they were last changed.
    assert manifest["tables"]["site_operating_schedules"]["rows"] == 1
    assert manifest["tables"]["site_operating_schedules"]["time_filtered"] is False


async def test_an_export_streams_in_constant_memory(engine: AsyncEngine, tmp_path: Path) -> None:
    async def peak_bytes(rows: int, out: Path) -> int:
        await store_metrics(engine, rows)
        tracemalloc.start()
        try:
            manifest = await export(engine, out, tables=["device-metrics"], batch_size=500)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert manifest["tables"]["device_metrics"]["rows"] >= rows

    small = await peak_bytes(1_000, tmp_path / "small")
    large = await peak_bytes(11_000, tmp_path / "large")  # 12,000 rows in all
    # Twelve times the rows, no more memory: without streaming it grows with the rows (10x).
    assert large < 2 * small, (small, large)


async def test_no_connection_is_held_while_files_are_written(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """Each page is read in a short transaction: a slow disk holds no database resources."""
    values = [  # ties on the timestamp: pages must resume after the last row, not skip
        {"timestamp": DAY + timedelta(seconds=i // 7), "device_id": f"pos-{i % 5}"}
        for i in range(1_234)
    ]
    async with engine.begin() as connection:
        await connection.execute(insert(DeviceMetrics), values)

    class Watch:
        held: list[int] = []

        def table_started(self, table: str, total: int) -> None:
            self.held.append(engine.pool.checkedout())  # type: ignore[attr-defined]

        def rows_written(self, table: str, rows: int) -> None:
            self.held.append(engine.pool.checkedout())  # type: ignore[attr-defined]

    request = ExportRequest(
        tables=resolve_tables(["device-metrics"]),
        time_range=time_range_of(None, None),
        format="parquet",
    )
    watch = Watch()
    out = tmp_path / "out"
    await export_tables(engine, request, out, Pseudonymizer(KEY), progress=watch, batch_size=100)
    assert len(watch.held) == 1 + 13
    assert set(watch.held) == {0}
    exported = [row["id"] for row in read_rows(out / "device_metrics.parquet")]
    assert len(exported) == 1_234
    assert len(set(exported)) == 1_234


async def store_metrics(engine: AsyncEngine, rows: int) -> None:
    values = [
        {
            "timestamp": DAY + timedelta(seconds=i),
            "device_id": f"pos-{i % 50}",
            "cpu_percent": 10.0,
            "extra_metrics": {"note": f"sample {i} from {IPV4}", "site_load": 0.5},
        }
        for i in range(rows)
    ]
    async with engine.begin() as connection:
        await connection.execute(insert(DeviceMetrics), values)


# --- simulated rows -------------------------------------------------------------------------


async def test_simulated_rows_stay_out_unless_included_and_the_manifest_counts_them(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await store(engine, [*canary_rows(), *simulated_rows(3)])

    manifest = await export(engine, tmp_path / "real", tables=["device-metrics", "site-schedules"])

    metrics = manifest["tables"]["device_metrics"]
    assert (metrics["rows"], metrics["simulated_rows_left_out"]) == (1, 3)
    schedules = manifest["tables"]["site_operating_schedules"]
    assert (schedules["rows"], schedules["simulated_rows_left_out"]) == (1, 1)
    assert manifest["include_simulated"] is False
    assert manifest["simulated_rows_left_out"] == 4
    assert "4 simulated rows were left out" in manifest["provenance_note"]
    exported = read_rows(tmp_path / "real" / "device_metrics.parquet")
    assert {row["source"] for row in exported} == {"device"}

    everything = await export(
        engine, tmp_path / "all", tables=["device-metrics"], include_simulated=True
    )
    assert everything["tables"]["device_metrics"]["rows"] == 4
    assert everything["simulated_rows_left_out"] == 0
    assert everything["provenance_note"] is None
    exported = read_rows(tmp_path / "all" / "device_metrics.parquet")
    assert sorted(row["source"] for row in exported) == ["device", *["simulated"] * 3]


# --- the API -------------------------------------------------------------------------------


@pytest.fixture
async def keyed_app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings.model_copy(update={"export_key": SecretStr(KEY)}))
    async with LifespanManager(application):
        yield application


@pytest.fixture
async def keyed_client(keyed_app: FastAPI) -> AsyncIterator[AsyncClient]:
    transport = ASGITransport(app=keyed_app, client=("203.0.113.7", 50000))
    async with AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def test_an_admin_gets_a_zip_of_the_files_and_the_export_is_audited(
    keyed_app: FastAPI, keyed_client: AsyncClient
) -> None:
    await store(keyed_app.state.engine, canary_rows())
    headers = await auth_headers(keyed_app, keyed_client, Role.admin)
    response = await keyed_client.post(
        "/api/v1/analytics/exports",
        json={"tables": ["user-activities", "error_logs"], "format": "csv", "until": "2026-11-27"},
        headers=headers,
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert "attachment" in response.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert sorted(archive.namelist()) == ["error_logs.csv", "manifest.json", "user_activities.csv"]
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["key_id"] == Pseudonymizer(KEY).key_id
    frame = pl.read_csv(io.BytesIO(archive.read("user_activities.csv")))
    assert frame["user_id"][0] == Pseudonymizer(KEY).user(RAW_USER)
    everything = b"".join(archive.read(name) for name in archive.namelist()).decode()
    assert EMAIL not in everything
    assert IPV4 not in everything
    assert RAW_USER not in everything

    [entry] = await db_rows(keyed_app, AuditLog, action="export.create")
    assert entry.resource_id == manifest["export_id"] == response.headers["x-export-id"]
    assert entry.ip_address == "203.0.113.7"
    assert entry.details is not None
    assert entry.details["tables"] == ["error_logs", "user_activities"]
    assert entry.details["format"] == "csv"
    assert entry.details["rows"] == {"error_logs": 1, "user_activities": 1}
    assert entry.details["until"] == "2026-11-28T00:00:00+00:00"
    assert KEY not in json.dumps(entry.details)


async def test_a_demo_database_exports_nothing_and_says_everything_is_simulated(
    keyed_app: FastAPI, keyed_client: AsyncClient
) -> None:
    await store(keyed_app.state.engine, simulated_rows(5))
    headers = await auth_headers(keyed_app, keyed_client, Role.admin)
    url = "/api/v1/analytics/exports"

    device_data = {"format": "csv", "tables": ["device-metrics", "site-schedules"]}

    response = await keyed_client.post(url, json=device_data, headers=headers)

    assert response.status_code == 200, response.text
    assert response.headers["x-export-simulated-rows-left-out"] == "6"
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(response.content)).read("manifest.json"))
    assert all(table["rows"] == 0 for table in manifest["tables"].values())
    assert manifest["provenance_note"].startswith("Every row is simulated (6 rows")
    [entry] = await db_rows(keyed_app, AuditLog, action="export.create")
    assert entry.details is not None
    assert entry.details["simulated_rows_left_out"] == 6

    # With every table, the admin's own requests are real: the note names what is simulated.
    await flush(keyed_app)  # those requests' rows are written in the background
    response = await keyed_client.post(url, json={"format": "csv"}, headers=headers)
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(response.content)).read("manifest.json"))
    assert manifest["tables"]["api_request_logs"]["rows"] > 0
    assert manifest["provenance_note"].startswith(
        "6 simulated rows were left out (device_metrics, site_operating_schedules hold only "
        "simulated rows)"
    )

    body = {"format": "csv", "include_simulated": True}
    included = await keyed_client.post(url, json=body, headers=headers)
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(included.content)).read("manifest.json"))
    assert manifest["tables"]["device_metrics"]["rows"] == 5
    assert included.headers["x-export-simulated-rows-left-out"] == "0"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"tables": ["requests", "passwords"]}, "unknown table 'passwords'"),
        ({"format": "xlsx"}, "format"),
        ({"since": "2026-11-20", "until": "2026-11-10"}, "since"),
        ({"since": "last week"}, "neither a date"),
        ({"tables": ["requests"], "key": KEY}, "key"),
    ],
)
async def test_a_bad_export_request_is_refused_with_the_reason(
    keyed_app: FastAPI, keyed_client: AsyncClient, body: dict[str, Any], problem: str
) -> None:
    headers = await auth_headers(keyed_app, keyed_client, Role.admin)
    response = await keyed_client.post("/api/v1/analytics/exports", json=body, headers=headers)
    assert response.status_code == 422
    assert problem in response.text


async def test_exports_are_for_admins_only(keyed_app: FastAPI, keyed_client: AsyncClient) -> None:
    url = "/api/v1/analytics/exports"
    assert (await keyed_client.post(url, json={})).status_code == 401
    for role in (Role.operator, Role.viewer):
        headers = await auth_headers(keyed_app, keyed_client, role)
        assert (await keyed_client.post(url, json={}, headers=headers)).status_code == 403
    assert await db_rows(keyed_app, AuditLog, action="export.create") == []


async def test_without_an_export_key_the_api_refuses_and_says_what_to_set(
    app: FastAPI, client: AsyncClient
) -> None:
    headers = await auth_headers(app, client, Role.admin)
    response = await client.post("/api/v1/analytics/exports", json={}, headers=headers)
    assert response.status_code == 503
    assert "HOMEPOT_EXPORT_KEY" in response.json()["detail"]
    assert await db_rows(app, AuditLog, action="export.create") == []


# --- the command ---------------------------------------------------------------------------

runner = CliRunner()


def homepot(database_url: str, *args: str, key: str | None = KEY) -> Any:
    env = {"COLUMNS": "200", "HOMEPOT_EXPORT_KEY": key or ""}
    return runner.invoke(cli.app, ["--database-url", database_url, "export", *args], env=env)


def seed(database_url: str) -> None:
    async def work() -> None:
        engine = create_engine(database_url)
        try:
            await store(engine, canary_rows())
        finally:
            await engine.dispose()

    asyncio.run(work())


def audit_rows(database_url: str) -> list[AuditLog]:
    async def work() -> list[AuditLog]:
        engine = create_engine(database_url)
        try:
            async with create_session_factory(engine)() as session:
                from sqlalchemy import select

                return list(await session.scalars(select(AuditLog)))
        finally:
            await engine.dispose()

    return asyncio.run(work())


def test_the_command_exports_and_audits_and_keeps_a_full_directory(
    database_url: str, tmp_path: Path
) -> None:
    seed(database_url)
    out = tmp_path / "export"
    result = homepot(
        database_url, "--out", str(out), "--tables", "requests,jobs", "--tables", "errors",
        "--since", "2026-11-10", "--format", "csv",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert file_names(out) == [
        "api_request_logs.csv", "error_logs.csv", "job_outcomes.csv", "manifest.json",
    ]  # fmt: skip
    assert "api_request_logs" in result.stdout
    assert Pseudonymizer(KEY).key_id in result.stdout
    [entry] = [row for row in audit_rows(database_url) if row.action == "export.create"]
    assert entry.user_id is not None
    assert entry.user_id.startswith("cli:")
    assert entry.details is not None
    assert entry.details["rows"]["api_request_logs"] == 2

    again = homepot(database_url, "--out", str(out), "--format", "csv")
    assert again.exit_code == 2
    assert "not empty" in again.output
    forced = homepot(database_url, "--out", str(out), "--format", "csv", "--force")
    assert forced.exit_code == 0, forced.output
    assert len(list(out.iterdir())) == 9  # the eight tables and the manifest


def test_the_command_says_when_everything_is_simulated_and_includes_it_on_request(
    database_url: str, tmp_path: Path
) -> None:
    async def work() -> None:
        engine = create_engine(database_url)
        try:
            await store(engine, simulated_rows(5))
        finally:
            await engine.dispose()

    asyncio.run(work())

    left_out = homepot(database_url, "--out", str(tmp_path / "a"), "--tables", "device-metrics")
    assert left_out.exit_code == 0, left_out.output
    assert "Every row is simulated (5 rows" in left_out.stdout
    assert "--include-simulated" in left_out.stdout
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["tables"]["device_metrics"]["rows"] == 0

    included = homepot(
        database_url, "--out", str(tmp_path / "b"), "--tables", "device-metrics",
        "--include-simulated",
    )  # fmt: skip
    assert included.exit_code == 0, included.output
    assert "Every row is simulated" not in included.stdout
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["tables"]["device_metrics"]["rows"] == 5


def test_the_command_refuses_without_a_key_or_with_unknown_input(
    database_url: str, tmp_path: Path
) -> None:
    out = str(tmp_path / "export")
    no_key = homepot(database_url, "--out", out, key=None)
    assert no_key.exit_code == 2
    assert "HOMEPOT_EXPORT_KEY" in no_key.output
    weak = homepot(database_url, "--out", out, key="short")
    assert weak.exit_code == 2
    assert "at least 16 characters" in weak.output
    unknown = homepot(database_url, "--out", out, "--tables", "users")
    assert unknown.exit_code == 2
    assert "unknown table 'users'" in unknown.output
    bad_format = homepot(database_url, "--out", out, "--format", "xlsx")
    assert bad_format.exit_code == 2
    assert "parquet or csv" in bad_format.output
    assert not (tmp_path / "export").exists()
