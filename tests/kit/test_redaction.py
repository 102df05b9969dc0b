from __future__ import annotations

import pytest

from homepot.kit.redaction import (
    MAX_DEPTH,
    REDACTED,
    TOO_DEEP,
    is_sensitive_key,
    mask_text,
    redact,
    redact_pairs,
    scrub,
)


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


@pytest.mark.parametrize(
    "text",
    [
        "scanned barcode 4006381333931 at till 3",  # an EAN-13 that fails the Luhn check
        "event at 1733412345678 ms took 120 ms",  # a millisecond timestamp
        "receipt 1234 5678 9012 3456 printed",  # card-shaped but not a card number
    ],
)
def test_digit_runs_that_fail_the_luhn_check_stay_intact(text: str) -> None:
    assert mask_text(text) == text


@pytest.mark.parametrize(
    "card", ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005", "6011111111111117"]
)
def test_card_numbers_that_pass_the_luhn_check_are_masked(card: str) -> None:
    masked = mask_text(f"paid with {card} today")
    assert card not in masked
    assert masked.endswith(f"{card[-4:]} today")


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        ('{"password": "correct horse battery", "user": "bob"}', "horse", '"user": "bob"'),
        ("login password='a b c' rejected", "a b c", "rejected"),
        ('passwd="open sesame now" user=ann', "sesame", "user=ann"),
        ("Authorization: Token 9f8e7d6c5b4a", "9f8e7d6c5b4a", "Authorization: Token"),
        ("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy", "Basic"),
        (
            'Authorization: Digest username="bob", realm="pos", response="6629fae4"\nnext',
            "6629fae4",
            "\nnext",
        ),
        ('headers={"Authorization": "Token abc123", "Accept": "json"}', "abc123", "Accept"),
        ("authorization_header=Token abc123", "abc123", "authorization_header"),
        ("connect to postgresql://homepot:hunter2@db:5432/pos failed", "hunter2", "@db:5432"),
        ("fetch https://ann:p%40ss@cdn.example.com/fw.bin", "p%40ss", "cdn.example.com"),
    ],
)
def test_mask_text_masks_multi_word_and_scheme_credentials(
    text: str, secret: str, kept: str
) -> None:
    masked = mask_text(text)
    assert secret not in masked
    assert REDACTED in masked
    assert kept in masked


def test_a_url_without_a_password_is_left_alone() -> None:
    text = "GET https://example.com/path?q=1 and mailto ann@example.com"
    assert mask_text(text) == text


def test_redaction_of_a_deep_structure_is_bounded() -> None:
    deep: dict[str, object] = {"password": "pw"}
    for _ in range(5000):  # far beyond the interpreter's recursion limit
        deep = {"a": deep}
    redacted = redact(deep)
    node = redacted
    depth = 1
    while isinstance(node, dict):
        node = node["a"]
        depth += 1
    assert node == TOO_DEEP
    assert depth == MAX_DEPTH + 1
    assert scrub([[["x"]]]) == [[["x"]]]
