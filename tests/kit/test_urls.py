from __future__ import annotations

import pytest

from homepot.kit.redaction import REDACTED, mask_text
from homepot.kit.urls import mask_url_credentials


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "connect to postgresql+asyncpg://homepot:s3cret@db:5432/homepot failed",
            "connect to postgresql+asyncpg://homepot:***@db:5432/homepot failed",
        ),
        # A password holding "@" and ":" is masked whole.
        ("mqtt://device:p@ss:w0rd@broker:1883", "mqtt://device:***@broker:1883"),
        ("url='postgresql://u:pw@h/db'", "url='postgresql://u:***@h/db'"),
        ("two: a://x:1@h and b://y:2@k/", "two: a://x:***@h and b://y:***@k/"),
    ],
)
def test_passwords_in_urls_are_masked(text: str, masked: str) -> None:
    assert mask_url_credentials(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "http://example.com/users/a@b",
        "postgresql://homepot@db/homepot",
        "an e-mail: someone@example.com",
        "time 12:30@noon",
    ],
)
def test_text_without_url_credentials_is_left_alone(text: str) -> None:
    assert mask_url_credentials(text) == text


def test_stored_text_and_error_messages_mask_url_passwords_by_the_same_rule() -> None:
    # One rule: redaction of stored free text masks exactly what error messages mask,
    # including a password holding "@" and ":".
    text = "mqtt://device:p@ss:w0rd@broker:1883 and postgresql://u:pw@h/db"
    assert mask_text(text) == mask_url_credentials(text, mask=REDACTED)
    assert "p@ss" not in mask_text(text)
    assert "w0rd" not in mask_text(text)
