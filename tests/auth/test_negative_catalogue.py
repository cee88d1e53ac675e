"""security.md "Negative catalogue", item by item, at the verifier level.

Each case is its own test id (``item<N>-...``) and asserts the exact error class.
Item 13 (credentials) is in test_credentials.py; item 14 ends in the policy (it is
checked here as far as the session goes: the verified user grants only its tenant).
HTTP-level versions (401 and no vendor call) belong to the API tests.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from app.errors import InvalidSession, SessionExpired
from tests.auth.checks import assert_rejected
from tests.auth.conftest import (
    ES_ISSUER,
    HS_ISSUER,
    PEM_ISSUER,
    RS_ISSUER,
    AuthEnv,
    LoopbackServer,
    MakeVerifier,
    standard_config,
)
from tests.auth.keys import (
    HS_SECRET,
    EcKeyPair,
    RsaKeyPair,
    b64url,
    compact,
    ec_key,
    json_segment,
    jwks_document,
    non_canonical_segment,
    public_key_forms,
    resign,
    rsa_key,
    self_signed_certificate_der,
    session_claims,
    sign_token,
)

pytestmark = pytest.mark.anyio

HS_KEY = HS_SECRET.encode()


def rs_token(**claims: Any) -> str:
    return sign_token(session_claims(RS_ISSUER, **claims), rsa_key("rs-1"), "RS256")


def with_header(token: str, **members: Any) -> str:
    """The token's header with ``members`` added, re-signed by rs-1 (a valid signature)."""
    header_segment, payload_segment, _ = token.split(".")
    header = json.loads(_decode(header_segment))
    header.update(members)
    unsigned = f"{json_segment(header)}.{payload_segment}.x"
    return resign(unsigned, rsa_key("rs-1"), "RS256")


def _decode(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


async def test_control_a_valid_token_of_each_issuer_is_accepted(env: AuthEnv) -> None:
    """The catalogue below is only meaningful if the same tokens, unmodified, pass."""
    tokens = [
        rs_token(),
        sign_token(session_claims(ES_ISSUER), ec_key("es-256"), "ES256"),
        sign_token(session_claims(ES_ISSUER), ec_key("es-384", "P-384"), "ES384"),
        sign_token(session_claims(HS_ISSUER), HS_KEY, "HS256"),
        sign_token(session_claims(PEM_ISSUER), rsa_key("pem"), "RS256"),
    ]
    for token in tokens:
        user = await env.verifier.verify(token)
        assert (user.id, user.tenants) == ("alice", ("acme",))


# --- 1. alg none --------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["unsigned", "signed"])
@pytest.mark.parametrize("issuer", [RS_ISSUER, HS_ISSUER])
async def test_item1_alg_none(env: AuthEnv, alg: str, signature: str, issuer: str) -> None:
    header = {"alg": alg, "typ": "JWT"}
    payload = session_claims(issuer)
    if signature == "unsigned":
        token = compact(header, payload, b"")
    else:
        token = resign(compact(header, payload, b"x"), rsa_key("rs-1"), "RS256")
    await assert_rejected(env.verifier, token)


async def test_item1_alg_none_with_signature_reports_unsupported_algorithm(env: AuthEnv) -> None:
    token = resign(compact({"alg": "none"}, session_claims(RS_ISSUER), b"x"), HS_KEY, "HS256")
    await assert_rejected(env.verifier, token, detail="unsupported algorithm")


# --- 2. tampered signature or payload ---------------------------------------------------

TAMPER_CASES: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "rs256": (RS_ISSUER, lambda p: sign_token(p, rsa_key("rs-1"), "RS256")),
    "es256": (ES_ISSUER, lambda p: sign_token(p, ec_key("es-256"), "ES256")),
    "hs256": (HS_ISSUER, lambda p: sign_token(p, HS_KEY, "HS256")),
    "static-pem": (PEM_ISSUER, lambda p: sign_token(p, rsa_key("pem"), "RS256")),
}


@pytest.mark.parametrize("case", TAMPER_CASES)
async def test_item2_empty_signature(env: AuthEnv, case: str) -> None:
    issuer, sign = TAMPER_CASES[case]
    token = sign(session_claims(issuer)).rsplit(".", 1)[0] + "."
    await assert_rejected(env.verifier, token, detail="token signature is not valid")


@pytest.mark.parametrize("case", TAMPER_CASES)
@pytest.mark.parametrize("bit", [0, 7, 100])
async def test_item2_one_bit_flipped_in_signature(env: AuthEnv, case: str, bit: int) -> None:
    issuer, sign = TAMPER_CASES[case]
    signing_input, signature = sign(session_claims(issuer)).rsplit(".", 1)
    raw = bytearray(_decode(signature))
    raw[bit // 8 % len(raw)] ^= 1 << (bit % 8)
    await assert_rejected(
        env.verifier, f"{signing_input}.{b64url(bytes(raw))}", detail="token signature is not valid"
    )


@pytest.mark.parametrize("case", TAMPER_CASES)
async def test_item2_one_character_changed_in_payload(env: AuthEnv, case: str) -> None:
    issuer, sign = TAMPER_CASES[case]
    header, _, signature = sign(session_claims(issuer, sub="alice")).split(".")
    forged_payload = json_segment(session_claims(issuer, sub="alicf"))
    await assert_rejected(
        env.verifier,
        f"{header}.{forged_payload}.{signature}",
        detail="token signature is not valid",
    )


# --- 3. key confusion: HS256 keyed with the issuer's public key -----------------------


CONFUSION_TARGETS: dict[str, tuple[str, Callable[[], RsaKeyPair | EcKeyPair]]] = {
    "rsa-jwks": (RS_ISSUER, lambda: rsa_key("rs-1")),
    "ec-jwks": (ES_ISSUER, lambda: ec_key("es-256")),
    "rsa-static-pem": (PEM_ISSUER, lambda: rsa_key("pem")),
}


@pytest.mark.parametrize("form", ["pem", "jwk-json", "der", "openssh"])
@pytest.mark.parametrize("target", CONFUSION_TARGETS)
@pytest.mark.parametrize("with_kid", [True, False], ids=["kid", "no-kid"])
async def test_item3_hs256_keyed_with_public_key(
    env: AuthEnv, target: str, form: str, with_kid: bool
) -> None:
    issuer, key_of = CONFUSION_TARGETS[target]
    key = key_of()
    hmac_key = public_key_forms(key)[form]
    token = sign_token(session_claims(issuer), hmac_key, "HS256", kid=key.kid if with_kid else None)
    await assert_rejected(
        env.verifier, token, detail="token algorithm is not allowed for its issuer"
    )


# --- 4. algorithm outside the allow-list or not fitting the key -------------------------


async def test_item4_hs256_for_rs256_issuer(env: AuthEnv) -> None:
    token = sign_token(session_claims(RS_ISSUER), HS_KEY, "HS256", kid="rs-1")
    await assert_rejected(
        env.verifier, token, detail="token algorithm is not allowed for its issuer"
    )


async def test_item4_rs512_for_rs256_only_issuer(env: AuthEnv) -> None:
    token = sign_token(session_claims(RS_ISSUER), rsa_key("rs-1"), "RS512")
    await assert_rejected(
        env.verifier, token, detail="token algorithm is not allowed for its issuer"
    )


async def test_item4_es512_for_es256_es384_issuer(env: AuthEnv) -> None:
    token = sign_token(session_claims(ES_ISSUER), ec_key("es-521", "P-521"), "ES512")
    await assert_rejected(
        env.verifier, token, detail="token algorithm is not allowed for its issuer"
    )


async def test_item4_rs256_for_hs256_issuer(env: AuthEnv) -> None:
    token = sign_token(session_claims(HS_ISSUER), rsa_key("rs-1"), "RS256")
    await assert_rejected(
        env.verifier, token, detail="token algorithm is not allowed for its issuer"
    )


MIXED_ISSUER = "https://mixed.example.test/"


@pytest.fixture
async def mixed_env(
    loopback_server: LoopbackServer, make_verifier: MakeVerifier
) -> tuple[Any, str]:
    """An issuer allowing RS256, RS512, ES256, ES384, whose JWKS pins algorithms."""
    path = f"{uuid.uuid4().hex}/mixed/jwks.json"
    loopback_server.publish(
        path,
        jwks_document(
            rsa_key("mixed-rs512").jwk(alg="RS512"),
            rsa_key("mixed-rsa"),
            ec_key("mixed-p384", "P-384"),
        ),
    )
    session = standard_config(loopback_server.url(path), loopback_server.url(path + "-es"))
    session["issuers"] = [
        {
            "issuer": MIXED_ISSUER,
            "audiences": ["analytics-web"],
            "algorithms": ["RS256", "RS512", "ES256", "ES384"],
            "jwks_url": loopback_server.url(path),
        }
    ]
    return make_verifier(session), path


async def test_item4_control_mixed_issuer_accepts_fitting_keys(mixed_env: tuple[Any, str]) -> None:
    verifier, _ = mixed_env
    claims = session_claims(MIXED_ISSUER)
    await verifier.verify(sign_token(claims, rsa_key("mixed-rs512"), "RS512"))
    await verifier.verify(sign_token(claims, rsa_key("mixed-rsa"), "RS256"))
    await verifier.verify(sign_token(claims, ec_key("mixed-p384", "P-384"), "ES384"))


@pytest.mark.parametrize(
    ("case", "alg", "kid", "signer"),
    [
        # the JWK says alg RS512; a genuine RS256 signature by that very key must fail
        ("jwk-alg-differs", "RS256", "mixed-rs512", lambda: rsa_key("mixed-rs512")),
        # ES256 naming an RSA key (kty mismatch)
        ("kty-mismatch", "ES256", "mixed-rsa", lambda: ec_key("attacker-p256")),
        # ES256 naming a P-384 key (crv mismatch)
        ("crv-mismatch", "ES256", "mixed-p384", lambda: ec_key("attacker-p256")),
    ],
)
async def test_item4_alg_not_fitting_the_chosen_jwk(
    mixed_env: tuple[Any, str], case: str, alg: str, kid: str, signer: Any
) -> None:
    verifier, _ = mixed_env
    token = sign_token(session_claims(MIXED_ISSUER), signer(), alg, kid=kid)
    await assert_rejected(verifier, token, detail="token algorithm does not fit the issuer's key")


# --- 5. keys named by the token itself ------------------------------------------------


async def test_item5_embedded_jwk_with_attacker_kid(env: AuthEnv) -> None:
    attacker = rsa_key("attacker")
    token = sign_token(session_claims(RS_ISSUER), attacker, "RS256", header={"jwk": attacker.jwk()})
    await assert_rejected(env.verifier, token)


async def test_item5_embedded_jwk_with_trusted_kid(env: AuthEnv) -> None:
    attacker = rsa_key("attacker")
    token = sign_token(
        session_claims(RS_ISSUER),
        attacker,
        "RS256",
        kid="rs-1",
        header={"jwk": attacker.jwk(kid="rs-1")},
    )
    await assert_rejected(env.verifier, token, detail="token signature is not valid")


async def test_item5_embedded_jwk_for_static_key_issuer(env: AuthEnv) -> None:
    attacker = rsa_key("attacker")
    token = sign_token(
        session_claims(PEM_ISSUER), attacker, "RS256", kid=None, header={"jwk": attacker.jwk()}
    )
    await assert_rejected(env.verifier, token, detail="token signature is not valid")


@pytest.mark.parametrize("member", ["jku", "x5u"])
@pytest.mark.parametrize("kid", ["attacker", "rs-1"])
async def test_item5_remote_key_url_is_never_fetched(
    env: AuthEnv, loopback_server: LoopbackServer, member: str, kid: str
) -> None:
    attacker = rsa_key("attacker")
    path = f"{uuid.uuid4().hex}/attacker/{member}"
    loopback_server.publish(path, jwks_document(attacker.jwk(kid=kid)))
    token = sign_token(
        session_claims(RS_ISSUER),
        attacker,
        "RS256",
        kid=kid,
        header={member: loopback_server.url(path)},
    )
    await assert_rejected(env.verifier, token)
    assert loopback_server.hits(path) == 0


async def test_item5_x5c_chain(env: AuthEnv) -> None:
    attacker = rsa_key("attacker")
    chain = [b64url(self_signed_certificate_der(attacker))]
    for kid in ("attacker", "rs-1", None):
        token = sign_token(
            session_claims(RS_ISSUER), attacker, "RS256", kid=kid, header={"x5c": chain}
        )
        await assert_rejected(env.verifier, token)


# --- 6. kid values ------------------------------------------------------------------

ODD_KIDS = {
    "empty": "",
    "path-traversal": "../../dev/null",
    "absolute-path": "/dev/null",
    "sql": "rs-1' OR '1'='1",
    "shell": "rs-1; $(curl http://127.0.0.1/) `id` | cat",
    "10kb": "k" * 10 * 1024,
    "unicode": "ключ-🔑-rs-1",
    "nul-byte": "rs-1\u0000",
    "not-a-string": 1,
    "list": ["rs-1"],
}


@pytest.mark.parametrize("kid", ODD_KIDS)
async def test_item6_odd_kid_values(
    loopback_server: LoopbackServer, make_verifier: MakeVerifier, kid: str
) -> None:
    path = f"{uuid.uuid4().hex}/jwks.json"
    loopback_server.publish(path, jwks_document(rsa_key("rs-1")))
    # a large token limit, so that the 10 KB kid reaches the key lookup
    verifier = make_verifier(
        standard_config(loopback_server.url(path), loopback_server.url(path), max_token_bytes=65536)
    )
    # signed by the trusted key: only the kid is wrong
    token = sign_token(session_claims(RS_ISSUER), rsa_key("rs-1"), "RS256", kid=ODD_KIDS[kid])
    await assert_rejected(verifier, token)
    assert loopback_server.hits(path) <= 1


async def test_item6_10kb_kid_with_default_limit_is_too_large(env: AuthEnv) -> None:
    token = sign_token(session_claims(RS_ISSUER), rsa_key("rs-1"), "RS256", kid="k" * 10240)
    await assert_rejected(env.verifier, token, detail="session token is too large")


# (the 1,000-kid burst is in test_jwks_http.py, next to the other fetch-count tests)


# --- 7. crit --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [{"crit": ["exp-ext"], "exp-ext": 1}, {"crit": ["b64"], "b64": False}, {"crit": []}],
    ids=["unknown-param", "b64", "empty-list"],
)
async def test_item7_crit_header(env: AuthEnv, header: dict[str, Any]) -> None:
    token = sign_token(session_claims(RS_ISSUER), rsa_key("rs-1"), "RS256", header=header)
    raised = await assert_rejected(env.verifier, token)
    assert "crit" in raised.detail


# --- 8. time claims ---------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


TIME_CASES: dict[str, tuple[dict[str, Any], type[Exception]]] = {
    "exp-missing": ({"exp": None}, InvalidSession),
    "exp-past-beyond-leeway": ({"exp": -31}, SessionExpired),
    "exp-long-past": ({"exp": -86_400}, SessionExpired),
    "exp-string": ({"exp": "9999999999"}, InvalidSession),
    "exp-bool": ({"exp": True}, InvalidSession),
    "exp-null": ({"exp": "null"}, InvalidSession),
    "exp-list": ({"exp": [9999999999]}, InvalidSession),
    "exp-huge-int": ({"exp": 10**400}, InvalidSession),
    "nbf-future-beyond-leeway": ({"nbf": 40}, InvalidSession),
    "nbf-string": ({"nbf": "0"}, InvalidSession),
    "iat-future-beyond-leeway": ({"iat": 40}, InvalidSession),
    "iat-missing": ({"iat": None}, InvalidSession),
    "iat-string": ({"iat": "0"}, InvalidSession),
}


def _time_claims(overrides: dict[str, Any]) -> dict[str, Any]:
    now = _now()
    claims = session_claims(RS_ISSUER, now=now)
    for name, value in overrides.items():
        if value is None:
            claims.pop(name)
        elif value == "null":
            claims[name] = None
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**6:
            claims[name] = now + value  # relative seconds
        else:
            claims[name] = value
    return claims


@pytest.mark.parametrize("case", TIME_CASES)
async def test_item8_time_claims(env: AuthEnv, case: str) -> None:
    overrides, error = TIME_CASES[case]
    token = sign_token(_time_claims(overrides), rsa_key("rs-1"), "RS256")
    await assert_rejected(env.verifier, token, error)  # type: ignore[arg-type]


@pytest.mark.parametrize("claims", [{"exp": -20}, {"nbf": 20}, {"iat": 20}], ids=str)
async def test_item8_control_within_leeway_is_accepted(
    env: AuthEnv, claims: dict[str, Any]
) -> None:
    token = sign_token(_time_claims(claims), rsa_key("rs-1"), "RS256")
    await env.verifier.verify(token)


async def test_item8_expired_with_bad_signature_is_invalid_not_expired(env: AuthEnv) -> None:
    token = sign_token(_time_claims({"exp": -3600}), rsa_key("attacker"), "RS256", kid="rs-1")
    await assert_rejected(env.verifier, token, InvalidSession)


async def test_item8_expired_for_wrong_audience_is_invalid_not_expired(env: AuthEnv) -> None:
    claims = _time_claims({"exp": -3600})
    claims["aud"] = "someone-else"
    await assert_rejected(
        env.verifier, sign_token(claims, rsa_key("rs-1"), "RS256"), InvalidSession
    )


# --- 9. issuer --------------------------------------------------------------------------

WRONG_ISSUERS: dict[str, Any] = {
    "unknown": "https://evil.example.test/",
    "prefix": "https://rs.example.test",
    "suffix": "rs.example.test/",
    "superstring": "https://rs.example.test/evil",
    "superstring-host": "https://rs.example.test.evil.test/",
    "case-changed": "HTTPS://RS.EXAMPLE.TEST/",
    "trailing-space": RS_ISSUER + " ",
    "list": [RS_ISSUER],
    "object": {"iss": RS_ISSUER},
    "number": 1,
    "missing": None,
}


@pytest.mark.parametrize("case", WRONG_ISSUERS)
async def test_item9_wrong_issuer(env: AuthEnv, case: str) -> None:
    claims = session_claims(RS_ISSUER)
    if WRONG_ISSUERS[case] is None:
        del claims["iss"]
    else:
        claims["iss"] = WRONG_ISSUERS[case]
    await assert_rejected(env.verifier, sign_token(claims, rsa_key("rs-1"), "RS256"))


@pytest.mark.parametrize(
    ("case", "issuer", "key", "alg", "kid"),
    [
        # RS JWKS issuer, signed by the static-PEM issuer's key (named, and unnamed)
        ("jwks-issuer-pem-key-kid", RS_ISSUER, lambda: rsa_key("pem"), "RS256", "pem"),
        ("jwks-issuer-pem-key-no-kid", RS_ISSUER, lambda: rsa_key("pem"), "RS256", None),
        # static-PEM issuer, signed by the JWKS issuer's key with its kid
        ("pem-issuer-jwks-key", PEM_ISSUER, lambda: rsa_key("rs-1"), "RS256", "rs-1"),
        # EC issuer naming a kid from its own set but signed by the RS issuer's key
        ("es-issuer-rs-key", ES_ISSUER, lambda: rsa_key("rs-1"), "RS256", "rs-1"),
        # HS issuer, RS-signed
        ("hs-issuer-rs-key", HS_ISSUER, lambda: rsa_key("rs-1"), "RS256", "rs-1"),
    ],
)
async def test_item9_trusted_issuer_signed_with_another_issuers_key(
    env: AuthEnv, case: str, issuer: str, key: Any, alg: str, kid: str | None
) -> None:
    token = sign_token(session_claims(issuer), key(), alg, kid=kid)
    await assert_rejected(env.verifier, token)


async def test_item9_kid_of_issuer_b_never_verifies_issuer_a(
    loopback_server: LoopbackServer, make_verifier: MakeVerifier
) -> None:
    prefix = uuid.uuid4().hex
    a_path, b_path = f"{prefix}/a", f"{prefix}/b"
    loopback_server.publish(a_path, jwks_document(rsa_key("a-key")))
    loopback_server.publish(b_path, jwks_document(rsa_key("b-key")))
    session = standard_config(loopback_server.url(a_path), loopback_server.url(b_path))
    session["issuers"] = [
        {"issuer": "issuer-a", "audiences": ["analytics-web"], "algorithms": ["RS256"],
         "jwks_url": loopback_server.url(a_path)},
        {"issuer": "issuer-b", "audiences": ["analytics-web"], "algorithms": ["RS256"],
         "jwks_url": loopback_server.url(b_path)},
    ]  # fmt: skip
    verifier = make_verifier(session)
    await verifier.verify(sign_token(session_claims("issuer-b"), rsa_key("b-key"), "RS256"))
    forged = sign_token(session_claims("issuer-a"), rsa_key("b-key"), "RS256")
    await assert_rejected(verifier, forged, detail="token key id (kid) is unknown")


# --- 10. audience ---------------------------------------------------------------------

BAD_AUDIENCES: dict[str, Any] = {
    "missing": None,
    "wrong": "someone-else",
    "wrong-list": ["someone-else", "another"],
    "empty-string": "",
    "empty-list": [],
    "non-string-list": [123],
    "trusted-and-non-string": ["analytics-web", 123],
    "trusted-and-null": ["analytics-web", None],
    "nested-list": [["analytics-web"]],
    "object": {"aud": "analytics-web"},
    "number": 42,
    "null": "null",
    "prefix": "analytics-we",
    "case": "Analytics-Web",
}


@pytest.mark.parametrize("case", BAD_AUDIENCES)
async def test_item10_audience(env: AuthEnv, case: str) -> None:
    claims = session_claims(RS_ISSUER)
    value = BAD_AUDIENCES[case]
    if value is None:
        del claims["aud"]
    else:
        claims["aud"] = None if value == "null" else value
    await assert_rejected(env.verifier, sign_token(claims, rsa_key("rs-1"), "RS256"))


@pytest.mark.parametrize("aud", ["second-app", ["other", "analytics-web"]], ids=str)
async def test_item10_control_any_configured_audience_is_accepted(env: AuthEnv, aud: Any) -> None:
    await env.verifier.verify(rs_token(audience=aud))


# --- 11. malformed tokens ---------------------------------------------------------------


def _malformed() -> dict[str, str]:
    good = rs_token()
    header, payload, signature = good.split(".")
    claims_json = json.dumps(session_claims(RS_ISSUER))
    deep = "[" * 200 + "]" * 200
    return {
        "empty": "",
        "dots-only": "..",
        "one-segment": header,
        "two-segments": f"{header}.{payload}",
        "four-segments": f"{good}.{signature}",
        "five-segments-jwe": f"{header}.{payload}.{signature}.{signature}.{signature}",
        "padding-header": f"{header}=.{payload}.{signature}",
        "padding-signature": f"{header}.{payload}.{signature}==",
        "plus-slash": f"{header}.{payload}.{signature[:-2]}+/",
        "space": f"{header}.{payload} .{signature}",
        "trailing-newline": good + "\n",
        "leading-space": " " + good,
        "non-canonical-base64": f"{header}.{payload}.{non_canonical_segment(signature)}",
        "header-array": compact(["RS256"], session_claims(RS_ISSUER), b"sig"),
        "header-string": compact('"RS256"', session_claims(RS_ISSUER), b"sig"),
        "header-not-json": compact(b"{alg: RS256}", session_claims(RS_ISSUER), b"sig"),
        "payload-array": resign(compact({"alg": "RS256", "kid": "rs-1"}, "[1]", b"x"), rsa_key("rs-1"), "RS256"),
        "payload-number": resign(compact({"alg": "RS256", "kid": "rs-1"}, "1", b"x"), rsa_key("rs-1"), "RS256"),
        "payload-non-utf8": resign(compact({"alg": "RS256", "kid": "rs-1"}, b'{"sub":"\xff\xfe"}', b"x"), rsa_key("rs-1"), "RS256"),
        "header-non-utf8": compact(b'{"alg":"RS256","kid":"\xc3\x28"}', session_claims(RS_ISSUER), b"sig"),
        "duplicate-alg": resign(compact('{"alg":"RS256","alg":"none","kid":"rs-1"}', session_claims(RS_ISSUER), b"x"), rsa_key("rs-1"), "RS256"),
        "duplicate-claim": resign(compact({"alg": "RS256", "kid": "rs-1"}, claims_json[:-1] + ',"sub":"admin"}', b"x"), rsa_key("rs-1"), "RS256"),
        "nan": resign(compact({"alg": "RS256", "kid": "rs-1"}, claims_json[:-1] + ',"x":NaN}', b"x"), rsa_key("rs-1"), "RS256"),
        "over-max-token-bytes": rs_token(padding="p" * 9000),
        "deeply-nested-payload": resign(compact({"alg": "RS256", "kid": "rs-1"}, claims_json[:-1] + f',"x":{deep}}}', b"x"), rsa_key("rs-1"), "RS256"),
        "deeply-nested-header": compact('{"alg":"RS256","x":' + deep + "}", session_claims(RS_ISSUER), b"sig"),
        "empty-header": f".{payload}.{signature}",
        "empty-payload": f"{header}..{signature}",
    }  # fmt: skip


@pytest.fixture(scope="module")
def malformed_tokens() -> dict[str, str]:
    return _malformed()


MALFORMED_CASES = [
    "empty", "dots-only", "one-segment", "two-segments", "four-segments", "five-segments-jwe",
    "padding-header", "padding-signature", "plus-slash", "space", "trailing-newline",
    "leading-space", "non-canonical-base64", "header-array", "header-string", "header-not-json",
    "payload-array", "payload-number", "payload-non-utf8", "header-non-utf8", "duplicate-alg",
    "duplicate-claim", "nan", "over-max-token-bytes", "deeply-nested-payload",
    "deeply-nested-header", "empty-header", "empty-payload",
]  # fmt: skip


def test_item11_case_list_is_complete(malformed_tokens: dict[str, str]) -> None:
    assert sorted(MALFORMED_CASES) == sorted(malformed_tokens)


@pytest.mark.parametrize("case", MALFORMED_CASES)
async def test_item11_malformed(env: AuthEnv, malformed_tokens: dict[str, str], case: str) -> None:
    await assert_rejected(env.verifier, malformed_tokens[case])


# --- 12. bad signature encodings --------------------------------------------------------


def _es_forgery(alg: str, kid: str, signature: bytes) -> str:
    unsigned = compact({"alg": alg, "kid": kid}, session_claims(ES_ISSUER), b"")
    return unsigned + b64url(signature)


@pytest.mark.parametrize(
    ("case", "token_of"),
    [
        ("es256-r-s-zero", lambda: _es_forgery("ES256", "es-256", bytes(64))),
        ("es384-r-s-zero", lambda: _es_forgery("ES384", "es-384", bytes(96))),
        (
            "es256-der-encoded-zero",
            lambda: _es_forgery("ES256", "es-256", encode_dss_signature(0, 0)),
        ),
    ],
)
async def test_item12_ecdsa_r_s_zero(env: AuthEnv, case: str, token_of: Any) -> None:
    await assert_rejected(env.verifier, token_of(), detail="token signature is not valid")


def _resized(token: str, new_length: int) -> str:
    signing_input, signature = token.rsplit(".", 1)
    raw = _decode(signature)
    resized = raw[:new_length] if new_length <= len(raw) else raw + bytes(new_length - len(raw))
    return f"{signing_input}.{b64url(resized)}"


def _es256_der_signature() -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    unsigned = compact({"alg": "ES256", "kid": "es-256"}, session_claims(ES_ISSUER), b"")
    der = ec_key("es-256").private.sign(unsigned[:-1].encode(), ec.ECDSA(hashes.SHA256()))
    return unsigned + b64url(der)  # a genuine signature, in DER instead of r || s


@pytest.mark.parametrize(
    ("case", "token_of"),
    [
        ("es256-63-bytes", lambda: _resized(sign_token(session_claims(ES_ISSUER), ec_key("es-256"), "ES256"), 63)),
        ("es256-65-bytes", lambda: _resized(sign_token(session_claims(ES_ISSUER), ec_key("es-256"), "ES256"), 65)),
        ("es256-128-bytes", lambda: _resized(sign_token(session_claims(ES_ISSUER), ec_key("es-256"), "ES256"), 128)),
        ("es256-der-format", _es256_der_signature),
        ("rs256-255-bytes", lambda: _resized(rs_token(), 255)),
        ("rs256-257-bytes", lambda: _resized(rs_token(), 257)),
        ("hs256-truncated-16-bytes", lambda: _resized(sign_token(session_claims(HS_ISSUER), HS_KEY, "HS256"), 16)),
        ("hs256-one-byte", lambda: _resized(sign_token(session_claims(HS_ISSUER), HS_KEY, "HS256"), 1)),
        ("hs256-extended", lambda: _resized(sign_token(session_claims(HS_ISSUER), HS_KEY, "HS256"), 33)),
    ],
)  # fmt: skip
async def test_item12_signature_of_wrong_length(env: AuthEnv, case: str, token_of: Any) -> None:
    await assert_rejected(env.verifier, token_of(), detail="token signature is not valid")


# --- 14. a session for tenant A grants only tenant A ----------------------------------


async def test_item14_session_for_tenant_a_grants_only_a(env: AuthEnv) -> None:
    """The body's ``"tenant": "B"`` is refused by the policy (403 tenant_not_allowed);
    what the session contributes is that the user's tenants are exactly the claim's."""
    user = await env.verifier.verify(rs_token(tenant="acme"))
    assert user.tenants == ("acme",)
    assert "globex" not in user.tenants
