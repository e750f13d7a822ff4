"""The API's JSON shape limits (api/strict_json.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from batchyard.api.strict_json import (
    MAX_DEPTH,
    TOO_DEEP_MARKER,
    RequestRefused,
    depth_of,
    parse_json,
    shown,
)


def nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


def test_64_levels_are_accepted_and_65_refused_naming_the_limit() -> None:
    assert depth_of(parse_json(json.dumps(nested(MAX_DEPTH)).encode())) == MAX_DEPTH
    with pytest.raises(RequestRefused) as refused:
        parse_json(json.dumps(nested(MAX_DEPTH + 1)).encode())
    assert refused.value.status_code == 422
    assert refused.value.extra["limit"] == MAX_DEPTH
    assert "64 levels" in refused.value.message


def test_nesting_past_the_parsers_recursion_is_refused_as_too_deep() -> None:
    with pytest.raises(RequestRefused, match="deeper than the 64 levels"):
        parse_json(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize("document", ['{"a": NaN}', "[Infinity]", "[-Infinity]", "1e999",
                                      '{"a": 1, "a": 2}', '{"x": [{"b": 1, "b": 1}]}'])
def test_non_numbers_overflowing_numbers_and_duplicate_keys_are_refused(
        document: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        parse_json(document.encode())
    assert refused.value.code == "invalid_input"


def test_a_parse_error_says_where_in_words() -> None:
    with pytest.raises(RequestRefused) as refused:
        parse_json(b'{"a": 1,\n  "b": }', "The invocation body")
    assert refused.value.message.startswith("The invocation body is not valid JSON")
    assert "line 2, column 8" in refused.value.message
    assert (refused.value.extra["line"], refused.value.extra["column"]) == (2, 8)


def test_a_huge_integer_is_refused_not_raised() -> None:
    with pytest.raises(RequestRefused):
        parse_json(b"1" * 5000)


def test_shown_keeps_shallow_values_and_cuts_deep_ones_keeping_order() -> None:
    shallow = {"b": [1, 2, {"c": None}], "a": "x"}
    assert shown(shallow) is shallow
    deep = {"first": 1, "deep": nested(2000), "last": [3, 4]}
    cut = shown(deep)
    assert depth_of(cut) == MAX_DEPTH
    assert list(cut) == ["first", "deep", "last"] and cut["last"] == [3, 4]
    assert TOO_DEEP_MARKER in json.dumps(cut)
    assert json.loads(json.dumps(cut)) == cut
