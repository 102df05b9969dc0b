"""MQTT details both ends of the device protocol share: quality of service, the broker URL,
and how a refused message is described without echoing its input.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import ValidationError

QOS = 1
DEFAULT_PORT = 1883


def broker_address(url: str) -> tuple[str, int]:
    """``mqtt://host[:port]`` → (host, port)."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ValueError(
            f"fleet.mqtt_url must look like mqtt://127.0.0.1:1883; got {url!r} "
            "(leave it empty to run without a broker)"
        )
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ValueError(f"fleet.mqtt_url has an invalid port: {url!r}") from exc
    return parts.hostname, port


def validation_summary(exc: ValidationError, *, inside: str | None = None) -> str:
    """What is wrong, field by field; locations inside the field ``inside`` are given from it."""
    # Never the input values: an envelope's input holds the device's API key.
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        parts = error["loc"]
        if inside is not None and parts[:1] == (inside,) and len(parts) > 1:
            parts = parts[1:]
        location = ".".join(str(part) for part in parts) or "message"
        problems.append(f"{location}: {error['msg']}")
    return "; ".join(problems[:5])
