"""Pagination, the one helper every list endpoint uses.

- **Keyset pages** (the analytics streams, audit log, device history): newest first over a
  (time, id) sort key. A page ends on some row; the next page starts strictly after that row's
  ``(time, id)`` in descending order. Unlike an offset, this stays correct while new rows
  arrive at the top and costs one index seek however deep the client pages. The position
  travels as an opaque cursor: base64url of the JSON ``[time, id]``.
- **Offset pages** (sites, devices, jobs): these lists are small and ordered by a stable key,
  so a total count and an offset are what a management screen needs.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, Field, PlainValidator, WithJsonSchema
from sqlalchemy import ColumnElement, Select, UnaryExpression, func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from homepot.kit.query import StrictQuery

ItemT = TypeVar("ItemT")

_MAX_CURSOR_LENGTH = 200


@dataclass(frozen=True)
class Position:
    """Where a page ended: the sort key of its last row."""

    time: datetime
    id: int


def encode_cursor(position: Position) -> str:
    raw = json.dumps([position.time.isoformat(), position.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(value: Any) -> Position:
    """The position in a cursor made by :func:`encode_cursor`; ValueError when malformed."""
    if isinstance(value, Position):
        return value
    problem = "it is not a cursor returned as next_cursor by this endpoint"
    if not isinstance(value, str) or not value or len(value) > _MAX_CURSOR_LENGTH:
        raise ValueError(f"malformed cursor: {problem}")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        time_text, row_id = json.loads(raw)
        moment = datetime.fromisoformat(time_text)
        if moment.tzinfo is None:
            raise ValueError("naive time")
        moment = moment.astimezone(UTC)
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, OverflowError):
        raise ValueError(f"malformed cursor: {problem}") from None
    if type(row_id) is not int or not 0 <= row_id < 2**63:
        raise ValueError(f"malformed cursor: {problem}")
    return Position(time=moment, id=row_id)


Cursor = Annotated[
    Position,
    PlainValidator(decode_cursor),
    WithJsonSchema(
        {
            "type": "string",
            "description": "The next_cursor of the previous page; omit it for the first page",
        }
    ),
]
"""A query parameter type: an opaque cursor, decoded (or refused with a message) on input."""


class CursorPage(BaseModel, Generic[ItemT]):
    """One page, newest first, and the cursor of the next (null on the last page)."""

    items: list[ItemT]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null when this is the last page"
    )


@dataclass(frozen=True)
class Keyset:
    """A descending sort on ``(time_column, id_column)`` and the conditions to page through it."""

    time_column: InstrumentedAttribute[datetime]
    id_column: InstrumentedAttribute[int]

    def order_by(self) -> tuple[UnaryExpression[Any], UnaryExpression[Any]]:
        return self.time_column.desc(), self.id_column.desc()

    def after(self, position: Position) -> ColumnElement[bool]:
        """Rows that sort after ``position``: older, or as old with a smaller id."""
        # A row-value comparison, so that both backends can answer it with one index range.
        return tuple_(self.time_column, self.id_column) < tuple_(
            literal(position.time, self.time_column.type),
            literal(position.id, self.id_column.type),
        )

    def position_of(self, row: Any) -> Position:
        return Position(
            time=getattr(row, self.time_column.key), id=getattr(row, self.id_column.key)
        )

    def page(self, rows: Sequence[Any], limit: int) -> tuple[list[Any], str | None]:
        """The first ``limit`` rows and the cursor after them, given up to ``limit + 1`` rows."""
        items = list(rows[:limit])
        has_more = len(rows) > limit
        return items, encode_cursor(self.position_of(items[-1])) if has_more and items else None


# --- offset pages ---------------------------------------------------------------------------
OFFSET_DEFAULT_LIMIT = 50
OFFSET_MAX_LIMIT = 500
# Within a 32-bit integer, which every backend accepts for OFFSET.
MAX_OFFSET = 2**31 - 1


@dataclass(frozen=True)
class PageParams:
    limit: int = OFFSET_DEFAULT_LIMIT
    offset: int = 0


class ListQuery(StrictQuery):
    """``limit`` and ``offset``; each list endpoint's query model adds its filters."""

    limit: int = Field(
        default=OFFSET_DEFAULT_LIMIT,
        ge=1,
        le=OFFSET_MAX_LIMIT,
        description=f"Items per page (at most {OFFSET_MAX_LIMIT})",
    )
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET, description="Items to skip")

    @property
    def page(self) -> PageParams:
        return PageParams(limit=self.limit, offset=self.offset)


class Page(BaseModel, Generic[ItemT]):
    items: list[ItemT]
    total: int = Field(description="Items matching the filters, over all pages")
    limit: int
    offset: int

    @classmethod
    def of(cls, items: Sequence[Any], total: int, params: PageParams) -> Page[ItemT]:
        return cls(items=list(items), total=total, limit=params.limit, offset=params.offset)


async def fetch_page(
    session: AsyncSession, statement: Select[Any], params: PageParams
) -> tuple[Sequence[Any], int]:
    """One page of ``statement`` (which must be ordered) and the total number of matches."""
    total = await session.scalar(
        select(func.count()).select_from(statement.order_by(None).subquery())
    )
    items = (await session.scalars(statement.limit(params.limit).offset(params.offset))).all()
    return items, int(total or 0)
