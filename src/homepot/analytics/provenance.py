"""Reading analytics rows by provenance, for whatever must not take simulated data for real.

Exports, the quality gate and model training read real rows only (``source = device``) unless
asked to include the simulation's, and tell the person how many simulated rows they left out,
plainly so when there was nothing else.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, FromClause

from homepot.analytics.models import DEVICE, SIMULATED

INCLUDE_FLAG = "--include-simulated (API: include_simulated=true)"


def real_rows_only(table: FromClause, include_simulated: bool) -> list[ColumnElement[bool]]:
    """The WHERE conditions (none, or ``source = device``) choosing the rows to read."""
    return [] if include_simulated else [table.c.source == DEVICE]


def simulated_rows(table: FromClause) -> ColumnElement[bool]:
    return table.c.source == SIMULATED


def left_out_note(kept: int, left_out: int, *, done: str, doing: str) -> str | None:
    """What a person must know about the simulated rows left out; None when there were none.

    ``done`` and ``doing`` name the work: ("exported", "export"), ("judged", "judge").
    """
    if not left_out:
        return None
    if not kept:
        return (
            f"Every row is simulated ({left_out:,} rows of the simulation: the demo, backfill, "
            f"sample data or simulated terminals), so nothing real was {done}. Pass "
            f"{INCLUDE_FLAG} to {doing} the simulated rows."
        )
    return f"{left_out:,} simulated rows were left out; pass {INCLUDE_FLAG} to {doing} them too."
