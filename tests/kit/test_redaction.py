from __future__ import annotations

import pytest

from homepot.kit.redaction import REDACTED, is_sensitive_key, mask_text, redact, redact_pairs


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "PASSWD",
        "client_secret",
        "access_token",
        "X-Api-Key",
        "apikey",
        "Authorization",
        "set-cookie",
        "api-key",
    ],
)
def test_secret_like_keys_are_sensitive(key: str) -> None:
    assert is_sensitive_key(key)


@pytest.mark.parametrize("key", ["device_id", "token_type", "page_url", "transaction_count"])
def test_ordinary_keys_are_not(key: str) -> None:
    assert not is_sensitive_key(key)


def test_redact_walks_nested_structures() -> None:
    value = {
        "user": {"name": "ann", "password": "pw1"},
        "items": [{"api_key": "k"}, "paid with 5500-0000-0000-0004"],
        "count": 3,
    }
    assert redact(value) == {
        "user": {"name": "ann", "password": REDACTED},
        "items": [{"api_key": REDACTED}, "paid with ************0004"],
        "count": 3,
    }


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("card 4111 1111 1111 1111 declined", "4111 1111 1111 1111"),
        ("login failed password=hunter2 for bob", "hunter2"),
        ('{"token": "abc123def"}', "abc123def"),
        ("Authorization: Bearer abcdef0123456789", "abcdef0123456789"),
        ("jwt eyJhbGciOi.eyJzdWIiOiIx.c2lnbmF0dXJl here", "eyJhbGciOi.eyJzdWIiOiIx"),
    ],
)
def test_mask_text_removes_secrets_from_free_text(text: str, secret: str) -> None:
    masked = mask_text(text)
    assert secret not in masked
    assert masked != text


def test_mask_text_keeps_ordinary_numbers() -> None:
    text = "order 12345 took 250 ms at 2025-12-05 13:45:23"
    assert mask_text(text) == text


def test_redact_pairs_keeps_repeated_keys() -> None:
    assert redact_pairs([("device_id", "a"), ("device_id", "b"), ("token", "t")]) == {
        "device_id": ["a", "b"],
        "token": REDACTED,
    }


@pytest.mark.parametrize(
    "identifier",
    ["a1234567890123456b", "9f3c1234567890123456789abcdef012", "ord_4111111111111111"],
)
def test_ids_with_long_digit_runs_are_not_mistaken_for_cards(identifier: str) -> None:
    assert mask_text(f"event {identifier} failed") == f"event {identifier} failed"
    assert redact({"event_id": identifier}) == {"event_id": identifier}
