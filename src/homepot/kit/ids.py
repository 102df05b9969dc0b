"""Time-ordered message ids: UUID version 7 (RFC 9562), and the time one carries.

A device message (a heartbeat, an error report) is named by a ``message_id`` the device sets
once; sending it again sends the same id. With a version 7 id the id says when the message
was made, to the millisecond, so a server can file what it keeps about the message (its
receipt, homepot.fleet.receipts) under that time: every delivery of the message lands in the
same daily partition. Python's ``uuid`` module makes version 7 ids from 3.14 on
(``uuid.uuid7``); until then, :func:`uuid7` here.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime

_MILLISECONDS = (1 << 48) - 1
_RAND_B = (1 << 62) - 1


def uuid7(at: datetime | None = None) -> uuid.UUID:
    """A new version 7 UUID: 48 bits of Unix time in milliseconds (now, or ``at``), the
    version and variant bits, and 74 random bits."""
    milliseconds = (
        time.time_ns() // 1_000_000 if at is None else int(at.timestamp() * 1000)
    ) & _MILLISECONDS
    random = int.from_bytes(os.urandom(10), "big")  # 80 bits; 74 are used
    rand_a, rand_b = (random >> 68) & 0xFFF, random & _RAND_B
    return uuid.UUID(int=milliseconds << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b)


def uuid7_time(value: uuid.UUID) -> datetime | None:
    """When the version 7 UUID ``value`` was made (millisecond precision, UTC); None for any
    other version (``uuid.uuid4()``'s ids carry no time)."""
    if value.version != 7:  # None for an id outside RFC 4122/9562's variant
        return None
    return datetime.fromtimestamp((value.int >> 80) / 1000, UTC)
