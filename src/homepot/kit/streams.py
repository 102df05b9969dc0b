"""Reading a table as a stream: time-ranged, filtered, keyset-paged, newest first.

Each stream is a small :class:`Stream` description (table, parameters, row schema, filters,
sort key); one query builder, :func:`read_page`, serves them all. A stream's filters must
match its query parameters name for name, which is checked when it is defined. The analytics
streams, the audit log and the insights' anomalies are read this way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, Field, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from homepot.db import Base
from homepot.kit.pagination import Cursor, CursorPage, Keyset
from homepot.kit.query import StrictQuery
from homepot.kit.timeranges import TimeBound, TimeRange

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class StreamQuery(StrictQuery):
    """The parameters every analytics read endpoint takes; subclasses add the filters."""

    common_parameters: ClassVar[tuple[str, ...]] = ("start_date", "end_date", "limit", "cursor")

    start_date: TimeBound | None = Field(
        default=None,
        description="Only rows at or after this time. A date (2025-12-01) means 00:00 UTC "
        "of that day; a datetime without an offset is UTC.",
    )
    end_date: TimeBound | None = Field(
        default=None,
        description="Only rows up to this time. A date (2025-12-05) includes that whole UTC "
        "day; a datetime is inclusive.",
    )
    limit: int = Field(
        default=DEFAULT_LIMIT,
        ge=1,
        le=MAX_LIMIT,
        description=f"Rows per page, newest first (1 to {MAX_LIMIT})",
    )
    cursor: Cursor | None = Field(
        default=None,
        description="The next_cursor of the previous page, to read the page after it",
    )

    @classmethod
    def filter_names(cls) -> tuple[str, ...]:
        return tuple(name for name in cls.model_fields if name not in cls.common_parameters)

    @model_validator(mode="after")
    def _nonempty_time_range(self) -> StreamQuery:
        try:
            TimeRange.between(self.start_date, self.end_date)
        except ValueError as exc:
            raise PydanticCustomError("time_range", "{problem}", {"problem": str(exc)}) from None
        return self

    @property
    def time_range(self) -> TimeRange:
        return TimeRange.between(self.start_date, self.end_date)

    def filters(self) -> dict[str, Any]:
        """The filters given, by name (absent ones left out)."""
        return {
            name: value
            for name in self.filter_names()
            if (value := getattr(self, name)) is not None
        }


ReadT = TypeVar("ReadT", bound=BaseModel)
Filter = Callable[[Any], ColumnElement[bool]]


def equals(column: InstrumentedAttribute[Any]) -> Filter:
    return lambda value: column == value


def at_least(column: InstrumentedAttribute[Any]) -> Filter:
    return lambda value: column >= value


def any_of(column: InstrumentedAttribute[Any]) -> Filter:
    return lambda values: column.in_(values)


@dataclass(frozen=True)
class Stream(Generic[ReadT]):
    """How one table is read as a stream: its query parameters, row schema and filters."""

    model: type[Base]
    query: type[StreamQuery]
    read: type[ReadT]
    filters: Mapping[str, Filter]
    time_column: str = "timestamp"
    id_column: str = "id"

    def __post_init__(self) -> None:
        parameters = set(self.query.filter_names())
        if parameters != set(self.filters):
            raise TypeError(
                f"{self.model.__tablename__}: query parameters "
                f"{sorted(parameters - set(self.filters))} have no filter and filters "
                f"{sorted(set(self.filters) - parameters)} have no query parameter"
            )

    @property
    def keyset(self) -> Keyset:
        time_column: InstrumentedAttribute[datetime] = getattr(self.model, self.time_column)
        id_column: InstrumentedAttribute[int] = getattr(self.model, self.id_column)
        return Keyset(time_column, id_column)


async def read_page(
    session: AsyncSession, stream: Stream[ReadT], params: StreamQuery
) -> CursorPage[ReadT]:
    """One page of ``stream`` matching ``params``, newest first."""
    if not isinstance(params, stream.query):
        raise TypeError(f"{stream.model.__tablename__} is read with {stream.query.__name__}")
    keyset = stream.keyset
    statement = select(stream.model)
    for name, value in params.filters().items():
        statement = statement.where(stream.filters[name](value))
    time_range = params.time_range
    if time_range.start is not None:
        statement = statement.where(keyset.time_column >= time_range.start)
    if time_range.end is not None:
        statement = statement.where(
            keyset.time_column <= time_range.end
            if time_range.end_inclusive
            else keyset.time_column < time_range.end
        )
    if params.cursor is not None:
        statement = statement.where(keyset.after(params.cursor))
    statement = statement.order_by(*keyset.order_by()).limit(params.limit + 1)
    rows: Sequence[Any] = (await session.scalars(statement)).all()
    items, next_cursor = keyset.page(rows, params.limit)
    return CursorPage(
        items=[stream.read.model_validate(row) for row in items], next_cursor=next_cursor
    )
