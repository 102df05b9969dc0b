"""How ``homepot quality`` and ``homepot validate`` print their results (rich tables)."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from homepot.quality.service import QualityReport, TableQuality
from homepot.quality.validate import ValidationResult

_PASS = Text("pass", style="bold green")
_FAIL = Text("FAIL", style="bold red")


def _hours(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 60:.0f} min"
    if value < 48:
        return f"{value:.1f} h"
    return f"{value / 24:.1f} d"


def _worst_null(table: TableQuality) -> Text:
    """The highest null rate among the gated columns; else, dimmed, among all columns."""
    gated = {name: table.null_rates[name] for name in table.required_columns}
    rates = gated or table.null_rates
    if not rates or not table.rows:
        return Text("-")
    column = max(rates, key=lambda name: rates[name])
    return Text(f"{rates[column]:.1%} {column}", style="" if gated else "dim")


def quality_table(report: QualityReport) -> Table:
    view = Table(
        title=f"Data quality of the analytics tables ({report.elapsed_ms:,.0f} ms)",
        caption=f"Target {report.thresholds.min_rows:,} rows a table; newest row at most "
        f"{report.thresholds.max_staleness_hours:g} h old; required columns at most "
        f"{report.thresholds.max_null_rate:.0%} null (dimmed: nullable by design, not "
        "gated); no out-of-range values, no duplicates.",
    )
    for heading, justify in (
        ("Table", "left"),
        ("Rows", "right"),
        ("Simulated, left out", "right"),
        ("Target", "center"),
        ("Span", "right"),
        ("Freshness", "right"),
        ("Worst null rate", "left"),
        ("Out of range", "right"),
        ("Duplicates", "right"),
        ("Verdict", "center"),
    ):
        view.add_column(heading, justify=justify)  # type: ignore[arg-type]
    for table in report.tables:
        out_of_range = sum(table.out_of_range.values()) + table.future_timestamps
        view.add_row(
            table.table,
            f"{table.rows:,}",
            "included" if report.include_simulated else f"{table.simulated_rows_left_out:,}",
            Text("met", style="green") if table.target_met else Text("missed", style="red"),
            _hours(table.span_hours),
            _hours(table.freshness_hours) if table.freshness_hours is not None else "n/a",
            _worst_null(table),
            f"{out_of_range:,}",
            f"{table.duplicates:,}",
            _PASS if table.passed else _FAIL,
        )
    return view


def quality_details(report: QualityReport) -> RenderableType | None:
    """The terminals that stopped reporting (the problems go to the failure message)."""
    lines: list[Text] = []
    stopped = [device for table in report.tables for device in table.stopped_devices]
    if stopped:
        lines.append(
            Text(
                f"{len(stopped)} terminal(s) stopped reporting while others of their site "
                f"did (silent > {report.thresholds.stopped_after_minutes:g} min):",
                style="yellow",
            )
        )
        for device in stopped:
            lines.append(
                Text(
                    f"  {device.device_id} (site {device.site_id or 'unknown'}): last sample "
                    f"{device.last_sample_at:%Y-%m-%d %H:%M} UTC, silent "
                    f"{device.silent_minutes:,.0f} min"
                )
            )
    return Group(*lines) if lines else None


def validation_table(result: ValidationResult) -> Table:
    view = Table(
        title=f"What each analytics stream collected since {result.since:%Y-%m-%d %H:%M} UTC",
        caption="Site schedules are configuration: all rows are counted.",
    )
    for heading, justify in (
        ("Stream", "left"),
        ("Table", "left"),
        ("Rows", "right"),
        ("Newest", "left"),
        ("Status", "center"),
    ):
        view.add_column(heading, justify=justify)  # type: ignore[arg-type]
    for count in result.streams:
        view.add_row(
            count.stream.name,
            count.stream.table,
            count.shown_rows,
            f"{count.newest:%Y-%m-%d %H:%M:%S}" if count.newest else "-",
            Text("OK", style="bold green") if count.ok else Text("MISSING", style="bold red"),
        )
    return view


def calls_table(result: ValidationResult) -> Table:
    view = Table(title="Test API calls")
    for heading in ("Call", "Status", "Expected"):
        view.add_column(heading)
    for call in result.calls:
        view.add_row(
            f"{call.method} {call.path}",
            Text(str(call.status_code), style="green" if call.ok else "red"),
            str(call.expected),
        )
    return view
