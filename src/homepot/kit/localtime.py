"""A wall-clock time of a site (opening hours, maintenance windows): HH:MM or HH:MM:SS,
local to the site's time zone, without an offset.

JSON Schema's ``format: time`` (RFC 3339) requires an offset, so schema checkers refuse
"08:00:00" against it: the published schema states the accepted pattern instead, and
responses write HH:MM:SS.
"""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_LOCAL_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?$")


def _parse_local_time(value: Any) -> Any:
    if isinstance(value, time) or value is None:
        return value
    if not isinstance(value, str) or not _LOCAL_TIME.match(value):
        raise ValueError(f"expected a local time as HH:MM or HH:MM:SS (e.g. 08:30); got {value!r}")
    return time.fromisoformat(value)


LocalTime = Annotated[
    time,
    BeforeValidator(_parse_local_time),
    PlainSerializer(lambda moment: moment.strftime("%H:%M:%S"), return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _LOCAL_TIME.pattern,
            "description": "Local to the site's time zone, HH:MM or HH:MM:SS (no offset)",
            "examples": ["08:00"],
        }
    ),
]
