"""MQTT details both ends of the device protocol share: quality of service, the broker URL,
how a message is signed, and how a refused message is described without echoing its input.

No key travels in an MQTT payload. Both ends derive the same secret from the device's API
key, ``sha256(api_key)`` (:func:`device_secret`): the device computes it from the key it
holds, the server has it already, since it is exactly the verifier it stores for HTTP
(``devices.api_key_hash``). From that secret come

- the device's broker password (:func:`broker_password`): the broker knows the device by its
  own account (user name = device id), and its ACL lets it use its own topics only;
- the signature of every message (:func:`sign`): an HMAC-SHA256 of the topic and the body,
  made by the device for its uplink messages and by the server for the jobs it pushes, so a
  message forged or moved to another topic is refused even on a broker left open.

Why a secret the database holds is acceptable here: the API key itself (what HTTP wants)
never leaves the device, and reading the verifier needs the database, which already holds
everything the device could send. Someone who has read ``devices`` can sign MQTT messages as
any device until its key is rotated; they cannot call the HTTP API as it. Rotating or revoking
a key changes the secret at once on both transports.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from homepot.kit.keys import hash_key

QOS = 1
DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
# The server's broker account: upper case, so that no device id (lower case only) can take it.
SERVER_USERNAME = "HOMEPOT-SERVER"


class BrokerAddress(BaseModel):
    """Where the broker is and how to log in, from ``mqtt[s]://[user:password@]host[:port]``."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None


def parse_broker_url(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(
            "fleet.mqtt_url must look like mqtt://127.0.0.1:1883 (or mqtts://host:8883 for"
            " TLS, with user:password@ for the server's broker account); got"
            f" {_without_password(url)!r} (leave it empty to run without a broker)"
        )
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
    except ValueError as exc:
        raise ValueError(f"fleet.mqtt_url has an invalid port: {_without_password(url)!r}") from exc
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def broker_address(url: str) -> tuple[str, int]:
    """``mqtt://host[:port]`` → (host, port)."""
    address = parse_broker_url(url)
    return address.host, address.port


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def device_secret(api_key: str) -> bytes:
    """The secret both ends derive from a device's API key (the server stores it as the
    key's verifier, ``devices.api_key_hash``)."""
    return secret_from_key_hash(hash_key(api_key))


def secret_from_key_hash(key_hash: str) -> bytes:
    return key_hash.encode()


def broker_password(secret: bytes) -> str:
    """The device's password on the broker (its user name is its device id)."""
    return hmac.new(secret, b"homepot/v1/broker-password", hashlib.sha256).hexdigest()


def sign(secret: bytes, topic: str, body: str) -> str:
    """HMAC-SHA256 of the topic and the body: a message cannot be forged or moved."""
    return hmac.new(secret, topic.encode() + b"\n" + body.encode(), hashlib.sha256).hexdigest()


def signature_matches(secret: bytes, topic: str, body: str, mac: str) -> bool:
    return hmac.compare_digest(sign(secret, topic, body), mac)


class SignedMessage(BaseModel):
    """Every MQTT payload, both ways: the message's JSON as a string (so that both ends sign
    the same bytes) and its signature (see :func:`sign`)."""

    model_config = ConfigDict(extra="forbid")

    body: str = Field(max_length=4_000_000)
    mac: str = Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")

    @classmethod
    def of(cls, secret: bytes, topic: str, message: BaseModel) -> SignedMessage:
        body = message.model_dump_json(exclude_none=True)
        return cls(body=body, mac=sign(secret, topic, body))


def validation_summary(exc: ValidationError, *, inside: str | None = None) -> str:
    """What is wrong, field by field; locations inside the field ``inside`` are given from it."""
    # Never the input values: a message may carry secrets.
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        parts = error["loc"]
        if inside is not None and parts[:1] == (inside,) and len(parts) > 1:
            parts = parts[1:]
        location = ".".join(str(part) for part in parts) or "message"
        problems.append(f"{location}: {error['msg']}")
    return "; ".join(problems[:5])
