from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    computed_field,
    field_validator,
    model_validator,
)

from homepot.kit.jsonlimits import JsonObject, StoredJsonObject
from homepot.kit.localtime import LocalTime
from homepot.kit.pagination import ListQuery

PUBLIC_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{1,62}$"
_PUBLIC_ID = re.compile(PUBLIC_ID_PATTERN)
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def public_id_check(kind: str, example: str) -> Callable[[str], str]:
    """Validates a public string id (``site-001``, ``pos-terminal-001``) readably."""

    def check(value: str) -> str:
        if not _PUBLIC_ID.match(value):
            raise ValueError(
                f"{kind} must be 2-63 characters of lowercase letters, digits, '.', '_' or '-',"
                f" starting with a letter or digit (e.g. {example}); got {value!r}"
            )
        return value

    return check


SiteId = Annotated[
    str, AfterValidator(public_id_check("site_id", "site-001")), Field(examples=["site-001"])
]


def _check_config_keys(value: JsonObject) -> JsonObject:
    for key in value:
        if not key or len(key) > 128:
            raise ValueError(f"config keys must be 1-128 characters; got {key!r}")
    return value


ConfigObject = Annotated[JsonObject, AfterValidator(_check_config_keys)]


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r}: use an IANA name such as Europe/London or UTC"
        ) from None
    return value


TimeZoneName = Annotated[
    str, Field(max_length=64, examples=["Europe/London"]), AfterValidator(_check_timezone)
]


class SiteListQuery(ListQuery):
    q: str | None = Field(
        default=None, max_length=200, description="Only sites whose name contains this (any case)"
    )


class SiteCreate(BaseModel):
    # JSON values only: NaN and Infinity cannot be stored as JSON.
    model_config = ConfigDict(allow_inf_nan=False)

    site_id: SiteId
    name: str = Field(min_length=1, max_length=200)
    timezone: TimeZoneName = "UTC"
    address: str | None = Field(default=None, max_length=500)
    config: ConfigObject = Field(default_factory=dict)
    simulated: bool = Field(
        default=False,
        description="A store of the simulation: its schedules and configuration history are "
        "recorded with source 'simulated'. Set once, at creation.",
    )


class SiteUpdate(BaseModel):
    """Fields to change; omitted fields keep their value."""

    # JSON values only: NaN and Infinity cannot be stored as JSON.
    model_config = ConfigDict(allow_inf_nan=False)

    name: str | None = Field(default=None, min_length=1, max_length=200)
    timezone: TimeZoneName | None = None
    address: str | None = Field(default=None, max_length=500)
    config: ConfigObject | None = Field(
        default=None,
        description=(
            "A merge patch of the site's config: each key given replaces that key, a key set to"
            " null is removed, keys not given are kept. Every changed key is recorded in"
            " configuration_history."
        ),
    )
    change_reason: str | None = Field(
        default=None, max_length=1000, description="Why the config changes (stored in history)"
    )

    @field_validator("name", "timezone", "config")
    @classmethod
    def _refuse_null(cls, value: Any) -> Any:
        # Runs only for values the client sent: an omitted field keeps its value.
        if value is None:
            raise ValueError("may be omitted but not null")
        return value

    @model_validator(mode="after")
    def _reason_needs_config(self) -> Self:
        if self.change_reason is not None and self.config is None:
            raise ValueError("change_reason explains a config change; send it with config")
        return self


class SiteRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    site_id: str
    name: str
    timezone: str
    address: str | None
    config: StoredJsonObject
    simulated: bool = Field(description="A store of the simulation, not a real one")
    created_at: datetime
    updated_at: datetime


class ScheduleWrite(BaseModel):
    """One weekday's hours. Times are local to the site; a day cannot span midnight."""

    # JSON values only: NaN and Infinity cannot be stored as JSON.
    model_config = ConfigDict(allow_inf_nan=False)

    open_time: LocalTime | None = None
    close_time: LocalTime | None = None
    is_closed: bool = False
    is_maintenance_window: bool = False
    expected_transaction_volume: int | None = Field(default=None, ge=0, le=2**31 - 1)
    peak_hours_start: LocalTime | None = None
    peak_hours_end: LocalTime | None = None
    notes: str | None = Field(default=None, max_length=2000)
    special_considerations: JsonObject | None = None

    @model_validator(mode="after")
    def _check_hours(self) -> Self:
        opening, closing = self.open_time, self.close_time
        if (opening is None) != (closing is None):
            raise ValueError("give both open_time and close_time, or neither")
        if opening is None and not self.is_closed:
            raise ValueError("an open day needs open_time and close_time (or set is_closed)")
        if opening is not None and closing is not None and opening >= closing:
            raise ValueError(
                f"open_time ({opening:%H:%M}) must be before close_time ({closing:%H:%M})"
            )
        start, end = self.peak_hours_start, self.peak_hours_end
        if (start is None) != (end is None):
            raise ValueError("give both peak_hours_start and peak_hours_end, or neither")
        if start is not None and end is not None:
            if start >= end:
                raise ValueError(
                    f"peak_hours_start ({start:%H:%M}) must be before peak_hours_end ({end:%H:%M})"
                )
            if opening is None or closing is None:
                raise ValueError("peak hours need opening hours (open_time and close_time)")
            if start < opening or end > closing:
                raise ValueError(
                    f"peak hours {start:%H:%M}-{end:%H:%M} must lie within the opening hours"
                    f" {opening:%H:%M}-{closing:%H:%M}"
                )
        return self


class ScheduleDayWrite(ScheduleWrite):
    day_of_week: int = Field(ge=0, le=6, description="0 = Monday ... 6 = Sunday")


def _one_entry_per_day(days: list[ScheduleDayWrite]) -> list[ScheduleDayWrite]:
    seen: set[int] = set()
    for day in days:
        if day.day_of_week in seen:
            raise ValueError(f"day_of_week {day.day_of_week} is listed more than once")
        seen.add(day.day_of_week)
    return days


WeekScheduleWrite = Annotated[
    list[ScheduleDayWrite],
    Field(max_length=7, description="The whole week; days not listed are deleted"),
    AfterValidator(_one_entry_per_day),
]


class ScheduleRead(BaseModel):
    site_id: str
    day_of_week: int
    timezone: str = Field(description="The site's IANA time zone; the times are local to it")
    open_time: LocalTime | None
    close_time: LocalTime | None
    is_closed: bool
    is_maintenance_window: bool
    expected_transaction_volume: int | None
    peak_hours_start: LocalTime | None
    peak_hours_end: LocalTime | None
    notes: str | None
    special_considerations: StoredJsonObject | None
    created_at: datetime
    updated_at: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def day_name(self) -> str:
        return DAY_NAMES[self.day_of_week]

    @classmethod
    def of(cls, schedule: object, timezone: str) -> ScheduleRead:
        fields = {name: getattr(schedule, name) for name in cls.model_fields if name != "timezone"}
        return cls.model_validate({**fields, "timezone": timezone})


class WeekSchedule(BaseModel):
    site_id: str
    timezone: str
    days: list[ScheduleRead] = Field(description="The days that have a schedule, Monday first")


class BootstrapKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replaces_existing_devices: bool = Field(
        default=False,
        description="Admin only: the key also re-registers devices of the site that already "
        "have a key (e.g. terminals that lost theirs), replacing their keys. Without it, a "
        "device id that is registered needs its current key to register again",
    )


class BootstrapKeyRead(BaseModel):
    site_id: str
    bootstrap_key: str = Field(
        description=(
            "The key the site's terminals register with (POST /api/v1/agent/register). Shown"
            " once: only its hash is stored. Asking again replaces it."
        )
    )
    replaced_previous_key: bool = Field(
        description="True when a previous key existed; it no longer registers devices"
    )
    expires_at: datetime = Field(description="The key registers no device after this time")
    replaces_existing_devices: bool = Field(
        description="Whether the key also re-registers devices that already exist"
    )
