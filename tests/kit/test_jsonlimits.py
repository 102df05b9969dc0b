from __future__ import annotations

import json
import math
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, BeforeValidator, JsonValue, ValidationError

from homepot.kit.jsonlimits import (
    CLIPPED,
    MAX_DEPTH,
    JsonLimitExceeded,
    JsonLimits,
    JsonObject,
    check_json,
    clip_stored_json,
)


class Report(BaseModel):
    context: JsonObject | None = None
    small: Annotated[dict[str, JsonValue], BeforeValidator(JsonLimits(max_bytes=64))] = {}


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def refusal(**fields: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        Report(**fields)
    (error,) = caught.value.errors()
    return dict(error)


def test_json_within_the_limits_is_accepted_unchanged() -> None:
    value = {"a": [1, 2.5, "x", None, True], "b": nested(MAX_DEPTH - 1)}
    assert Report(context=value).context == value


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 260, 800, 5000])
def test_nesting_deeper_than_the_limit_is_refused_naming_the_field(depth: int) -> None:
    error = refusal(context=nested(depth))
    assert error["loc"] == ("context",)
    assert error["type"] == "json_too_deep"
    assert f"deeper than {MAX_DEPTH} levels" in error["msg"]
    assert error["msg"].startswith("context.a.a")


def test_arrays_count_as_levels_too() -> None:
    value: Any = []
    for _ in range(MAX_DEPTH):
        value = [value]
    assert refusal(context={"x": value})["type"] == "json_too_deep"


@pytest.mark.parametrize(
    ("value", "kind", "where"),
    [
        ({"x": [1, math.nan]}, "json_not_finite", "context.x[1]"),
        ({"x": {"y": math.inf}}, "json_not_finite", "context.x.y"),
        ({"x": "ok \ud800"}, "json_lone_surrogate", "context.x"),
        ({"\udfff": 1}, "json_lone_surrogate", "context"),
    ],
)
def test_values_json_cannot_carry_are_refused_naming_where(
    value: dict[str, Any], kind: str, where: str
) -> None:
    error = refusal(context=value)
    assert error["type"] == kind
    assert error["msg"].startswith(where)


def test_too_many_keys_are_refused() -> None:
    error = refusal(context={f"k{i}": i for i in range(2001)})
    assert error["type"] == "json_too_many_keys"


def test_the_size_limit_is_per_field() -> None:
    assert Report(small={"x": "y" * 40}).small == {"x": "y" * 40}
    error = refusal(small={"x": "y" * 80})
    assert error["loc"] == ("small",)
    assert "at most 64 are accepted" in error["msg"]


def test_a_validation_error_with_a_lone_surrogate_can_be_shown_as_json() -> None:
    # The refusal's message names the place, never the value that cannot be encoded.
    error = refusal(context={"x": "\ud800"})
    error["msg"].encode()


def test_check_json_refuses_objects_that_are_not_json() -> None:
    with pytest.raises(JsonLimitExceeded, match="not JSON"):
        check_json({"when": object()}, "context")


def test_stored_json_nested_too_deep_is_clipped_for_reading() -> None:
    shallow = {"a": [1, {"b": 2}]}
    assert clip_stored_json(shallow) is shallow
    clipped = clip_stored_json(nested(5000), max_depth=10)
    node: Any = clipped
    for _ in range(9):
        node = node["a"]
    assert node == {"a": CLIPPED}


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ({"load": 0.5, "note": "x" * 100}, "json_too_large"),  # a flat object over max_bytes
        ({"load": math.inf}, "json_not_finite"),
        ({"note": "\ud800"}, "json_lone_surrogate"),
        ({"\ud800": 1}, "json_lone_surrogate"),
    ],
)
def test_small_flat_objects_take_the_fast_path_but_meet_the_same_limits(
    value: dict[str, Any], kind: str
) -> None:
    with pytest.raises(JsonLimitExceeded) as caught:
        check_json(value, "small", max_bytes=64)
    assert caught.value.kind == kind
    # The fast path answers only "certainly within": what it accepts, the full check accepts.
    accepted = {"load": 0.5, "count": 3, "ok": True, "none": None, "note": "ascii"}
    check_json(accepted, "small", max_bytes=len(json.dumps(accepted)))
