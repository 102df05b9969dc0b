"""Limits for free-form JSON that clients send: one validator for every schema that takes it.

A JSON object accepted from outside (a device's ``extra_metrics``, an error's ``context``, a
site's ``config``, a job's ``output``) is stored as it is and read back by every page that
shows it. So before it is stored it must be something every reader can handle:

- at most ``max_depth`` levels of nesting (objects and arrays; the value itself is level 1),
- at most ``max_keys`` keys and array items in all,
- at most ``max_bytes`` bytes as UTF-8 JSON,
- only finite numbers (NaN and Infinity are not JSON), and only text that UTF-8 can encode
  (no lone surrogates such as ``"\\ud800"``).

Use :data:`JsonObject` (or ``Annotated[dict[str, JsonValue], BeforeValidator(JsonLimits(...))]``
for other limits) as the field's type; a refusal is a 422 whose ``loc`` is the field and whose
message names the place inside it, e.g. ``extra_metrics.a.b[3]``.

The walk is iterative, so that no input can exhaust the interpreter's stack.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, JsonValue, ValidationInfo
from pydantic_core import PydanticCustomError, to_json

MAX_DEPTH = 32
MAX_KEYS = 2000
MAX_BYTES = 64 * 1024

_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonLimitExceeded(ValueError):
    """A value over a limit or not representable as JSON; ``where`` is its dotted path."""

    def __init__(self, kind: str, where: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.where = where


def has_lone_surrogate(text: str) -> bool:
    """True when ``text`` holds a UTF-16 surrogate on its own, which UTF-8 cannot encode."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def replace_lone_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, so that UTF-8 can encode it."""
    return _SURROGATE.sub("\ufffd", text)


def _child_path(path: str, key: object) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"


def _walk(value: Any, root: str) -> Iterator[tuple[Any, int, str]]:
    """Every node of ``value`` with its depth (the value itself at 1) and its path."""
    stack: list[tuple[Any, int, str]] = [(value, 1, root)]
    while stack:
        node, depth, path = stack.pop()
        yield node, depth, path
        if isinstance(node, dict):
            stack.extend((item, depth + 1, _child_path(path, key)) for key, item in node.items())
        elif isinstance(node, list | tuple):
            stack.extend((item, depth + 1, _child_path(path, i)) for i, item in enumerate(node))


def check_json(
    value: Any,
    name: str = "value",
    *,
    max_depth: int = MAX_DEPTH,
    max_keys: int = MAX_KEYS,
    max_bytes: int = MAX_BYTES,
) -> None:
    """Raise :class:`JsonLimitExceeded` when ``value`` is over a limit or not plain JSON."""
    if _small_flat_object(value, max_depth, max_keys, max_bytes):
        return
    if not _plain_and_within(value, max_depth, max_keys):
        _find_what_is_wrong(value, name, max_depth, max_keys)
    size = len(to_json(value))
    if size > max_bytes:
        raise JsonLimitExceeded(
            "json_too_large",
            name,
            f"{name} is {size} bytes as JSON; at most {max_bytes} are accepted",
        )


# A flat object of at most this many keys is checked by _small_flat_object.
_SMALL_OBJECT_KEYS = 64


def _small_flat_object(value: Any, max_depth: int, max_keys: int, max_bytes: int) -> bool:
    """True when ``value`` is certainly within the limits: an object of a few ASCII keys whose
    values are numbers, booleans, nulls or ASCII text, whose JSON is surely below
    ``max_bytes`` (each text counted as if every character needed a 6-byte escape). The usual
    ``extra_metrics`` is such an object; it is checked without the walk or the encoding.
    False means "look closer", not "refused".
    """
    if type(value) is not dict or max_depth < 1 or len(value) > min(max_keys, _SMALL_OBJECT_KEYS):
        return False
    size = 2
    isfinite = math.isfinite
    for key, item in value.items():
        if type(key) is not str or not key.isascii():
            return False
        kind = type(item)
        if kind is float:
            if not isfinite(item):
                return False
            size += 32
        elif kind is int:
            if not -(10**24) < item < 10**24:
                return False
            size += 32
        elif kind is str:
            if not item.isascii():
                return False
            size += 6 * len(item) + 2
        elif not (item is None or kind is bool):
            return False
        else:
            size += 5
        size += 6 * len(key) + 4
    return size <= max_bytes


def _plain_and_within(value: Any, max_depth: int, max_keys: int) -> bool:
    """The common case, checked fast: plain JSON types within the depth and key limits.

    No paths are built here; when this says False, :func:`_find_what_is_wrong` walks the
    value again and names the place.
    """
    keys = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        kind = type(node)
        if kind is str:
            if not node.isascii() and has_lone_surrogate(node):
                return False
        elif kind is dict:
            if depth > max_depth:
                return False
            keys += len(node)
            for key, item in node.items():
                if type(key) is not str or (not key.isascii() and has_lone_surrogate(key)):
                    return False
                push((item, depth + 1))
        elif kind is list or kind is tuple:
            if depth > max_depth:
                return False
            keys += len(node)
            for item in node:
                push((item, depth + 1))
        elif kind is float:
            if not math.isfinite(node):
                return False
        elif not (node is None or kind is int or kind is bool):
            return False
        if keys > max_keys:
            return False
    return True


def _find_what_is_wrong(value: Any, name: str, max_depth: int, max_keys: int) -> None:
    """Raise :class:`JsonLimitExceeded` naming the first place of ``value`` that breaks a
    limit (returns when there is none, e.g. a subclass of a JSON type)."""
    keys = 0
    for node, depth, path in _walk(value, name):
        if isinstance(node, dict | list | tuple):
            if depth > max_depth:
                raise JsonLimitExceeded(
                    "json_too_deep",
                    path,
                    f"{path} is nested deeper than {max_depth} levels; flatten it",
                )
            keys += len(node)
            if keys > max_keys:
                raise JsonLimitExceeded(
                    "json_too_many_keys",
                    path,
                    f"{name} holds more than {max_keys} keys and items; send less",
                )
            if isinstance(node, dict):
                for key in node:
                    if not isinstance(key, str):
                        raise JsonLimitExceeded(
                            "json_key_not_text", path, f"{path} has a key that is not text"
                        )
                    if has_lone_surrogate(key):
                        raise JsonLimitExceeded(
                            "json_lone_surrogate",
                            path,
                            f"{path} has a key with a lone UTF-16 surrogate, which is not "
                            "valid Unicode text",
                        )
        elif isinstance(node, str):
            if has_lone_surrogate(node):
                raise JsonLimitExceeded(
                    "json_lone_surrogate",
                    path,
                    f"{path} holds a lone UTF-16 surrogate, which is not valid Unicode text",
                )
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise JsonLimitExceeded(
                    "json_not_finite",
                    path,
                    f"{path} is {node}; JSON numbers must be finite (no NaN or Infinity)",
                )
        elif node is not None and not isinstance(node, bool | int):
            raise JsonLimitExceeded(
                "json_type", path, f"{path} is a {type(node).__name__}, which is not JSON"
            )


@dataclass(frozen=True)
class JsonLimits:
    """A pydantic before-validator: the field's raw value must pass :func:`check_json`."""

    max_depth: int = MAX_DEPTH
    max_keys: int = MAX_KEYS
    max_bytes: int = MAX_BYTES

    def __call__(self, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        name = info.field_name or "value"
        try:
            check_json(
                value,
                name,
                max_depth=self.max_depth,
                max_keys=self.max_keys,
                max_bytes=self.max_bytes,
            )
        except JsonLimitExceeded as exc:
            raise PydanticCustomError(exc.kind, "{problem}", {"problem": str(exc)}) from None
        return value


# A JSON object from a client, within the default limits.
JsonObject = Annotated[dict[str, JsonValue], BeforeValidator(JsonLimits())]


def clip_stored_json(value: Any, max_depth: int = MAX_DEPTH * 2) -> Any:
    """``value`` with anything nested deeper than ``max_depth`` replaced by a short note.

    For rows stored before the limits above existed: a reader shows them without recursing
    without bound. Everything shallower is returned unchanged (the same objects when nothing
    is clipped).
    """
    if not _deeper_than(value, max_depth):
        return value
    return _clipped(value, max_depth)


CLIPPED = "[nested too deep to show]"


def _deeper_than(value: Any, max_depth: int) -> bool:
    return any(
        depth > max_depth
        for node, depth, _ in _walk(value, "")
        if isinstance(node, dict | list | tuple)
    )


def _clipped(value: Any, max_depth: int) -> Any:
    # Iterative copy: each container is rebuilt once its children are known.
    root: list[Any] = [None]
    stack: list[tuple[Any, int, Any, Any]] = [(value, 1, root, 0)]
    while stack:
        node, depth, parent, slot = stack.pop()
        if isinstance(node, dict | list | tuple) and depth > max_depth:
            parent[slot] = CLIPPED
        elif isinstance(node, dict):
            copy: dict[Any, Any] = {}
            parent[slot] = copy
            for key, item in node.items():
                copy[key] = None
                stack.append((item, depth + 1, copy, key))
        elif isinstance(node, list | tuple):
            items: list[Any] = [None] * len(node)
            parent[slot] = items
            stack.extend((item, depth + 1, items, i) for i, item in enumerate(node))
        else:
            parent[slot] = node
    return root[0]


# JSON read back from storage: shown as stored, clipped where older rows nest too deep.
StoredJson = Annotated[JsonValue, BeforeValidator(clip_stored_json)]
StoredJsonObject = Annotated[dict[str, Any], BeforeValidator(clip_stored_json)]
