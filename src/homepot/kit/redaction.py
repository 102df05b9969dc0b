"""One place that decides what is a secret. Every producer of stored data goes through here.

- Values under keys named like a secret (password, passwd, secret, token, api_key, apikey,
  authorization, cookie, and names containing them such as ``access_token`` or
  ``X-Api-Key``) are replaced by ``[REDACTED]``, at any depth of a JSON-like structure.
- In free text, card numbers (13 to 19 digits, spaces or dashes allowed between them, that
  pass the Luhn check) keep only their last four digits; other digit runs (barcodes,
  millisecond timestamps) stay as they are. Inline secrets lose their value:
  ``password=hunter2``, ``"password": "correct horse battery"``, ``Bearer eyJ...``,
  ``Authorization: Token ...`` (any scheme: Basic, Digest, ...) and the password of a URL
  (``scheme://user:pass@host``).
- Structures nested deeper than :data:`MAX_DEPTH` are cut there (the rest becomes
  :data:`TOO_DEEP`), so that no stored value can make redaction recurse without bound.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from homepot.kit.urls import mask_url_credentials

REDACTED = "[REDACTED]"
TOO_DEEP = "[nested too deep to show]"
MAX_DEPTH = 64

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
# key=value / key: value / "key": "value" pairs whose key is sensitive. A quoted value is
# masked up to its closing quote, so that "correct horse battery" goes whole.
_INLINE_SECRET = re.compile(
    r"""(?P<key>["']?[\w-]*(?:pass(?:word|wd)?|secret|token|api[-_]?key|apikey|authori[sz]ation"""
    r"""|cookie)[\w-]*["']?)(?P<sep>\s*[=:]\s*)"""
    # (A value already masked by the Authorization rule below is left as it is.)
    r"""(?!["']?(?:[A-Za-z][\w-]*[ \t]+)?\[REDACTED\])"""
    r"""(?:(?P<quote>["'])(?P<quoted>[^"'\r\n]*)(?P=quote)|(?P<value>[^\s"'&,;}]+))""",
    re.IGNORECASE,
)
# An Authorization header's credentials, whatever the scheme (Token, Basic, Digest, ...): a
# quoted value whole; else the scheme's one token, or its list of key=value parameters
# (Digest), so that free text after the header stays readable.
_AUTHORIZATION = re.compile(
    r"""(?P<key>\b(?:proxy-)?authori[sz]ation[\w-]*["']?\s*[=:]\s*)(?:"""
    r"""(?P<quote>["'])(?:(?P<qscheme>[A-Za-z][\w-]*) +)?[^"'\r\n]*(?P=quote)"""
    r"""|(?:(?P<scheme>[A-Za-z][\w-]*)[ \t]+(?=\S))?"""
    r"""(?:[\w-]+=(?:"[^"\r\n]*"|[^\s,"]*)(?:,[ \t]*[\w-]+=(?:"[^"\r\n]*"|[^\s,"]*))*"""
    r"""|[^\s"',;]+))""",
    re.IGNORECASE,
)
_DIGIT = re.compile(r"\d")
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\b")


@functools.lru_cache(maxsize=4096)
def is_sensitive_key(key: str) -> bool:
    # Cached: the same few keys (metric names, header names) come with every event.
    return bool(_SENSITIVE_KEY.search(key)) and not _HARMLESS_KEY.match(key)


def passes_luhn(digits: str) -> bool:
    """The Luhn check every payment card number passes (and most other numbers fail)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    if not passes_luhn(digits):
        return match.group(0)
    return "*" * (len(digits) - 4) + digits[-4:]


def _mask_inline_secret(match: re.Match[str]) -> str:
    quote = match.group("quote") or ""
    return f"{match.group('key')}{match.group('sep')}{quote}{REDACTED}{quote}"


def _mask_authorization(match: re.Match[str]) -> str:
    quote = match.group("quote") or ""
    scheme = match.group("qscheme") or match.group("scheme")
    return f"{match.group('key')}{quote}{scheme + ' ' if scheme else ''}{REDACTED}{quote}"


# Short texts repeat (status words, versions, routes, user agents): their masked form is
# remembered, in a bounded table emptied when full.
_SHORT_TEXT = 96
_SHORT_TEXT_CACHE_SIZE = 8192
_masked_short_texts: dict[str, str] = {}


def mask_text(text: str) -> str:
    """Mask card numbers, credentials and ``key=value`` secrets in free text."""
    if not text:
        return text
    if len(text) > _SHORT_TEXT:
        return _mask_text(text)
    masked = _masked_short_texts.get(text)
    if masked is None:
        if len(_masked_short_texts) >= _SHORT_TEXT_CACHE_SIZE:
            _masked_short_texts.clear()
        masked = _masked_short_texts[text] = _mask_text(text)
    return masked


def _mask_text(text: str) -> str:
    # Cheap pre-checks keep the common case (no digits run, no secret words) fast.
    if _DIGIT.search(text):
        text = _CARD_NUMBER.sub(_mask_card, text)
    lowered = text.lower()
    text = mask_url_credentials(text, mask=REDACTED)
    if "authori" in lowered:
        text = _AUTHORIZATION.sub(_mask_authorization, text)
    if "bearer" in lowered or "basic" in lowered:
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    if "eyj" in lowered:
        text = _JWT.sub(REDACTED, text)
    if any(word in lowered for word in ("pass", "secret", "token", "key", "auth", "cookie")):
        text = _INLINE_SECRET.sub(_mask_inline_secret, text)
    return text


def redact(value: Any, _depth: int = 1) -> Any:
    """Redact a JSON-like value: secret keys at any depth, free text in every string.

    Containers nested deeper than :data:`MAX_DEPTH` become :data:`TOO_DEEP`.
    """
    if isinstance(value, Mapping | list | tuple) and _depth > MAX_DEPTH:
        return TOO_DEEP
    if isinstance(value, Mapping):
        return {
            key: (
                REDACTED
                if isinstance(key, str) and is_sensitive_key(key)
                else redact(item, _depth + 1)
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item, _depth + 1) for item in value]
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


# --- scrubbing for data that leaves the system (exports) -----------------------------------
# Stricter than what storage gets: e-mail addresses, IP addresses and token-like strings go
# too, because an export is read by people and programs outside the operations team.

EMAIL_PLACEHOLDER = "[EMAIL]"
TOKEN_PLACEHOLDER = "[TOKEN]"

# An address, also URL-encoded ("ann%40example.com") as it appears in logged query strings.
_EMAIL = re.compile(
    r"[A-Za-z0-9._+-]+(?:%[0-9A-Fa-f]{2}[A-Za-z0-9._+-]*)*(?:@|%40)"
    r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
# HOMEPOT's own keys (device keys hpd_..., bootstrap keys hpb_...).
_PREFIXED_KEY = re.compile(r"\bhp[a-z]_[A-Za-z0-9_-]{16,}")
# A long run of hex digits (40 or more: SHA-1 and longer digests, raw keys). 32-digit runs
# are left alone: they are the ids of events, users and jobs.
_LONG_HEX = re.compile(r"(?<![A-Za-z0-9_-])[0-9A-Fa-f]{40,}(?![A-Za-z0-9_-])")
# A long base64/base64url run mixing upper case, lower case and digits: a random secret.
# ("/" is left out so that file paths in stack traces stay readable.)
_RANDOM_TOKEN = re.compile(r"(?<![A-Za-z0-9_+=-])[A-Za-z0-9_+-]{24,}={0,2}(?![A-Za-z0-9_+=-])")
# An address with an optional /prefix; candidates only, ipaddress decides.
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?:/\d{1,2})?(?!\w|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}(?:/\d{1,3})?(?![\w:])"
)


def truncate_ip(address: str) -> str | None:
    """The network an address belongs to: IPv4 to its /24, IPv6 to its /48, as CIDR text.

    ``203.0.113.7`` becomes ``203.0.113.0/24``; ``2001:db8:1:2::5`` becomes
    ``2001:db8:1::/48``; an IPv4-mapped IPv6 address is treated as IPv4. None when
    ``address`` is not an IP address.
    """
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _truncated_ip_in_text(match: re.Match[str]) -> str:
    text = match.group(0)
    address, _, prefix = text.partition("/")
    truncated = truncate_ip(address)
    if truncated is None:
        return text
    if prefix and int(prefix) <= int(truncated.rsplit("/", 1)[1]):
        return text  # already a network no narrower than what an export may show
    return truncated


def _looks_random(token: str) -> bool:
    return (
        any(ch.isupper() for ch in token)
        and any(ch.islower() for ch in token)
        and any(ch.isdigit() for ch in token)
    )


def scrub_text(text: str) -> str:
    """:func:`mask_text`, and also no e-mail addresses, token-like strings or full IPs.

    E-mail addresses become ``[EMAIL]``; HOMEPOT keys, 40+ digit hex runs and long random
    base64 strings become ``[TOKEN]``; IP addresses are cut to their /24 (IPv4) or /48 (IPv6)
    network. Dotted four-number versions such as ``1.2.3.4`` are cut too: better a mangled
    version than a leaked address.
    """
    if not text:
        return text
    if "@" in text or "%40" in text:
        text = _EMAIL.sub(EMAIL_PLACEHOLDER, text)
    text = mask_text(text)
    if "hp" in text:
        text = _PREFIXED_KEY.sub(TOKEN_PLACEHOLDER, text)
    if len(text) >= 24:
        text = _LONG_HEX.sub(TOKEN_PLACEHOLDER, text)
        text = _RANDOM_TOKEN.sub(
            lambda m: TOKEN_PLACEHOLDER if _looks_random(m.group(0)) else m.group(0), text
        )
    if text.count(":") >= 2:
        text = _IPV6.sub(_truncated_ip_in_text, text)
    if "." in text:
        text = _IPV4.sub(_truncated_ip_in_text, text)
    return text


def scrub(value: Any, _depth: int = 1) -> Any:
    """:func:`redact` with :func:`scrub_text`: secret keys at any depth, every string scrubbed."""
    if isinstance(value, Mapping | list | tuple) and _depth > MAX_DEPTH:
        return TOO_DEEP
    if isinstance(value, Mapping):
        return {
            key: (
                REDACTED
                if isinstance(key, str) and is_sensitive_key(key)
                else scrub(item, _depth + 1)
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(item, _depth + 1) for item in value]
    if isinstance(value, str):
        return scrub_text(value)
    return value
