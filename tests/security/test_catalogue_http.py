"""security.md "Negative catalogue" over real HTTP, one test id per item and variant.

Every forged session goes to ``POST /v1/tokens`` on the running stack (broker and
sandbox under uvicorn, JWKS served by a loopback server). Each case asserts the 401
and its code (``session_expired`` only for a correctly signed token past ``exp``,
``unauthenticated`` only where there is no credential), that the sandbox recorded
no vendor call, and that the response does not quote the token.

The forgeries are otherwise valid — a configured tenant, a role that may use the
embed, and wherever possible a genuine signature by the issuer's own key — so a check
the broker skipped shows up as a 200 and a vendor call. The controls prove that the
unmodified tokens do get through.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from tests.auth.checks import assert_not_leaked
from tests.auth.keys import HS_SECRET as OTHER_HS_SECRET
from tests.auth.keys import (
    EcKeyPair,
    RsaKeyPair,
    SigningKey,
    b64url,
    compact,
    ec_key,
    json_segment,
    non_canonical_segment,
    public_key_forms,
    resign,
    rsa_key,
    self_signed_certificate_der,
    session_claims,
    sign_token,
)
from tests.security.conftest import (
    BURST_ISSUER,
    ES_ISSUER,
    MIXED_ISSUER,
    OTHER_HS_ISSUER,
    PEM_ISSUER,
    RS_ISSUER,
    SecurityStack,
)
from tests.support.policies import HS_ISSUER
from tests.support.policies import HS_SECRET as BROKER_HS_SECRET

EMBED = "sales-overview"
HS_KEY = BROKER_HS_SECRET.encode()
OTHER_HS_KEY = OTHER_HS_SECRET.encode()
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
BURST_SIZE = 1000
BURST_CONCURRENCY = 50
# One httpx pool serving 50 busy connections is slow (seconds per thousand requests);
# five pools of ten are not.
BURST_CLIENTS = 5

TokenFactory = Callable[[], str]


@pytest.fixture(autouse=True)
def _no_vendor_calls_yet(secured: SecurityStack) -> None:
    secured.stack.clear_vendor_requests()


# --- building tokens --------------------------------------------------------------------


def claims(issuer: str, **overrides: Any) -> dict[str, Any]:
    """Valid claims: tenant ``acme``, role ``viewer`` (allowed to use EMBED);
    ``overrides`` add or replace, None removes."""
    return session_claims(issuer, **{"roles": ["viewer"], **overrides})


def rs_token(payload: Mapping[str, Any] | None = None, **sign: Any) -> str:
    """Signed by rs-1, the RS issuer's own key."""
    return sign_token(payload or claims(RS_ISSUER), rsa_key("rs-1"), "RS256", **sign)


def es_token(payload: Mapping[str, Any] | None = None, **sign: Any) -> str:
    return sign_token(payload or claims(ES_ISSUER), ec_key("es-256"), "ES256", **sign)


def hs_token(payload: Mapping[str, Any] | None = None, **sign: Any) -> str:
    return sign_token(payload or claims(HS_ISSUER), HS_KEY, "HS256", **sign)


def pem_token(payload: Mapping[str, Any] | None = None, **sign: Any) -> str:
    return sign_token(payload or claims(PEM_ISSUER), rsa_key("pem"), "RS256", **sign)


def decode_segment(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def rs_signed(header: Any, payload: Any) -> str:
    """Raw header/payload (dicts, or JSON text for malformed ones) signed by rs-1."""
    return resign(compact(header, payload, b"x"), rsa_key("rs-1"), "RS256")


def resized_signature(token: str, length: int) -> str:
    signing_input, signature = token.rsplit(".", 1)
    raw = decode_segment(signature)
    resized = raw[:length] if length <= len(raw) else raw + bytes(length - len(raw))
    return f"{signing_input}.{b64url(resized)}"


def with_signature(token: str, signature: bytes) -> str:
    return f"{token.rsplit('.', 1)[0]}.{b64url(signature)}"


# --- talking to the broker --------------------------------------------------------------


def bearer_header(token: str) -> dict[bytes, bytes]:
    # bytes, so that tokens with non-ASCII characters reach the wire unchanged
    return {b"Authorization": b"Bearer " + token.encode("utf-8")}


def post_token(secured: SecurityStack, token: str, **body: Any) -> httpx.Response:
    stack = secured.stack
    return stack.client.post(
        f"{stack.broker}/v1/tokens", json={"embed": EMBED, **body}, headers=bearer_header(token)
    )


def assert_refused(
    secured: SecurityStack,
    response: httpx.Response,
    token: str,
    code: str = "invalid_session",
    status: int = 401,
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert_not_leaked(token, response.text, *response.headers.values())
    assert secured.stack.vendor_requests() == []
    return body


def refuse(secured: SecurityStack, token: str, code: str = "invalid_session") -> None:
    assert_refused(secured, post_token(secured, token), token, code)


# --- controls: the unmodified tokens are accepted -----------------------------------------

CONTROLS: dict[str, Callable[[str], str]] = {
    "hs256-app-backend": lambda sub: hs_token(claims(HS_ISSUER, sub=sub)),
    "hs256-other-backend": lambda sub: sign_token(
        claims(OTHER_HS_ISSUER, sub=sub), OTHER_HS_KEY, "HS256"
    ),
    "rs256-jwks-rs-1": lambda sub: rs_token(claims(RS_ISSUER, sub=sub)),
    "rs256-jwks-rs-2": lambda sub: sign_token(claims(RS_ISSUER, sub=sub), rsa_key("rs-2"), "RS256"),
    "es256-jwks": lambda sub: es_token(claims(ES_ISSUER, sub=sub)),
    "es384-jwks": lambda sub: sign_token(
        claims(ES_ISSUER, sub=sub), ec_key("es-384", "P-384"), "ES384"
    ),
    "rs256-static-pem": lambda sub: pem_token(claims(PEM_ISSUER, sub=sub)),
    "mixed-rs512-pinned": lambda sub: sign_token(
        claims(MIXED_ISSUER, sub=sub), rsa_key("mixed-rs512"), "RS512"
    ),
    "mixed-rs256": lambda sub: sign_token(
        claims(MIXED_ISSUER, sub=sub), rsa_key("mixed-rsa"), "RS256"
    ),
    "mixed-es384": lambda sub: sign_token(
        claims(MIXED_ISSUER, sub=sub), ec_key("mixed-p384", "P-384"), "ES384"
    ),
    "burst-issuer": lambda sub: sign_token(
        claims(BURST_ISSUER, sub=sub), rsa_key("burst-1"), "RS256"
    ),
}


@pytest.mark.parametrize("case", CONTROLS)
def test_control_valid_token_is_accepted(secured: SecurityStack, case: str) -> None:
    user = f"control-{uuid.uuid4().hex}"
    response = post_token(secured, CONTROLS[case](user))
    assert response.status_code == 200, response.text
    (call,) = secured.stack.vendor_requests()
    assert call["body"]["user"] == user


# --- 1. alg none ------------------------------------------------------------------------

NONE_TARGETS: dict[str, tuple[str, SigningKey, str]] = {
    "rs-issuer": (RS_ISSUER, rsa_key("rs-1"), "RS256"),
    "hs-issuer": (HS_ISSUER, HS_KEY, "HS256"),
}


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["unsigned", "signed"])
@pytest.mark.parametrize("target", NONE_TARGETS)
def test_item01_alg_none(secured: SecurityStack, target: str, signature: str, alg: str) -> None:
    issuer, key, real_alg = NONE_TARGETS[target]
    unsigned = compact({"alg": alg, "typ": "JWT"}, claims(issuer), b"")
    # "signed": a genuine signature by the issuer's own key, so only alg is wrong
    token = unsigned if signature == "unsigned" else resign(unsigned, key, real_alg)
    refuse(secured, token)


# --- 2. tampered signature or payload -----------------------------------------------------

GENUINE_SIGNERS: dict[str, tuple[str, Callable[[Mapping[str, Any]], str]]] = {
    "rs256-jwks": (RS_ISSUER, rs_token),
    "es256-jwks": (ES_ISSUER, es_token),
    "hs256": (HS_ISSUER, hs_token),
    "rs256-static-pem": (PEM_ISSUER, pem_token),
}


def _flip_bit(token: str, byte_index: int) -> str:
    signing_input, signature = token.rsplit(".", 1)
    raw = bytearray(decode_segment(signature))
    raw[byte_index] ^= 0x01
    return f"{signing_input}.{b64url(bytes(raw))}"


def _payload_char_changed(issuer: str, sign: Callable[[Mapping[str, Any]], str]) -> str:
    header, _, signature = sign(claims(issuer, sub="alice")).split(".")
    return f"{header}.{json_segment(claims(issuer, sub='alicf'))}.{signature}"


TAMPERINGS: dict[str, Callable[[str, Callable[[Mapping[str, Any]], str]], str]] = {
    "empty-signature": lambda iss, sign: sign(claims(iss)).rsplit(".", 1)[0] + ".",
    "bit-flipped-first-byte": lambda iss, sign: _flip_bit(sign(claims(iss)), 0),
    "bit-flipped-last-byte": lambda iss, sign: _flip_bit(sign(claims(iss)), -1),
    "payload-char-changed": _payload_char_changed,
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
@pytest.mark.parametrize("signer", GENUINE_SIGNERS)
def test_item02_tampered(secured: SecurityStack, signer: str, tampering: str) -> None:
    issuer, sign = GENUINE_SIGNERS[signer]
    refuse(secured, TAMPERINGS[tampering](issuer, sign))


# --- 3. key confusion: HS256 keyed with the issuer's public key ----------------------------


CONFUSION_TARGETS: dict[str, tuple[str, Callable[[], RsaKeyPair | EcKeyPair]]] = {
    "rsa-jwks": (RS_ISSUER, lambda: rsa_key("rs-1")),
    "ec-jwks": (ES_ISSUER, lambda: ec_key("es-256")),
    "rsa-static-pem": (PEM_ISSUER, lambda: rsa_key("pem")),
}


@pytest.mark.parametrize("with_kid", [True, False], ids=["kid", "no-kid"])
@pytest.mark.parametrize("form", ["pem", "jwk-json", "der", "openssh"])
@pytest.mark.parametrize("target", CONFUSION_TARGETS)
def test_item03_hs256_keyed_with_public_key(
    secured: SecurityStack, target: str, form: str, with_kid: bool
) -> None:
    issuer, key_of = CONFUSION_TARGETS[target]
    key = key_of()
    token = sign_token(
        claims(issuer), public_key_forms(key)[form], "HS256", kid=key.kid if with_kid else None
    )
    refuse(secured, token)


# --- 4. algorithm outside the allow-list or not fitting the key -----------------------------


def _es384_by_p256_key() -> str:
    """ES384 naming the P-256 key and signed by it with SHA-384: valid ECDSA maths,
    but the curve does not fit the algorithm."""
    key = ec_key("es-256")
    unsigned = compact({"alg": "ES384", "kid": key.kid}, claims(ES_ISSUER), b"")
    der = key.private.sign(unsigned[:-1].encode(), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return unsigned + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


ALGORITHM_CASES: dict[str, TokenFactory] = {
    "hs256-for-rs256-jwks-issuer": lambda: sign_token(
        claims(RS_ISSUER), HS_KEY, "HS256", kid="rs-1"
    ),
    "hs256-for-rs256-static-pem-issuer": lambda: sign_token(claims(PEM_ISSUER), HS_KEY, "HS256"),
    "rs512-for-rs256-only-issuer": lambda: sign_token(claims(RS_ISSUER), rsa_key("rs-1"), "RS512"),
    "es512-for-es256-es384-issuer": lambda: sign_token(
        claims(ES_ISSUER), ec_key("es-521", "P-521"), "ES512"
    ),
    "rs256-for-hs256-issuer": lambda: sign_token(claims(HS_ISSUER), rsa_key("rs-1"), "RS256"),
    "es256-for-rs256-issuer": lambda: sign_token(
        claims(RS_ISSUER), ec_key("es-256"), "ES256", kid="rs-1"
    ),
    # the JWK pins alg RS512; a genuine RS256 signature by that very key must fail
    "jwk-alg-differs": lambda: sign_token(
        claims(MIXED_ISSUER), rsa_key("mixed-rs512"), "RS256", kid="mixed-rs512"
    ),
    "jwk-kty-mismatch": lambda: sign_token(
        claims(MIXED_ISSUER), ec_key("attacker-p256"), "ES256", kid="mixed-rsa"
    ),
    "jwk-crv-mismatch": lambda: sign_token(
        claims(MIXED_ISSUER), ec_key("attacker-p256"), "ES256", kid="mixed-p384"
    ),
    "jwk-crv-mismatch-genuine-key": _es384_by_p256_key,
}


@pytest.mark.parametrize("case", ALGORITHM_CASES)
def test_item04_algorithm(secured: SecurityStack, case: str) -> None:
    refuse(secured, ALGORITHM_CASES[case]())


# --- 5. keys named by the token itself ----------------------------------------------------


def _x5c(kid: str | None) -> str:
    attacker = rsa_key("attacker")
    chain = [b64url(self_signed_certificate_der(attacker))]
    return sign_token(claims(RS_ISSUER), attacker, "RS256", kid=kid, header={"x5c": chain})


EMBEDDED_KEY_CASES: dict[str, TokenFactory] = {
    "jwk-attacker-kid": lambda: sign_token(
        claims(RS_ISSUER), rsa_key("attacker"), "RS256", header={"jwk": rsa_key("attacker").jwk()}
    ),
    "jwk-trusted-kid": lambda: sign_token(
        claims(RS_ISSUER),
        rsa_key("attacker"),
        "RS256",
        kid="rs-1",
        header={"jwk": rsa_key("attacker").jwk(kid="rs-1")},
    ),
    "jwk-static-pem-issuer": lambda: sign_token(
        claims(PEM_ISSUER),
        rsa_key("attacker"),
        "RS256",
        kid=None,
        header={"jwk": rsa_key("attacker").jwk()},
    ),
    "jwk-ec-issuer": lambda: sign_token(
        claims(ES_ISSUER),
        ec_key("attacker-p256"),
        "ES256",
        kid="es-256",
        header={"jwk": ec_key("attacker-p256").jwk(kid="es-256")},
    ),
    "x5c-attacker-kid": lambda: _x5c("attacker"),
    "x5c-trusted-kid": lambda: _x5c("rs-1"),
    "x5c-no-kid": lambda: _x5c(None),
}


@pytest.mark.parametrize("case", EMBEDDED_KEY_CASES)
def test_item05_embedded_key(secured: SecurityStack, case: str) -> None:
    refuse(secured, EMBEDDED_KEY_CASES[case]())


@pytest.mark.parametrize("kid", ["attacker", "rs-1"], ids=["attacker-kid", "trusted-kid"])
@pytest.mark.parametrize("member", ["jku", "x5u"])
def test_item05_remote_key_url_is_never_fetched(
    secured: SecurityStack, member: str, kid: str
) -> None:
    attacker = rsa_key("attacker")
    path = f"attacker/{uuid.uuid4().hex}/{member}"
    secured.keys_server.publish(path, {"keys": [attacker.jwk(kid=kid)]})
    token = sign_token(
        claims(RS_ISSUER),
        attacker,
        "RS256",
        kid=kid,
        header={member: secured.keys_server.url(path)},
    )
    refuse(secured, token)
    assert secured.keys_server.hits(path) == 0


# --- 6. kid values --------------------------------------------------------------------------

ODD_KIDS: dict[str, Any] = {
    "empty": "",
    "path-traversal": "../../dev/null",
    "absolute-path": "/dev/null",
    "sql": "rs-1' OR '1'='1",
    "shell": "rs-1; $(curl http://127.0.0.1/) `id` | cat",
    "10kb": "k" * 10 * 1024,  # over max_token_bytes (8192): refused as too large
    "unicode": "ключ-🔑-rs-1",
    "nul-byte": "rs-1\u0000",
    "not-a-string": 1,
    "list": ["rs-1"],
}


@pytest.mark.parametrize("kid", ODD_KIDS)
def test_item06_odd_kid_signed_by_trusted_key(secured: SecurityStack, kid: str) -> None:
    """Signed by rs-1 itself: only the kid is wrong."""
    refuse(secured, rs_token(kid=ODD_KIDS[kid]))


# The classic kid attacks on an HMAC verifier: a path to an empty file, or an SQL
# injection that makes the key lookup return a value the attacker chose.
KID_ATTACKS: dict[str, TokenFactory] = {
    "hs-issuer-dev-null-empty-key": lambda: sign_token(
        claims(HS_ISSUER), b"", "HS256", kid="../../../../../../dev/null"
    ),
    "hs-issuer-sql-union-key": lambda: sign_token(
        claims(HS_ISSUER), b"attacker", "HS256", kid="x' UNION SELECT 'attacker' --"
    ),
    "rs-issuer-dev-null-empty-key": lambda: sign_token(
        claims(RS_ISSUER), b"", "HS256", kid="../../../../../../dev/null"
    ),
    "static-pem-issuer-path-kid-attacker-key": lambda: sign_token(
        claims(PEM_ISSUER), rsa_key("attacker"), "RS256", kid="../../config/pem"
    ),
}


@pytest.mark.parametrize("case", KID_ATTACKS)
def test_item06_kid_attack(secured: SecurityStack, case: str) -> None:
    refuse(secured, KID_ATTACKS[case]())


@pytest.mark.anyio
async def test_item06_burst_of_1000_distinct_unknown_kids(secured: SecurityStack) -> None:
    """Genuinely signed by the issuer's only key, each naming a kid nobody published:
    all refused, and the JWKS endpoint sees at most one extra fetch."""
    fetches_before = secured.jwks_fetches(BURST_ISSUER)
    assert fetches_before >= 1  # the start-up fetch
    payload = claims(BURST_ISSUER)
    tokens = [
        sign_token(payload, rsa_key("burst-1"), "RS256", kid=f"unknown-{uuid.uuid4().hex}")
        for _ in range(BURST_SIZE)
    ]
    url = f"{secured.stack.broker}/v1/tokens"
    pending = iter(tokens)  # shared by the workers: each token is sent once
    responses: dict[str, httpx.Response] = {}

    async def worker(client: httpx.AsyncClient) -> None:
        for token in pending:
            responses[token] = await client.post(
                url, json={"embed": EMBED}, headers=bearer_header(token)
            )

    tls = ssl.create_default_context()  # unused on http://, but costly per client
    async with contextlib.AsyncExitStack() as clients_stack:
        clients = [
            await clients_stack.enter_async_context(httpx.AsyncClient(verify=tls, timeout=30))
            for _ in range(BURST_CLIENTS)
        ]
        await asyncio.gather(
            *(worker(clients[i % BURST_CLIENTS]) for i in range(BURST_CONCURRENCY))
        )

    assert len(responses) == BURST_SIZE
    for token, response in responses.items():
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "invalid_session"
        assert_not_leaked(token, response.text)
    assert secured.jwks_fetches(BURST_ISSUER) <= fetches_before + 1
    assert secured.stack.vendor_requests() == []


# --- 7. crit --------------------------------------------------------------------------------

CRIT_CASES: dict[str, TokenFactory] = {
    "rs-unknown-param": lambda: rs_token(header={"crit": ["exp-ext"], "exp-ext": 1}),
    "rs-b64": lambda: rs_token(header={"crit": ["b64"], "b64": False}),
    "rs-empty-list": lambda: rs_token(header={"crit": []}),
    "hs-unknown-param": lambda: hs_token(header={"crit": ["exp-ext"], "exp-ext": 1}),
}


@pytest.mark.parametrize("case", CRIT_CASES)
def test_item07_crit_header(secured: SecurityStack, case: str) -> None:
    refuse(secured, CRIT_CASES[case]())


# --- 8. time claims -------------------------------------------------------------------------

# Offsets are two minutes from now, well beyond the 30 s leeway, so the outcome does
# not depend on when the second ticks over.
FAR = 120


def _now() -> int:
    return int(time.time())


TIME_CASES: dict[str, tuple[TokenFactory, str]] = {
    "exp-missing": (lambda: rs_token(claims(RS_ISSUER, exp=None)), "invalid_session"),
    "exp-past-beyond-leeway": (
        lambda: rs_token(claims(RS_ISSUER, exp=_now() - FAR)),
        "session_expired",
    ),
    "exp-long-past": (lambda: rs_token(claims(RS_ISSUER, exp=_now() - 86_400)), "session_expired"),
    "exp-past-hs-issuer": (
        lambda: hs_token(claims(HS_ISSUER, exp=_now() - FAR)),
        "session_expired",
    ),
    "exp-past-static-pem-issuer": (
        lambda: pem_token(claims(PEM_ISSUER, exp=_now() - FAR)),
        "session_expired",
    ),
    "exp-string": (lambda: rs_token(claims(RS_ISSUER, exp=str(_now() + 600))), "invalid_session"),
    "exp-bool": (lambda: rs_token(claims(RS_ISSUER, exp=True)), "invalid_session"),
    "exp-list": (lambda: rs_token(claims(RS_ISSUER, exp=[_now() + 600])), "invalid_session"),
    "nbf-future-beyond-leeway": (
        lambda: rs_token(claims(RS_ISSUER, nbf=_now() + FAR)),
        "invalid_session",
    ),
    "nbf-string": (lambda: rs_token(claims(RS_ISSUER, nbf="0")), "invalid_session"),
    "iat-future-beyond-leeway": (
        lambda: rs_token(claims(RS_ISSUER, iat=_now() + FAR)),
        "invalid_session",
    ),
    "iat-missing": (lambda: rs_token(claims(RS_ISSUER, iat=None)), "invalid_session"),
    # expired AND forged: the forgery wins, "expired" is said only of genuine tokens
    "exp-past-bad-signature": (
        lambda: sign_token(
            claims(RS_ISSUER, exp=_now() - FAR), rsa_key("attacker"), "RS256", kid="rs-1"
        ),
        "invalid_session",
    ),
    "exp-past-wrong-audience": (
        lambda: rs_token(claims(RS_ISSUER, exp=_now() - FAR, aud="someone-else")),
        "invalid_session",
    ),
}


@pytest.mark.parametrize("case", TIME_CASES)
def test_item08_time_claims(secured: SecurityStack, case: str) -> None:
    token_of, code = TIME_CASES[case]
    refuse(secured, token_of(), code)


# --- 9. issuer ------------------------------------------------------------------------------

WRONG_ISSUERS: dict[str, Any] = {
    "unknown": "https://evil.example.test/",
    "prefix": "https://rs.example.test",
    "suffix": "rs.example.test/",
    "superstring": "https://rs.example.test/evil",
    "superstring-host": "https://rs.example.test.evil.test/",
    "case-changed": "HTTPS://RS.EXAMPLE.TEST/",
    "trailing-space": RS_ISSUER + " ",
    "list": [RS_ISSUER],
    "list-of-two": [RS_ISSUER, HS_ISSUER],
    "object": {"iss": RS_ISSUER},
    "number": 1,
    "missing": None,
}


@pytest.mark.parametrize("case", WRONG_ISSUERS)
def test_item09_wrong_issuer(secured: SecurityStack, case: str) -> None:
    """Signed by the RS issuer's own key; only ``iss`` is wrong."""
    refuse(secured, rs_token(claims(RS_ISSUER, iss=WRONG_ISSUERS[case])))


@pytest.mark.parametrize("iss", ["app-backen", "app-backend-2", "xapp-backend"])
def test_item09_wrong_issuer_hs(secured: SecurityStack, iss: str) -> None:
    """Signed with the HS issuer's own secret; only ``iss`` is wrong."""
    refuse(secured, hs_token(claims(HS_ISSUER, iss=iss)))


OTHER_ISSUERS_KEY: dict[str, TokenFactory] = {
    "rs-jwks-issuer-pem-issuer-key-kid": lambda: sign_token(
        claims(RS_ISSUER), rsa_key("pem"), "RS256", kid="pem"
    ),
    "rs-jwks-issuer-pem-issuer-key-no-kid": lambda: sign_token(
        claims(RS_ISSUER), rsa_key("pem"), "RS256", kid=None
    ),
    "rs-jwks-issuer-burst-issuer-key-and-kid": lambda: sign_token(
        claims(RS_ISSUER), rsa_key("burst-1"), "RS256"
    ),
    "burst-issuer-rs-issuer-key-and-kid": lambda: sign_token(
        claims(BURST_ISSUER), rsa_key("rs-1"), "RS256"
    ),
    "burst-issuer-rs-issuer-key-no-kid": lambda: sign_token(
        claims(BURST_ISSUER), rsa_key("rs-1"), "RS256", kid=None
    ),
    "pem-issuer-rs-issuer-key": lambda: sign_token(claims(PEM_ISSUER), rsa_key("rs-1"), "RS256"),
    "es-issuer-mixed-issuer-key": lambda: sign_token(
        claims(ES_ISSUER), ec_key("mixed-p384", "P-384"), "ES384", kid="es-384"
    ),
    "mixed-issuer-es-issuer-key": lambda: sign_token(
        claims(MIXED_ISSUER), ec_key("es-384", "P-384"), "ES384"
    ),
    "hs-issuer-other-hs-issuer-secret": lambda: sign_token(
        claims(HS_ISSUER), OTHER_HS_KEY, "HS256"
    ),
    "other-hs-issuer-hs-issuer-secret": lambda: sign_token(
        claims(OTHER_HS_ISSUER), HS_KEY, "HS256"
    ),
    "hs-issuer-rs-issuer-key": lambda: sign_token(claims(HS_ISSUER), rsa_key("rs-1"), "RS256"),
}


@pytest.mark.parametrize("case", OTHER_ISSUERS_KEY)
def test_item09_trusted_issuer_signed_with_another_issuers_key(
    secured: SecurityStack, case: str
) -> None:
    refuse(secured, OTHER_ISSUERS_KEY[case]())


# --- 10. audience ---------------------------------------------------------------------------

BAD_AUDIENCES: dict[str, Any] = {
    "missing": None,
    "wrong": "someone-else",
    "wrong-list": ["someone-else", "another"],
    "empty-string": "",
    "empty-list": [],
    "non-string-list": [123],
    "trusted-and-non-string": ["analytics-web", 123],
    "trusted-and-null": ["analytics-web", None],
    "trusted-and-object": ["analytics-web", {"aud": "analytics-web"}],
    "nested-list": [["analytics-web"]],
    "object": {"aud": "analytics-web"},
    "number": 42,
    "bool": True,
    "prefix": "analytics-we",
    "superstring": "analytics-web-evil",
    "case-changed": "Analytics-Web",
}


@pytest.mark.parametrize("case", BAD_AUDIENCES)
def test_item10_audience(secured: SecurityStack, case: str) -> None:
    refuse(secured, rs_token(claims(RS_ISSUER, aud=BAD_AUDIENCES[case])))


def test_item10_audience_null(secured: SecurityStack) -> None:
    payload = claims(RS_ISSUER)
    payload["aud"] = None  # claims() would remove it
    refuse(secured, rs_token(payload))


# --- 11. malformed tokens -------------------------------------------------------------------

DEEP = "[" * 200 + "]" * 200


def _non_canonical(token: str) -> str:
    signing_input, signature = token.rsplit(".", 1)
    return f"{signing_input}.{non_canonical_segment(signature)}"


def _standard_base64(token: str) -> str:
    """The genuine token in the standard alphabet (``+/``) instead of base64url."""
    changed = token.replace("-", "+").replace("_", "/")
    assert changed != token
    return changed


def _claims_json(**extra: Any) -> str:
    return json.dumps(claims(RS_ISSUER, **extra))


def _segments() -> tuple[str, str, str]:
    header, payload, signature = rs_token().split(".")
    return header, payload, signature


RS1_HEADER = {"alg": "RS256", "kid": "rs-1"}

MALFORMED: dict[str, TokenFactory] = {
    "one-segment": lambda: _segments()[0],
    "two-segments": lambda: ".".join(_segments()[:2]),
    "four-segments": lambda: rs_token() + "." + _segments()[2],
    "five-segments-jwe": lambda: ".".join([*_segments(), _segments()[2], _segments()[2]]),
    "dots-only": lambda: "..",
    "padding-header": lambda: "{}=.{}.{}".format(*_segments()),
    "padding-signature": lambda: "{}.{}.{}==".format(*_segments()),
    "standard-base64-alphabet": lambda: _standard_base64(rs_token()),
    "non-base64url-char": lambda: "{}.{}*.{}".format(*_segments()),
    "percent-encoded-dots": lambda: rs_token().replace(".", "%2E"),
    "non-ascii-char": lambda: "{}.{}.{}é".format(*_segments()),
    "non-canonical-base64": lambda: _non_canonical(rs_token()),
    "header-not-json": lambda: compact(b"{alg: RS256}", claims(RS_ISSUER), b"sig"),
    "header-array": lambda: compact(["RS256"], claims(RS_ISSUER), b"sig"),
    "header-string": lambda: compact('"RS256"', claims(RS_ISSUER), b"sig"),
    "payload-not-json": lambda: rs_signed(RS1_HEADER, b"sub=alice&org_id=acme"),
    "payload-array": lambda: rs_signed(RS1_HEADER, "[1]"),
    "payload-number": lambda: rs_signed(RS1_HEADER, "1"),
    "header-non-utf8": lambda: rs_signed(
        b'{"alg":"RS256","kid":"rs-1\xc3\x28"}', claims(RS_ISSUER)
    ),
    "payload-non-utf8": lambda: rs_signed(
        RS1_HEADER, _claims_json()[:-1].encode() + b',"x":"\xff\xfe"}'
    ),
    # valid UTF-8 bytes, but JSON that decodes to a string no UTF-8 can encode
    "payload-lone-surrogate-user-id": lambda: rs_token(claims(RS_ISSUER, sub="\ud800")),
    "payload-lone-surrogate-tenant": lambda: rs_token(claims(RS_ISSUER, tenant="acme\udfff")),
    # last-wins parsing would read RS256 and accept the genuine signature
    "duplicate-alg-none-first": lambda: rs_signed(
        '{"alg":"none","alg":"RS256","kid":"rs-1"}', claims(RS_ISSUER)
    ),
    "duplicate-alg-none-last": lambda: rs_signed(
        '{"alg":"RS256","alg":"none","kid":"rs-1"}', claims(RS_ISSUER)
    ),
    "duplicate-sub-claim": lambda: rs_signed(RS1_HEADER, _claims_json()[:-1] + ',"sub":"admin"}'),
    "duplicate-tenant-claim": lambda: rs_signed(
        RS1_HEADER, _claims_json()[:-1] + ',"org_id":"globex"}'
    ),
    "nan-claim": lambda: rs_signed(RS1_HEADER, _claims_json()[:-1] + ',"x":NaN}'),
    "over-max-token-bytes": lambda: rs_token(claims(RS_ISSUER, padding="p" * 9000)),
    "deeply-nested-payload": lambda: rs_signed(RS1_HEADER, _claims_json()[:-1] + f',"x":{DEEP}}}'),
    "deeply-nested-header": lambda: rs_signed(
        '{"alg":"RS256","kid":"rs-1","x":' + DEEP + "}", claims(RS_ISSUER)
    ),
    "empty-header": lambda: ".{1}.{2}".format(*_segments()),
    "empty-payload": lambda: "{0}..{2}".format(*_segments()),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_item11_malformed(secured: SecurityStack, case: str) -> None:
    refuse(secured, MALFORMED[case]())


# --- 12. signature encodings ----------------------------------------------------------------


def _es_forged(alg: str, kid: str, signature: bytes) -> str:
    return compact({"alg": alg, "kid": kid}, claims(ES_ISSUER), signature)


def _es256_der_signature() -> str:
    """A genuine ES256 signature, but DER-encoded instead of JWS ``r || s``."""
    unsigned = compact({"alg": "ES256", "kid": "es-256"}, claims(ES_ISSUER), b"")
    der = ec_key("es-256").private.sign(unsigned[:-1].encode(), ec.ECDSA(hashes.SHA256()))
    return unsigned + b64url(der)


SIGNATURE_ENCODINGS: dict[str, TokenFactory] = {
    "es256-r-s-zero": lambda: _es_forged("ES256", "es-256", bytes(64)),
    "es384-r-s-zero": lambda: _es_forged("ES384", "es-384", bytes(96)),
    "es256-r-s-zero-der": lambda: _es_forged("ES256", "es-256", encode_dss_signature(0, 0)),
    "es256-r-s-curve-order": lambda: _es_forged(
        "ES256", "es-256", P256_ORDER.to_bytes(32, "big") * 2
    ),
    "es256-63-bytes": lambda: resized_signature(es_token(), 63),
    "es256-65-bytes": lambda: resized_signature(es_token(), 65),
    "es256-128-bytes": lambda: resized_signature(es_token(), 128),
    "es256-der-format": _es256_der_signature,
    "rs256-255-bytes": lambda: resized_signature(rs_token(), 255),
    "rs256-257-bytes": lambda: resized_signature(rs_token(), 257),
    "rs256-1-byte": lambda: with_signature(rs_token(), b"\x00"),
    "hs256-16-bytes": lambda: resized_signature(hs_token(), 16),
    "hs256-1-byte": lambda: resized_signature(hs_token(), 1),
    "hs256-33-bytes": lambda: resized_signature(hs_token(), 33),
}


@pytest.mark.parametrize("case", SIGNATURE_ENCODINGS)
def test_item12_signature_encoding(secured: SecurityStack, case: str) -> None:
    refuse(secured, SIGNATURE_ENCODINGS[case]())


# --- 13. credentials ------------------------------------------------------------------------

Headers = list[tuple[str, str]]


def _two_headers(first: str, second: str) -> Headers:
    return [("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")]


# (valid, forged) -> headers; the valid token alone would be accepted
CREDENTIAL_CASES: dict[str, Callable[[str, str], Headers]] = {
    "two-authorization-headers-same-valid-token": lambda valid, _: _two_headers(valid, valid),
    "two-authorization-headers-valid-then-forged": lambda valid, forged: _two_headers(
        valid, forged
    ),
    "two-authorization-headers-forged-then-valid": lambda valid, forged: _two_headers(
        forged, valid
    ),
    "basic-credentials": lambda _, __: [
        ("Authorization", "Basic " + base64.b64encode(b"alice:secret").decode())
    ],
    "basic-scheme-carrying-a-valid-jwt": lambda valid, _: [("Authorization", f"Basic {valid}")],
    "token-scheme-carrying-a-valid-jwt": lambda valid, _: [("Authorization", f"Token {valid}")],
    "no-scheme-valid-jwt": lambda valid, _: [("Authorization", valid)],
    "bearer-without-token": lambda _, __: [("Authorization", "Bearer")],
}


def _valid_and_forged() -> tuple[str, str]:
    valid = rs_token(claims(RS_ISSUER, sub=f"cred-{uuid.uuid4().hex}"))
    return valid, _flip_bit(valid, 0)


@pytest.mark.parametrize("case", CREDENTIAL_CASES)
def test_item13_credentials(secured: SecurityStack, case: str) -> None:
    valid, forged = _valid_and_forged()
    headers = CREDENTIAL_CASES[case](valid, forged)
    client = secured.stack.client
    request = client.build_request(
        "POST", f"{secured.stack.broker}/v1/tokens", json={"embed": EMBED}, headers=headers
    )
    # httpx must not have merged the duplicates: both go on the wire
    assert request.headers.get_list("authorization", split_commas=False) == [v for _, v in headers]
    response = client.send(request)
    assert_refused(secured, response, valid)
    assert_not_leaked(forged, response.text)


@pytest.mark.parametrize(
    "params",
    [{"access_token": "T"}, {"token": "T"}, {"jwt": "T", "session": "T", "authorization": "T"}],
    ids=["access_token", "token", "several-names"],
)
def test_item13_token_only_in_query_string_is_unauthenticated(
    secured: SecurityStack, params: dict[str, str]
) -> None:
    valid, _ = _valid_and_forged()
    stack = secured.stack
    response = stack.client.post(
        f"{stack.broker}/v1/tokens",
        params=dict.fromkeys(params, valid),
        json={"embed": EMBED},
    )
    assert_refused(secured, response, valid, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_item13_no_credentials_at_all_is_unauthenticated(secured: SecurityStack) -> None:
    stack = secured.stack
    response = stack.client.post(f"{stack.broker}/v1/tokens", json={"embed": EMBED})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert stack.vendor_requests() == []


# --- 14. a session for tenant A asking for tenant B -----------------------------------------

TENANT_CASES: dict[str, tuple[Callable[[str], str], str]] = {
    "rs-session-acme-asks-globex": (
        lambda sub: rs_token(claims(RS_ISSUER, sub=sub, tenant="acme")),
        "globex",
    ),
    "hs-session-acme-asks-globex": (
        lambda sub: hs_token(claims(HS_ISSUER, sub=sub, tenant="acme")),
        "globex",
    ),
    "hs-session-globex-asks-acme": (
        lambda sub: hs_token(claims(HS_ISSUER, sub=sub, tenant="globex")),
        "acme",
    ),
    "rs-session-acme-asks-unconfigured": (
        lambda sub: rs_token(claims(RS_ISSUER, sub=sub, tenant="acme")),
        "initech",
    ),
}


@pytest.mark.parametrize("case", TENANT_CASES)
def test_item14_other_tenant(secured: SecurityStack, case: str) -> None:
    token_of, other = TENANT_CASES[case]
    token = token_of(f"tenant-{uuid.uuid4().hex}")
    response = post_token(secured, token, tenant=other)
    assert_refused(secured, response, token, "tenant_not_allowed", status=403)
    # the same session for its own tenant goes through (the refusal was about B)
    assert post_token(secured, token).status_code == 200


# --- GET /v1/embeds -------------------------------------------------------------------------

EMBEDS_FORGERIES: dict[str, tuple[TokenFactory, str]] = {
    "alg-none": (lambda: compact({"alg": "none"}, claims(RS_ISSUER), b""), "invalid_session"),
    "bit-flipped-signature": (lambda: _flip_bit(rs_token(), 0), "invalid_session"),
    "hs256-keyed-with-rs-public-pem": (
        lambda: sign_token(claims(RS_ISSUER), rsa_key("rs-1").public_pem().encode(), "HS256"),
        "invalid_session",
    ),
    "other-issuers-secret": (
        lambda: sign_token(claims(HS_ISSUER), OTHER_HS_KEY, "HS256"),
        "invalid_session",
    ),
    "wrong-audience": (
        lambda: rs_token(claims(RS_ISSUER, aud="someone-else")),
        "invalid_session",
    ),
    "expired": (lambda: rs_token(claims(RS_ISSUER, exp=_now() - FAR)), "session_expired"),
}


def _list_embeds(secured: SecurityStack, token: str) -> httpx.Response:
    stack = secured.stack
    return stack.client.get(f"{stack.broker}/v1/embeds", headers=bearer_header(token))


def test_embeds_control_valid_token_lists_embeds(secured: SecurityStack) -> None:
    response = _list_embeds(secured, rs_token())
    assert response.status_code == 200, response.text
    assert EMBED in {embed["name"] for embed in response.json()["embeds"]}


@pytest.mark.parametrize("case", EMBEDS_FORGERIES)
def test_embeds_refuses_forged_session(secured: SecurityStack, case: str) -> None:
    token_of, code = EMBEDS_FORGERIES[case]
    token = token_of()
    assert_refused(secured, _list_embeds(secured, token), token, code)
