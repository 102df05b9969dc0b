"""Credentials inside URLs (``scheme://user:password@host``) are never shown or stored.

The one URL-password rule of the project: :mod:`homepot.kit.redaction` uses it for stored
free text (with its ``[REDACTED]`` mark), error messages and health details use it as is.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@ — the password runs up to the last "@" before the host's path,
# so a password holding "@" or ":" is masked whole.
_CREDENTIALS = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s:/@]*):(?P<password>[^\s/]*)@"
    r"(?=[^\s@/]*(?:[/\s?#'\"]|$))"
)


def mask_url_credentials(text: str, mask: str = MASK) -> str:
    """``text`` with the password of every URL in it replaced by ``mask``."""
    if "://" not in text or "@" not in text:
        return text
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{mask}@", text)
