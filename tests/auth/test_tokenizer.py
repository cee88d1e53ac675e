"""The strict pre-parser: shape, base64url, strict JSON (unit tests)."""

from __future__ import annotations

import pytest

from app.auth.tokenizer import (
    StrictJsonError,
    decode_base64url,
    loads_strict_json,
    parse_compact_jws,
)
from app.errors import InvalidSession
from tests.auth.keys import b64url, compact

HEADER = {"alg": "HS256"}
PAYLOAD = {"sub": "alice"}


def test_parses_a_well_formed_token() -> None:
    token = compact(HEADER, PAYLOAD, b"\x01\x02")
    parsed = parse_compact_jws(token, max_bytes=1024)
    assert parsed.header == HEADER
    assert parsed.payload == PAYLOAD
    assert parsed.signature == b"\x01\x02"
    assert parsed.signing_input == token.rsplit(".", 1)[0].encode()


def test_repr_does_not_show_the_token() -> None:
    token = compact(HEADER, {"sub": "secret-user-name"}, b"\x01\x02")
    assert "secret-user-name" not in repr(parse_compact_jws(token, max_bytes=1024))


def test_size_limit_is_inclusive() -> None:
    token = compact(HEADER, PAYLOAD, b"\x01")
    assert parse_compact_jws(token, max_bytes=len(token))
    with pytest.raises(InvalidSession, match="too large"):
        parse_compact_jws(token, max_bytes=len(token) - 1)


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


def test_base64url_is_canonical_and_unpadded() -> None:
    assert decode_base64url(b64url(b"\xff\xfe")) == b"\xff\xfe"
    with pytest.raises(ValueError, match="canonical"):
        decode_base64url("__9")  # "__8" with an unused bit set
    with pytest.raises(ValueError, match="base64url"):
        decode_base64url("A")  # a length no encoder produces


@pytest.mark.parametrize(
    "token",
    [
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",
        "a.b.c=",
        "a+.b.c",
        "a/.b.c",
        "a.b.c\n",
        ".b.c",
        "a..c",
        "é.b.c",
    ],
)
def test_shape_errors(token: str) -> None:
    with pytest.raises(InvalidSession):
        parse_compact_jws(token, max_bytes=1024)


def test_empty_signature_is_invalid() -> None:
    with pytest.raises(InvalidSession, match="signature"):
        parse_compact_jws(compact(HEADER, PAYLOAD, b""), max_bytes=1024)


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
    from app.auth.tokenizer import StrictJsonError, loads_strict_json

    if accepted:
        assert loads_strict_json(text, max_depth=4) == {"a": "\U0001f600"}
    else:
        with pytest.raises(StrictJsonError):
            loads_strict_json(text, max_depth=4)
