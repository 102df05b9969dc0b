"""Limit/offset pages for the core list endpoints (sites, devices, jobs).

The analytics streams page by keyset instead; these lists are small and ordered by a stable
key, so a total count and an offset are what a management screen needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.kit.query import StrictQuery

ItemT = TypeVar("ItemT")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# Within a 32-bit integer, which every backend accepts for OFFSET.
MAX_OFFSET = 2**31 - 1


@dataclass(frozen=True)
class PageParams:
    limit: int = DEFAULT_LIMIT
    offset: int = 0


class ListQuery(StrictQuery):
    """``limit`` and ``offset``; each list endpoint's query model adds its filters."""

    limit: int = Field(
        default=DEFAULT_LIMIT,
        ge=1,
        le=MAX_LIMIT,
        description=f"Items per page (at most {MAX_LIMIT})",
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
