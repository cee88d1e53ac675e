"""Key validation and JWKS document parsing (unit tests)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app.auth.jwks import (
    DEFAULT_MAX_AGE_SECONDS,
    MAX_JWKS_KEYS,
    JwksFetchError,
    max_age_of,
    parse_jwks,
)
from app.jose_keys import HmacKey, KeyProblem, key_from_jwk, key_from_pem
from tests.auth.keys import b64url, ec_key, jwks_document, rsa_key


def test_rsa_jwk_fits_only_rs_algorithms() -> None:
    key = key_from_jwk(rsa_key("rs-1").jwk())
    assert key.kid == "rs-1"
    assert [alg for alg in ("RS256", "RS512", "ES256", "HS256") if key.fits(alg)] == [
        "RS256",
        "RS512",
    ]


def test_ec_jwk_fits_only_its_curve() -> None:
    key = key_from_jwk(ec_key("p384", "P-384").jwk())
    assert [alg for alg in ("ES256", "ES384", "ES512", "RS256") if key.fits(alg)] == ["ES384"]


def test_jwk_alg_pins_the_algorithm() -> None:
    key = key_from_jwk(rsa_key("rs-1").jwk(alg="RS512"))
    assert not key.fits("RS256")
    assert key.fits("RS512")


def test_jwk_keeps_only_public_members() -> None:
    jwk = rsa_key("rs-1").jwk(x5c=["abc"], extra="ignored")
    key = key_from_jwk(jwk)
    assert "x5c" not in repr(key)
    data = b"message"
    assert key.verify("RS256", data, rsa_key("rs-1").sign("RS256", data))


BAD_JWKS: dict[str, Any] = {
    "not-an-object": ["kty", "RSA"],
    "oct": {"kty": "oct", "k": b64url(b"secret-secret-secret-secret-1234")},
    "okp": {"kty": "OKP", "crv": "Ed25519", "x": b64url(b"x" * 32)},
    "use-enc": rsa_key("rs-1").jwk(use="enc"),
    "key-ops-encrypt": rsa_key("rs-1").jwk(key_ops=["encrypt"]),
    "private-rsa": rsa_key("rs-1").jwk(d=b64url(b"\x01" * 256)),
    "private-ec": ec_key("es-256").jwk(d=b64url(b"\x01" * 32)),
    "kid-number": rsa_key("rs-1").jwk(kid=7),
    "kid-empty": rsa_key("rs-1").jwk(kid=""),
    "alg-for-other-kty": rsa_key("rs-1").jwk(alg="ES256"),
    "alg-encryption": rsa_key("rs-1").jwk(alg="RSA-OAEP"),
    "alg-other-curve": ec_key("es-256").jwk(alg="ES384"),
    "rsa-missing-e": rsa_key("rs-1").jwk(e=None),
    "rsa-n-not-base64": rsa_key("rs-1").jwk(n="not base64!"),
    "rsa-1024-bits": rsa_key("small", 1024).jwk(),
    "rsa-even-exponent": rsa_key("rs-1").jwk(e=b64url(b"\x02")),
    "ec-unknown-curve": ec_key("es-256").jwk(crv="P-192"),
    "ec-point-not-on-curve": ec_key("es-256").jwk(y=b64url(b"\x01" * 32)),
    "ec-missing-x": ec_key("es-256").jwk(x=None),
}


@pytest.mark.parametrize("case", BAD_JWKS)
def test_unusable_jwk_is_refused(case: str) -> None:
    with pytest.raises(KeyProblem):
        key_from_jwk(BAD_JWKS[case])


def test_jwks_document_skips_unusable_keys() -> None:
    document = jwks_document(rsa_key("rs-1"), ec_key("es-256"), *BAD_JWKS.values())
    key_set = parse_jwks(json.dumps(document).encode())
    assert [key.kid for key in key_set.keys] == ["rs-1", "es-256"]
    assert key_set.skipped == len(BAD_JWKS)


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        (b"not json", "invalid"),
        (b"\xff\xfe", "invalid"),
        (b"[]", "invalid"),
        (b'{"keys": {}}', "invalid"),
        (b'{"nokeys": []}', "invalid"),
        (b'{"keys": [], "keys": []}', "invalid"),
        (b'{"keys": []}', "no_usable_keys"),
        (b'{"keys": [{"kty": "oct", "k": "AAAA"}]}', "no_usable_keys"),
        (b'{"keys": [' + b",".join([b"{}"] * (MAX_JWKS_KEYS + 1)) + b"]}", "too_large"),
    ],
)
def test_bad_jwks_document(body: bytes, outcome: str) -> None:
    with pytest.raises(JwksFetchError) as caught:
        parse_jwks(body)
    assert caught.value.outcome == outcome


@pytest.mark.parametrize(
    ("cache_control", "seconds"),
    [
        (None, DEFAULT_MAX_AGE_SECONDS),
        ("no-cache", DEFAULT_MAX_AGE_SECONDS),
        ("max-age=3600", 3600),
        ("public, max-age=1200, must-revalidate", 1200),
        ('max-age="900"', 900),
        ("max-age=60", 300),
        ("max-age=0", 300),
        ("max-age=9999999", 86_400),
        ("s-maxage=5000", DEFAULT_MAX_AGE_SECONDS),
    ],
)
def test_max_age_is_bounded(cache_control: str | None, seconds: float) -> None:
    headers = httpx.Headers({"Cache-Control": cache_control} if cache_control else {})
    assert max_age_of(headers) == seconds


def test_static_pem_becomes_a_jwk_without_kid() -> None:
    key = key_from_pem(ec_key("es-256").public_pem())
    assert (key.kty, key.crv, key.kid, key.alg) == ("EC", "P-256", None, None)
    with pytest.raises(KeyProblem):
        key_from_pem("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


def test_hmac_secret_that_is_a_public_key_is_refused() -> None:
    with pytest.raises(KeyProblem, match="looks like a public key"):
        HmacKey(SecretStr(rsa_key("rs-1").public_pem()), ["HS256"])
