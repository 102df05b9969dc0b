"""One place that decides what is a secret. Every producer of stored data goes through here.

- Values under keys named like a secret (password, passwd, secret, token, api_key, apikey,
  authorization, cookie, and names containing them such as ``access_token`` or
  ``X-Api-Key``) are replaced by ``[REDACTED]``, at any depth of a JSON-like structure.
- In free text, card-number-like digit runs (13 to 19 digits, spaces or dashes allowed
  between them) keep only their last four digits, and inline secrets such as
  ``password=hunter2`` or ``Bearer eyJ...`` lose their value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"

_SENSITIVE_KEY = re.compile(
    r"pass(?:word|wd)?|secret|token|api[-_]?key|apikey|authori[sz]ation|cookie|credential"
    r"|private[-_]?key|card[-_]?number|cvv|cvc",
    re.IGNORECASE,
)
# Keys that contain a sensitive word but hold no secret (counts, timings, types).
_HARMLESS_KEY = re.compile(
    r"^(?:token_type|token_count|password_changed_at|expires_in|.*_count|.*_ms)$",
    re.IGNORECASE,
)

# 13-19 digits, optionally separated by single spaces or dashes, standing alone: not part of
# a longer number or of a word, so that hex ids (event ids, user ids) are left intact.
_CARD_NUMBER = re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w])")
# key=value / key: value / "key": "value" pairs whose key is sensitive.
_INLINE_SECRET = re.compile(
    r"""(?P<key>["']?[\w-]*(?:pass(?:word|wd)?|secret|token|api[-_]?key|apikey|authori[sz]ation"""
    r"""|cookie)[\w-]*["']?)(?P<sep>\s*[=:]\s*)(?P<quote>["']?)(?P<value>[^\s"'&,;}]+)""",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\b")


def is_sensitive_key(key: str) -> bool:
    return bool(_SENSITIVE_KEY.search(key)) and not _HARMLESS_KEY.match(key)


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "*" * (len(digits) - 4) + digits[-4:]


def mask_text(text: str) -> str:
    """Mask card numbers, bearer tokens, JWTs and ``key=value`` secrets in free text."""
    if not text:
        return text
    # Cheap pre-checks keep the common case (no digits run, no secret words) fast.
    if any(ch.isdigit() for ch in text):
        text = _CARD_NUMBER.sub(_mask_card, text)
    lowered = text.lower()
    if "bearer" in lowered or "basic" in lowered:
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    if "eyj" in lowered:
        text = _JWT.sub(REDACTED, text)
    if any(word in lowered for word in ("pass", "secret", "token", "key", "auth", "cookie")):
        text = _INLINE_SECRET.sub(
            lambda m: f"{m.group('key')}{m.group('sep')}{m.group('quote')}{REDACTED}", text
        )
    return text


def redact(value: Any) -> Any:
    """Redact a JSON-like value: secret keys at any depth, free text in every string."""
    if isinstance(value, Mapping):
        return {
            key: (REDACTED if isinstance(key, str) and is_sensitive_key(key) else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


def redact_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, str | list[str]]:
    """Query parameters or headers (repeatable keys) as a redacted dict."""
    result: dict[str, str | list[str]] = {}
    for key, raw in pairs:
        value = REDACTED if is_sensitive_key(key) else mask_text(raw)
        existing = result.get(key)
        if existing is None:
            result[key] = value
        elif isinstance(existing, list):
            existing.append(value)
        else:
            result[key] = [existing, value]
    return result
