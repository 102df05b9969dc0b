"""Keyed pseudonyms: HMAC-SHA256 with the export key (HOMEPOT_EXPORT_KEY).

The same key gives the same pseudonym for the same id, so a user's events still join up
across tables and across exports; another key gives unrelated pseudonyms; without the key a
pseudonym cannot be turned back into the id (nor checked against a guessed one).
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

# Shorter keys could be guessed, and with them every pseudonym reversed against the users.
MIN_KEY_LENGTH = 16
_KEY_ID_MESSAGE = b"homepot-export-key-id"
# Kinds of identifier, each its own domain so that a session id never collides with a user id.
USER_PREFIX = "u_"
SESSION_PREFIX = "s_"


class ExportKeyError(ValueError):
    """The export key is missing or too weak; the message says what to set."""


class Pseudonymizer:
    """Turns user and session ids into stable keyed pseudonyms (``u_…``, ``s_…``)."""

    def __init__(self, key: str) -> None:
        if len(key) < MIN_KEY_LENGTH:
            raise ExportKeyError(
                f"HOMEPOT_EXPORT_KEY must be at least {MIN_KEY_LENGTH} characters; use a long "
                "random secret, e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        self._key = key.encode()
        # Identifies the key in a manifest without revealing it: two exports with the same
        # key_id have joinable pseudonyms.
        self.key_id = hmac.new(self._key, _KEY_ID_MESSAGE, hashlib.sha256).hexdigest()[:16]
        # Ids repeat on almost every row; the HMAC is computed once per distinct id.
        self.user = lru_cache(maxsize=8_192)(self._user)
        self.session = lru_cache(maxsize=8_192)(self._session)

    def _digest(self, domain: bytes, value: str) -> str:
        return hmac.new(self._key, domain + b"\x00" + value.encode(), hashlib.sha256).hexdigest()

    def _user(self, user_id: str) -> str:
        return USER_PREFIX + self._digest(b"user", user_id)[:32]

    def _session(self, session_id: str) -> str:
        return SESSION_PREFIX + self._digest(b"session", session_id)[:32]


def pseudonymizer_from(key: str | None) -> Pseudonymizer:
    """The pseudonymizer for the configured key; there is no default key, by design."""
    if not key:
        raise ExportKeyError(
            "exports need a pseudonymization key: set HOMEPOT_EXPORT_KEY to a long random "
            "secret and keep it (the same key keeps pseudonyms stable across exports)"
        )
    return Pseudonymizer(key)
