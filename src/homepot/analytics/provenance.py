"""Reading analytics rows by provenance, for whatever must not take simulated data for real.

Exports, the quality gate and model training read real rows only (``source = device``) unless
asked to include the simulation's, and tell the person how many simulated rows they left out,
plainly so when there was nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import ColumnElement, FromClause

from homepot.analytics.models import DEVICE, SIMULATED

INCLUDE_FLAG = "--include-simulated (API: include_simulated=true)"


def real_rows_only(table: FromClause, include_simulated: bool) -> list[ColumnElement[bool]]:
    """The WHERE conditions (none, or ``source = device``) choosing the rows to read."""
    return [] if include_simulated else [table.c.source == DEVICE]


def simulated_rows(table: FromClause) -> ColumnElement[bool]:
    return table.c.source == SIMULATED


def left_out_note(by_table: Mapping[str, tuple[int, int]], *, done: str, doing: str) -> str | None:
    """What a person must know about the simulated rows left out; None when there were none.

    ``by_table`` maps each table to (rows kept, simulated rows left out); ``done`` and
    ``doing`` name the work: ("exported", "export"), ("judged", "judge"). Tables holding only
    simulated rows are named, so that an empty result is never mistaken for no data.
    """
    kept = sum(counts[0] for counts in by_table.values())
    left_out = sum(counts[1] for counts in by_table.values())
    if not left_out:
        return None
    if not kept:
        return (
            f"Every row is simulated ({left_out:,} rows of the simulation: the demo, backfill, "
            f"sample data or simulated terminals), so nothing real was {done}. Pass "
            f"{INCLUDE_FLAG} to {doing} the simulated rows."
        )
    only_simulated = [name for name, (rows, skipped) in by_table.items() if skipped and not rows]
    where = f" ({', '.join(only_simulated)} hold only simulated rows)" if only_simulated else ""
    rows = "1 simulated row was" if left_out == 1 else f"{left_out:,} simulated rows were"
    return f"{rows} left out{where}; pass {INCLUDE_FLAG} to {doing} them too."
