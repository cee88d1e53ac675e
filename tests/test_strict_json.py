"""Strict JSON for untrusted text (unit tests)."""

from __future__ import annotations

import pytest

from app.strict_json import StrictJsonError, loads_strict_json


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"a":1,"a":2}', "duplicate key"),
        ('{"a":{"b":1,"b":1}}', "duplicate key"),
        ('{"a":NaN}', "NaN"),
        ('{"a":Infinity}', "NaN"),
        ('{"a":-Infinity}', "NaN"),
        ('{"a":1e999}', "out of range"),
        ('{"a":' + "1" * 5000 + "}", "not valid JSON"),
        ("[" * 17 + "]" * 17, "nested too deeply"),
        ('{"a":' * 17 + "1" + "}" * 17, "nested too deeply"),
        ("{'a':1}", "not valid JSON"),
        ('{"a":1}x', "not valid JSON"),
    ],
)
def test_strict_json_rejects(text: str, reason: str) -> None:
    with pytest.raises(StrictJsonError, match=reason):
        loads_strict_json(text, max_depth=16)


def test_strict_json_counts_only_real_nesting() -> None:
    brackets_in_strings = '{"a":"' + "[{" * 50 + '","b":"\\"[[["}'
    assert loads_strict_json(brackets_in_strings, max_depth=2)["b"] == '"[[['
    assert loads_strict_json("[" * 16 + "]" * 16, max_depth=16) == [[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        ('{"a": "\\ud800"}', False),
        ('{"\\udfff": 1}', False),
        ('{"a": "x\\ud83dy"}', False),
        ('{"a": "\\ud83d\\ude00"}', True),  # a valid pair is an ordinary character
    ],
)
def test_lone_surrogates_are_not_json_text(text: str, accepted: bool) -> None:
    if accepted:
        assert loads_strict_json(text, max_depth=4) == {"a": "\U0001f600"}
    else:
        with pytest.raises(StrictJsonError):
            loads_strict_json(text, max_depth=4)
