"""Random API keys and their verifiers.

Keys carry 256 bits of randomness, so a plain SHA-256 of the key is a safe verifier: it is
stored in an indexed, unique column and a request is authenticated with one index lookup,
never with a slow password hash per call. Keys themselves are never stored.
"""

from __future__ import annotations

import hashlib
import secrets

DEVICE_KEY_PREFIX = "hpd_"
BOOTSTRAP_KEY_PREFIX = "hpb_"


def new_device_key() -> str:
    return DEVICE_KEY_PREFIX + secrets.token_urlsafe(32)


def new_bootstrap_key() -> str:
    return BOOTSTRAP_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
