"""The strict pre-parser: shape, base64url, JSON objects (unit tests)."""

from __future__ import annotations

import pytest

from app.auth.tokenizer import decode_base64url, parse_compact_jws
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
