"""The `homepot` command and scripts/query-db.sh, on SQLite and PostgreSQL.

The commands run their own event loop (asyncio.run), so these tests are plain functions.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from homepot import cli
from homepot.auth.service import authenticate
from homepot.cli import server as cli_server
from homepot.db import create_engine, create_session_factory
from homepot.dbtools import TABLE_NAMES
from homepot.simulation.demo import DEMO_FLEET_ENV

ROOT = Path(__file__).resolve().parents[1]
QUERY_DB = ROOT / "scripts" / "query-db.sh"
WIDE = {"COLUMNS": "250"}
runner = CliRunner()


def homepot(database_url: str, *args: str) -> Result:
    return runner.invoke(cli.app, ["--database-url", database_url, *args], env=WIDE)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def counts(database_url: str) -> dict[str, int]:
    return dict(json.loads(ok(homepot(database_url, "db", "count", "--json")).stdout))


def rows(database_url: str, table: str, *args: str) -> list[dict[str, Any]]:
    result = ok(homepot(database_url, "db", "show", table, "--json", "--limit", "10000", *args))
    return list(json.loads(result.stdout))


def printed_password(output: str, email: str) -> str:
    match = re.search(rf"{re.escape(email)}\s*│\s*\w+\s*│\s*(\S+)\s*│", output)
    assert match, output
    return match.group(1)


def can_log_in(database_url: str, email: str, password: str) -> bool:
    async def check() -> bool:
        engine = create_engine(database_url)
        try:
            attempt = await authenticate(create_session_factory(engine), email, password)
            return attempt.user is not None
        finally:
            await engine.dispose()

    return asyncio.run(check())


def create_admin(database_url: str, email: str, password: str) -> Result:
    return homepot(database_url, "users", "create-admin", "--email", email, "--password", password)


def create_user(database_url: str, email: str, password: str, *options: str) -> Result:
    return homepot(
        database_url, "users", "create", "--email", email, "--password", password, *options
    )


# --- db init --sample-data -----------------------------------------------------------------


def test_init_with_sample_data_twice_fills_every_table_once(database_url: str) -> None:
    first = ok(homepot(database_url, "db", "init", "--sample-data"))
    assert "Sample data loaded" in first.stdout
    password = printed_password(first.stdout, "admin@homepot.example")
    assert can_log_in(database_url, "admin@homepot.example", password)
    after_first = counts(database_url)
    assert set(after_first) == set(TABLE_NAMES)
    assert len(after_first) == 23
    # message_receipts is bookkeeping of received device messages: none in sample data.
    assert after_first.pop("message_receipts") == 0
    assert all(count > 0 for count in after_first.values()), after_first

    second = ok(homepot(database_url, "db", "init", "--sample-data"))
    assert "already present" in second.stdout
    assert password not in second.stdout
    assert "Password" not in second.stdout
    assert counts(database_url) == {**after_first, "message_receipts": 0}


def test_sample_data_is_consistent_and_recent(database_url: str) -> None:
    ok(homepot(database_url, "db", "init", "--sample-data"))
    now = datetime.now(UTC)

    sites = rows(database_url, "sites")
    assert {site["timezone"] for site in sites} >= {"Europe/London", "America/New_York"}
    devices = {device["device_id"]: device for device in rows(database_url, "devices")}
    # The terminals `homepot demo` then runs live, under the same names.
    assert set(devices) == {f"pos-terminal-{n:04d}" for n in range(1, 13)}
    assert {device["site_id"] for device in devices.values()} == {s["site_id"] for s in sites}

    # Each terminal's current status is the last state it changed to.
    last_state: dict[str, str] = {}
    for change in reversed(rows(database_url, "device_state_history")):  # oldest first
        last_state[change["device_id"]] = change["new_state"]
    for device_id, state in last_state.items():
        assert devices[device_id]["status"] == state, device_id

    outcomes = rows(database_url, "job_outcomes")
    assert "success" in {o["status"] for o in outcomes}
    assert {o["status"] for o in outcomes} <= {"success", "failed", "timeout", "cancelled"}
    assert {o["job_id"] for o in outcomes} <= {job["job_id"] for job in rows(database_url, "jobs")}
    # Every finished execution has its one outcome, with the same status; a finished job has
    # no unfinished execution left.
    executions = rows(database_url, "job_executions")
    assert {(o["job_id"], o["device_id"]): o["status"] for o in outcomes} == {
        (e["job_id"], e["device_id"]): e["status"] for e in executions if e["finished_at"]
    }
    for job in rows(database_url, "jobs"):
        statuses = {e["status"] for e in executions if e["job_id"] == job["job_id"]}
        assert statuses, job["job_id"]
        if job["status"] in ("completed", "failed", "cancelled"):
            assert statuses <= {"success", "failed", "timeout", "cancelled"}, job["job_id"]
    errors = rows(database_url, "error_logs")
    assert errors
    assert {e["device_id"] for e in errors} <= set(devices)
    assert all(e["resolved_at"] is not None for e in errors if e["resolved"])

    schedules = rows(database_url, "site_operating_schedules")
    assert Counter(s["site_id"] for s in schedules) == {s["site_id"]: 7 for s in sites}

    # Two days of history up to now, and every terminal's last 24 hours without a gap a
    # chart would show (a crash silences a terminal for minutes, not an hour).
    metrics = rows(database_url, "device_metrics")
    stamps = [datetime.fromisoformat(m["timestamp"]) for m in metrics]
    assert all(s.tzinfo is not None and now - timedelta(days=2, hours=1) < s <= now for s in stamps)
    assert min(stamps) < now - timedelta(days=1, hours=23)
    for device_id in devices:
        day = sorted(
            datetime.fromisoformat(m["timestamp"])
            for m in metrics
            if m["device_id"] == device_id
            and datetime.fromisoformat(m["timestamp"]) > now - timedelta(hours=24)
        )
        edges = [now - timedelta(hours=24), *day, now]
        assert max(b - a for a, b in zip(edges, edges[1:], strict=False)) < timedelta(hours=1)


def test_sample_data_leaves_an_existing_user_and_real_rows_alone(database_url: str) -> None:
    ok(create_admin(database_url, "admin@homepot.example", "my-own-password"))
    ok(create_user(database_url, "real@example.com", "real-password", "--role", "operator"))

    result = ok(homepot(database_url, "db", "init", "--sample-data"))

    assert "Sample data loaded" in result.stdout  # tables with real rows still get samples
    assert not re.search(r"admin@homepot\.example\s*│", result.stdout)  # its password not shown
    assert can_log_in(database_url, "admin@homepot.example", "my-own-password")
    assert counts(database_url)["users"] == 4
    assert all(
        count > 0 for name, count in counts(database_url).items() if name != "message_receipts"
    )


# --- db count / db show --------------------------------------------------------------------


def test_db_count_renders_all_23_tables_with_their_groups(database_url: str) -> None:
    ok(homepot(database_url, "db", "init", "--sample-data"))
    output = ok(homepot(database_url, "db", "count")).stdout
    expected = counts(database_url)
    for table, count in expected.items():
        assert re.search(rf"│ {table}\s*│\s*{count:,} │", output), table
    assert "23 tables" in output
    for group in ("core", "analytics", "AI-focused", "operational", "insights", "rollups"):
        assert group in output
    assert re.search(r"operational\s*│ job_executions\s*│", output)


def test_db_show_filters_with_bound_typed_values_and_limits(database_url: str) -> None:
    ok(homepot(database_url, "db", "init", "--sample-data"))

    terminal_1 = rows(database_url, "device_metrics", "--where", "device_id=pos-terminal-0001")
    assert terminal_1
    assert {m["device_id"] for m in terminal_1} == {"pos-terminal-0001"}

    newest = rows(database_url, "device_metrics", "--limit", "5")
    assert len(newest) == 5
    stamps = [m["timestamp"] for m in newest]
    assert stamps == sorted(stamps, reverse=True)
    assert stamps[0] == max(m["timestamp"] for m in rows(database_url, "device_metrics"))

    errors = rows(database_url, "error_logs")
    kinds = Counter((e["category"], e["severity"]) for e in errors)
    (category, severity), count = kinds.most_common()[-1]
    matching = rows(
        database_url, "error_logs", "-w", f"category={category}", "-w", f"severity={severity}"
    )
    assert len(matching) == count < len(errors) or len(kinds) == 1
    assert {(e["category"], e["severity"]) for e in matching} == {(category, severity)}
    resolved = rows(database_url, "error_logs", "--where", "resolved=true")
    assert resolved
    assert all(e["resolved"] is True for e in resolved)
    accepted = rows(database_url, "api_request_logs", "--where", "status_code=202")
    assert accepted
    assert {r["status_code"] for r in accepted} == {202}
    in_site_2 = rows(database_url, "devices", "--where", "site_id=site-002")
    assert sorted(d["device_id"] for d in in_site_2) == [
        "pos-terminal-0002",
        "pos-terminal-0005",
        "pos-terminal-0008",
        "pos-terminal-0011",
    ]

    table = ok(homepot(database_url, "db", "show", "devices", "-w", "site_id=site-002")).stdout
    assert "pos-terminal-0005" in table
    assert "devices where site_id=site-002: 4 rows" in table
    assert "pos-terminal-0001" not in table


def test_db_show_hides_password_hashes(database_url: str) -> None:
    ok(create_admin(database_url, "a@example.com", "long-enough"))
    (user,) = rows(database_url, "users")
    assert user["email"] == "a@example.com"
    assert user["password_hash"] == "[REDACTED]"
    assert "argon2" not in ok(homepot(database_url, "db", "show", "users")).stdout


def test_db_show_unknown_table_or_column_is_a_usage_error(database_url: str) -> None:
    unknown_table = homepot(database_url, "db", "show", "device_metric")
    assert unknown_table.exit_code == 2
    assert "unknown table 'device_metric'" in unknown_table.stderr
    for table in TABLE_NAMES:
        assert table in unknown_table.stderr

    unknown_column = homepot(database_url, "db", "show", "devices", "--where", "colour=red")
    assert unknown_column.exit_code == 2
    assert "no column 'colour'" in unknown_column.stderr
    assert "device_id" in unknown_column.stderr
    assert "firmware_version" in unknown_column.stderr

    for where, message in [
        ("status_code=fast", "expects an integer"),
        ("query_params=x", "holds JSON"),
        ("status_code", "not of the form column=value"),
    ]:
        result = homepot(database_url, "db", "show", "api_request_logs", "--where", where)
        assert result.exit_code == 2, where
        assert message in result.stderr
    bad_enum = homepot(database_url, "db", "show", "devices", "--where", "status=broken")
    assert bad_enum.exit_code == 2
    assert "online, offline" in bad_enum.stderr


def test_where_values_are_never_spliced_into_sql(database_url: str) -> None:
    ok(homepot(database_url, "db", "init", "--sample-data"))
    before = counts(database_url)
    for value in ["x' OR '1'='1", "pos-terminal-001'; DROP TABLE devices; --"]:
        assert rows(database_url, "devices", "--where", f"device_id={value}") == []
        assert rows(database_url, "devices", "--where", f"name={value}") == []
    assert counts(database_url) == before
    assert len(rows(database_url, "devices")) == before["devices"]


def test_db_count_on_a_database_without_tables_says_to_run_init(tmp_path: Path) -> None:
    result = homepot(f"sqlite:///{tmp_path / 'empty.db'}", "db", "count")
    assert result.exit_code == 1
    assert "homepot db init" in result.stderr
    assert "Traceback" not in result.output


def test_an_unsupported_database_url_is_refused_without_showing_its_password() -> None:
    result = runner.invoke(cli.app, ["--database-url", "mysql://app:hunter2@db/x", "db", "count"])
    assert result.exit_code == 2
    assert "unsupported database URL mysql://app:***@db/x" in result.stderr
    assert "hunter2" not in result.output
    assert "postgresql://" in result.stderr


# --- users ---------------------------------------------------------------------------------


def test_users_create_admin_is_idempotent(database_url: str) -> None:
    args = ["users", "create-admin", "--email", "Boss@Example.com"]
    first = ok(homepot(database_url, *args, "--password", "first-password"))
    assert "Created admin boss@example.com" in first.stdout

    again = ok(homepot(database_url, *args, "--password", "another-password"))
    assert "already exists" in again.stdout
    assert counts(database_url)["users"] == 1
    assert can_log_in(database_url, "boss@example.com", "first-password")
    assert not can_log_in(database_url, "boss@example.com", "another-password")
    (user,) = rows(database_url, "users")
    assert user["role"] == "admin"


def test_users_create_refuses_a_taken_email_and_bad_input(database_url: str) -> None:
    ok(create_user(database_url, "op@example.com", "op-password", "--role", "operator"))
    assert can_log_in(database_url, "op@example.com", "op-password")

    duplicate = create_user(database_url, "op@example.com", "op-password", "--role", "viewer")
    assert duplicate.exit_code == 1
    assert "op@example.com already exists" in duplicate.stderr

    short = create_user(database_url, "v@example.com", "short")
    assert short.exit_code == 2
    assert "at least 8 characters" in short.stderr
    bad_email = create_user(database_url, "not-an-email", "long-enough")
    assert bad_email.exit_code == 2
    assert "email" in bad_email.stderr
    bad_role = create_user(database_url, "r@example.com", "long-enough", "--role", "root")
    assert bad_role.exit_code == 2
    assert [u["email"] for u in rows(database_url, "users")] == ["op@example.com"]

    # create-admin for an e-mail that belongs to a non-admin says so and changes nothing.
    clash = create_admin(database_url, "op@example.com", "op-password")
    assert clash.exit_code == 1
    assert "role operator" in clash.stderr
    assert rows(database_url, "users")[0]["role"] == "operator"


# --- serve and demo ------------------------------------------------------------------------


def test_serve_runs_the_app_factory_on_the_chosen_database(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.delenv("HOMEPOT_DATABASE_URL", raising=False)  # restored after the test
    monkeypatch.setattr("uvicorn.run", lambda target, **options: calls.append((target, options)))

    ok(homepot(database_url, "serve", "--host", "0.0.0.0", "--port", "9001"))

    ((target, options),) = calls
    assert target == "homepot.main:create_app"
    assert options["factory"] is True
    assert (options["host"], options["port"], options["reload"]) == ("0.0.0.0", 9001, False)
    assert os.environ["HOMEPOT_DATABASE_URL"] == database_url


def test_demo_prepares_data_and_an_admin_then_serves(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[tuple[str, int]] = []
    monkeypatch.setattr(
        cli_server, "_serve", lambda settings, host, port, reload: served.append((host, port))
    )
    # `homepot demo` hands its fleet to the server's app factory in this process's
    # environment; set here, it is removed again after the test instead of outliving it in
    # the worker process and reaching whatever that runs next.
    monkeypatch.setenv(DEMO_FLEET_ENV, "")

    first = ok(homepot(database_url, "demo", "--port", "8765"))
    assert served == [("127.0.0.1", 8765)]
    assert "http://127.0.0.1:8765/docs" in first.stdout
    password = printed_password(first.stdout, "admin@homepot.example")
    assert f"password {password}" in first.stdout
    assert "/api/v1/auth/token" in first.stdout
    assert can_log_in(database_url, "admin@homepot.example", password)
    assert all(
        count > 0 for name, count in counts(database_url).items() if name != "message_receipts"
    )

    again = ok(homepot(database_url, "demo", "--port", "8765"))
    assert password not in again.stdout
    assert "printed when it was created" in again.stdout
    assert can_log_in(database_url, "admin@homepot.example", password)

    # The live terminals are those of the history, so their number cannot change.
    other_size = homepot(database_url, "demo", "--sites", "4", "--devices", "8")
    assert other_size.exit_code == 2
    assert "--sites 3 --devices 12" in other_size.stderr
    assert served == [("127.0.0.1", 8765)] * 2


# --- scripts/query-db.sh ------------------------------------------------------------------


def query_db(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **WIDE, "HOMEPOT_DATABASE_URL": database_url}
    return subprocess.run(
        [str(QUERY_DB), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_query_db_script_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    ok(homepot(url, "db", "init", "--sample-data"))
    expected = counts(url)

    count = query_db(url, "count")
    assert count.returncode == 0, count.stderr
    for table, rows_in_table in expected.items():
        assert re.search(rf"│ {table}\s*│\s*{rows_in_table:,} │", count.stdout), table

    metrics = query_db(url, "device_metrics", "5")
    assert metrics.returncode == 0, metrics.stderr
    assert "device_metrics: 5 rows, newest first" in metrics.stdout
    assert "pos-terminal-" in metrics.stdout

    default_limit = query_db(url, "device_metrics")
    assert "device_metrics: 20 rows" in default_limit.stdout


def test_query_db_script_explains_its_usage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    ok(homepot(url, "db", "init"))
    for args in [(), ("devices", "lots"), ("devices", "5", "extra"), ("count", "extra")]:
        result = query_db(url, *args)
        assert result.returncode == 2, args
        assert "Usage:" in result.stderr
    unknown = query_db(url, "no_such_table")
    assert unknown.returncode == 2
    assert "site_operating_schedules" in unknown.stderr
    assert query_db(url, "--help").returncode == 0


def test_query_db_script_reads_the_database_url_on_both_backends(database_url: str) -> None:
    ok(homepot(database_url, "db", "init", "--sample-data"))
    result = query_db(database_url, "count")
    assert result.returncode == 0, result.stderr
    assert re.search(r"│ device_metrics\s*│\s*[1-9]", result.stdout)
    schedules = query_db(database_url, "site_operating_schedules", "7")
    assert "site-001" in schedules.stdout


# --- help texts ----------------------------------------------------------------------------


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command's path, the groups' too (Typer's click may be its own copy)."""
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


def test_every_help_text_reads_as_paragraphs() -> None:
    """A description breaks its lines only where the next word would not fit (at 100
    columns), never mid-sentence as a docstring's own line breaks would."""
    width = 100
    for path in _commands(typer.main.get_command(cli.app)):
        output = runner.invoke(cli.app, [*path, "--help"], env={"COLUMNS": str(width)}).stdout
        description = output.split("Usage:", 1)[1].split("\n", 1)[1].split("╭", 1)[0]
        lines = [line.strip() for line in description.splitlines()]
        for line, following in zip(lines, lines[1:], strict=False):
            if line and following:
                next_word = following.split()[0]
                assert len(line) + 1 + len(next_word) > width - 4, (path, line, following)
