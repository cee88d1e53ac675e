"""security.md "Negative catalogue": every forged session token, in one list for both
levels of tests.

``tests/auth/test_negative_catalogue.py`` runs each :class:`Attack` against the
verifier and ``tests/security/test_catalogue_http.py`` sends the same token to the
running broker, so a case added here runs at both levels. An attack is a stable id
(``item<NN>-<variant>``, NN the item of security.md), a builder that forges the
token, and what must come of it: the error class and its detail at the verifier
level, which are also the problem body's ``code`` and ``detail`` over HTTP.

Both levels trust the same issuers with the same keys (:data:`ISSUERS`): the verifier
tests build their session section with :func:`session_section`, the broker's policy
takes the same section. The forgeries are otherwise valid (a configured tenant, a
role that may use the embed, and wherever possible a genuine signature by the
issuer's own key), so a check the broker skipped shows up as an accepted token.

Cases that only make sense at one level stay in that level's file, marked as such:
tokens whose surrounding whitespace an HTTP header cannot carry, the kid burst, the
remote key URL that must never be fetched, credential placement.
"""

from __future__ import annotations

import base64
import functools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from app.errors import AuthenticationError, InvalidSession, SessionExpired
from tests.auth.keys import (
    EcKeyPair,
    RsaKeyPair,
    SigningKey,
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
from tests.support.policies import AUDIENCE, HS_SECRET

OTHER_HS_SECRET = "test-other-backend-hs256-secret-0123456789"  # >= 32 bytes
LEEWAY_SECONDS = 30
MAX_TOKEN_BYTES = 8192
CLAIMS = {"user_id": "sub", "tenants": "org_id", "roles": "roles", "email": "email"}

# --- the issuers and their keys ---------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """A key by name: an RSA or EC key pair (generated once per process, ``name`` is
    its kid) or an HMAC secret (``name`` is the secret)."""

    kind: Literal["rsa", "ec", "hmac"]
    name: str
    crv: str = "P-256"
    pinned_alg: str | None = None
    """The ``alg`` its published JWK names, if any."""

    def signing_key(self) -> SigningKey:
        if self.kind == "hmac":
            return self.name.encode()
        return self.pair()

    def pair(self) -> RsaKeyPair | EcKeyPair:
        if self.kind == "rsa":
            return rsa_key(self.name)
        if self.kind == "ec":
            return ec_key(self.name, self.crv)
        raise TypeError("an HMAC secret has no key pair")

    def jwk(self) -> dict[str, Any]:
        return self.pair().jwk(**({"alg": self.pinned_alg} if self.pinned_alg else {}))


@dataclass(frozen=True)
class Issuer:
    """One trusted session issuer: its genuine tokens are signed with ``key`` and
    ``alg``; a JWKS issuer publishes ``published`` at ``jwks_path``."""

    name: str
    slug: str
    algorithms: tuple[str, ...]
    key: Key
    alg: str
    source: Literal["secret", "jwks", "pem"]
    published: tuple[Key, ...] = ()
    audiences: tuple[str, ...] = (AUDIENCE,)
    secret_variable: str | None = None
    """The environment variable the broker's policy reads the secret from."""

    @property
    def jwks_path(self) -> str:
        assert self.source == "jwks"
        return f"{self.slug}/jwks.json"

    def jwks(self) -> dict[str, Any]:
        return jwks_document(*(key.jwk() for key in self.published))

    def token(self, payload: Mapping[str, Any] | None = None, **sign: Any) -> str:
        """A genuine token of this issuer (``payload`` defaults to valid claims)."""
        return sign_token(payload or claims(self), self.key.signing_key(), self.alg, **sign)

    def session_entry(
        self, url_of: Callable[[str], str], *, secret_by_name: bool
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "issuer": self.name,
            "audiences": list(self.audiences),
            "algorithms": list(self.algorithms),
        }
        if self.source == "secret":
            by_name = secret_by_name and self.secret_variable
            entry["secret"] = f"${{{self.secret_variable}}}" if by_name else self.key.name
        elif self.source == "jwks":
            entry["jwks_url"] = url_of(self.jwks_path)
        else:
            entry["public_key"] = self.key.pair().public_pem()
        return entry


HS = Issuer(
    name="app-backend",
    slug="hs",
    algorithms=("HS256",),
    key=Key("hmac", HS_SECRET),  # the standard test policy's secret (tests/support)
    alg="HS256",
    source="secret",
    secret_variable="SESSION_HS256_SECRET",
)
OTHER_HS = Issuer(
    name="other-backend",
    slug="other-hs",
    algorithms=("HS256",),
    key=Key("hmac", OTHER_HS_SECRET),
    alg="HS256",
    source="secret",
    secret_variable="OTHER_HS_SECRET",
)
RS = Issuer(
    name="https://rs.example.test/",
    slug="rs",
    algorithms=("RS256",),
    key=Key("rsa", "rs-1"),
    alg="RS256",
    source="jwks",
    published=(Key("rsa", "rs-1"), Key("rsa", "rs-2")),
    audiences=(AUDIENCE, "second-app"),
)
ES = Issuer(
    name="https://es.example.test/",
    slug="es",
    algorithms=("ES256", "ES384"),
    key=Key("ec", "es-256"),
    alg="ES256",
    source="jwks",
    published=(Key("ec", "es-256"), Key("ec", "es-384", "P-384")),
)
MIXED = Issuer(
    name="https://mixed.example.test/",
    slug="mixed",
    algorithms=("RS256", "RS512", "ES256", "ES384"),
    key=Key("rsa", "mixed-rsa"),
    alg="RS256",
    source="jwks",
    published=(
        Key("rsa", "mixed-rs512", pinned_alg="RS512"),
        Key("rsa", "mixed-rsa"),
        Key("ec", "mixed-p384", "P-384"),
    ),
)
BURST = Issuer(
    name="https://burst.example.test/",
    slug="burst",
    algorithms=("RS256",),
    key=Key("rsa", "burst-1"),
    alg="RS256",
    source="jwks",
    published=(Key("rsa", "burst-1"),),
)
PEM = Issuer(
    name="https://pem.example.test/",
    slug="pem",
    algorithms=("RS256",),
    key=Key("rsa", "pem"),
    alg="RS256",
    source="pem",
)

ISSUERS = (HS, OTHER_HS, RS, ES, MIXED, BURST, PEM)
JWKS_ISSUERS = tuple(issuer for issuer in ISSUERS if issuer.source == "jwks")


def session_section(
    url_of: Callable[[str], str], *, secret_by_name: bool = False, **overrides: Any
) -> dict[str, Any]:
    """The policy's ``session`` section trusting :data:`ISSUERS`; ``url_of`` turns a
    JWKS path into the URL it is served at. ``secret_by_name`` writes HS secrets as
    ``${VAR}`` (:func:`secret_environment` has the values)."""
    section: dict[str, Any] = {
        "issuers": [
            issuer.session_entry(url_of, secret_by_name=secret_by_name) for issuer in ISSUERS
        ],
        "leeway_seconds": LEEWAY_SECONDS,
        "max_token_bytes": MAX_TOKEN_BYTES,
        "claims": dict(CLAIMS),
    }
    section.update(overrides)
    return section


def secret_environment() -> dict[str, str]:
    return {
        issuer.secret_variable: issuer.key.name
        for issuer in ISSUERS
        if issuer.secret_variable is not None
    }


def claims(issuer: Issuer | str, **overrides: Any) -> dict[str, Any]:
    """Valid claims: user ``alice``, tenant ``acme``, role ``viewer`` (allowed to use
    the test policy's embeds); ``overrides`` add or replace, None removes."""
    name = issuer if isinstance(issuer, str) else issuer.name
    return session_claims(name, **{"roles": ["viewer"], **overrides})


def now() -> int:
    return int(time.time())


# --- token surgery ------------------------------------------------------------------------


def decode_segment(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def segments(token: str) -> tuple[str, str, str]:
    header, payload, signature = token.split(".")
    return header, payload, signature


def rs_signed(header: Any, payload: Any) -> str:
    """Raw header/payload (dicts, or JSON text for malformed ones) signed by rs-1."""
    return resign(compact(header, payload, b"x"), rsa_key("rs-1"), "RS256")


def flipped(token: str, byte_index: int, mask: int = 0x01) -> str:
    """The signature with the bits of ``mask`` flipped in one byte."""
    signing_input, signature = token.rsplit(".", 1)
    raw = bytearray(decode_segment(signature))
    raw[byte_index] ^= mask
    return f"{signing_input}.{b64url(bytes(raw))}"


def resized_signature(token: str, length: int) -> str:
    signing_input, signature = token.rsplit(".", 1)
    raw = decode_segment(signature)
    resized = raw[:length] if length <= len(raw) else raw + bytes(length - len(raw))
    return f"{signing_input}.{b64url(resized)}"


def with_signature(token: str, signature: bytes) -> str:
    return f"{token.rsplit('.', 1)[0]}.{b64url(signature)}"


def remote_key_token(member: Literal["jku", "x5u"], kid: str, url: str) -> str:
    """Signed by the attacker's key, whose JWKS (under ``kid``) is served at ``url``,
    which the header names as the place to fetch keys from."""
    return sign_token(claims(RS), rsa_key("attacker"), "RS256", kid=kid, header={member: url})


# --- the catalogue ------------------------------------------------------------------------

Build = Callable[[], str]


def _genuine(issuer: Issuer, **overrides: Any) -> Build:
    """A genuine token of ``issuer`` whose claims differ from valid ones by ``overrides``."""
    return lambda: issuer.token(claims(issuer, **overrides))


# What the verifier says (the problem body's ``detail`` over HTTP). Every case names
# the detail it must end in, so that a case cannot pass by tripping over some other
# check than the one it attacks.
SIGNATURE_NOT_VALID = "token signature is not valid"
UNSUPPORTED_ALG = "unsupported algorithm"
ALG_NOT_ALLOWED = "token algorithm is not allowed for its issuer"
ALG_NOT_KEYS = "token algorithm does not fit the issuer's key"
KID_UNKNOWN = "token key id (kid) is unknown"
KID_NOT_VALID = "token key id (kid) is not valid"
NO_KID_SEVERAL_KEYS = "token has no key id (kid) and its issuer has several keys"
TOO_LARGE = "session token is too large"
CRIT = "token header has critical extensions (crit), which are not supported"
EXPIRED = "the session token has expired"
ISS_NOT_TRUSTED = "token issuer is not trusted"
ISS_NOT_STRING = "token issuer (iss) is missing or not a string"
AUD_NOT_ACCEPTED = "token audience is not accepted"
AUD_MISSING = "token audience (aud) is missing"
AUD_NOT_STRING_OR_LIST = "token audience (aud) is not a string or a non-empty list"
AUD_NON_STRING = "token audience (aud) contains a non-string"
NOT_THREE_SEGMENTS = "session token must have exactly three segments (a signed JWT)"
NOT_BASE64URL = "session token segments must be unpadded base64url"


@dataclass(frozen=True)
class Attack:
    """One forged token and what must come of it."""

    id: str
    build: Build
    detail: str
    error: type[AuthenticationError] = InvalidSession

    @property
    def code(self) -> str:
        """The problem body's ``code`` over HTTP (always with status 401)."""
        return self.error.code


_attacks: list[Attack] = []


def _add(
    item: int,
    variant: str,
    build: Build,
    detail: str,
    error: type[AuthenticationError] = InvalidSession,
) -> None:
    _attacks.append(Attack(f"item{item:02d}-{variant}", build, detail, error))


# 1. alg none, unsigned or with a genuine signature (by the issuer's key or another)

_OTHER_KEY = {
    "rs-issuer": (Key("hmac", HS_SECRET), "HS256"),
    "hs-issuer": (Key("rsa", "rs-1"), "RS256"),
}


def _alg_none(issuer: Issuer, alg: str, signature: str, other: tuple[Key, str]) -> Build:
    def build() -> str:
        unsigned = compact({"alg": alg, "typ": "JWT"}, claims(issuer), b"")
        if signature == "unsigned":
            return unsigned
        key, real_alg = (issuer.key, issuer.alg) if signature == "own-key" else other
        return resign(unsigned, key.signing_key(), real_alg)

    return build


for _target, _issuer in (("rs-issuer", RS), ("hs-issuer", HS)):
    for _signature in ("unsigned", "own-key", "other-key"):
        for _alg in ("none", "None", "NONE", "nOnE"):
            _add(
                1,
                f"{_target}-{_signature}-{_alg}",
                _alg_none(_issuer, _alg, _signature, _OTHER_KEY[_target]),
                SIGNATURE_NOT_VALID if _signature == "unsigned" else UNSUPPORTED_ALG,
            )

# 2. tampered signature or payload, for each kind of key

_GENUINE = {"rs256-jwks": RS, "es256-jwks": ES, "hs256": HS, "rs256-static-pem": PEM}


def _payload_char_changed(issuer: Issuer) -> str:
    header, _, signature = segments(issuer.token(claims(issuer, sub="alice")))
    return f"{header}.{json_segment(claims(issuer, sub='alicf'))}.{signature}"


_TAMPERINGS: dict[str, Callable[[Issuer], str]] = {
    "empty-signature": lambda issuer: issuer.token().rsplit(".", 1)[0] + ".",
    "signature-bit-0-flipped": lambda issuer: flipped(issuer.token(), 0, 0x01),
    "signature-bit-7-flipped": lambda issuer: flipped(issuer.token(), 0, 0x80),
    "signature-bit-100-flipped": lambda issuer: flipped(issuer.token(), 12, 0x10),
    "signature-last-byte-flipped": lambda issuer: flipped(issuer.token(), -1, 0x01),
    "payload-char-changed": _payload_char_changed,
}

for _signer, _issuer in _GENUINE.items():
    for _name, _tamper in _TAMPERINGS.items():
        _add(2, f"{_signer}-{_name}", functools.partial(_tamper, _issuer), SIGNATURE_NOT_VALID)

# 3. key confusion: HS256 keyed with the issuer's public key, in every encoding

_CONFUSION_TARGETS = {"rsa-jwks": RS, "ec-jwks": ES, "rsa-static-pem": PEM}


def _confused(issuer: Issuer, form: str, with_kid: bool) -> Build:
    def build() -> str:
        key = issuer.key.pair()
        secret = public_key_forms(key)[form]
        return sign_token(claims(issuer), secret, "HS256", kid=key.kid if with_kid else None)

    return build


for _target, _issuer in _CONFUSION_TARGETS.items():
    for _form in ("pem", "jwk-json", "der", "openssh"):
        for _kid in ("kid", "no-kid"):
            _add(3, f"{_target}-{_form}-{_kid}", _confused(_issuer, _form, _kid == "kid"), ALG_NOT_ALLOWED)  # fmt: skip

# 4. an algorithm outside the allow-list, or not fitting the chosen JWK


def _es384_by_p256_key() -> str:
    """ES384 naming the P-256 key and signed by it with SHA-384: valid ECDSA maths,
    but the curve does not fit the algorithm."""
    key = ec_key("es-256")
    unsigned = compact({"alg": "ES384", "kid": key.kid}, claims(ES), b"")
    der = key.private.sign(unsigned[:-1].encode(), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return unsigned + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


_HS_KEY = HS_SECRET.encode()
_OTHER_HS_KEY = OTHER_HS_SECRET.encode()

for _variant, _build, _detail in [
    ("hs256-for-rs256-jwks-issuer", lambda: sign_token(claims(RS), _HS_KEY, "HS256", kid="rs-1"), ALG_NOT_ALLOWED),
    ("hs256-for-rs256-static-pem-issuer", lambda: sign_token(claims(PEM), _HS_KEY, "HS256"), ALG_NOT_ALLOWED),
    ("rs512-for-rs256-only-issuer", lambda: sign_token(claims(RS), rsa_key("rs-1"), "RS512"), ALG_NOT_ALLOWED),
    ("es512-for-es256-es384-issuer", lambda: sign_token(claims(ES), ec_key("es-521", "P-521"), "ES512"), ALG_NOT_ALLOWED),
    ("rs256-for-hs256-issuer", lambda: sign_token(claims(HS), rsa_key("rs-1"), "RS256"), ALG_NOT_ALLOWED),
    ("es256-for-rs256-issuer", lambda: sign_token(claims(RS), ec_key("es-256"), "ES256", kid="rs-1"), ALG_NOT_ALLOWED),
    # the JWK pins alg RS512; a genuine RS256 signature by that very key must fail
    ("jwk-alg-differs", lambda: sign_token(claims(MIXED), rsa_key("mixed-rs512"), "RS256", kid="mixed-rs512"), ALG_NOT_KEYS),
    ("jwk-kty-mismatch", lambda: sign_token(claims(MIXED), ec_key("attacker-p256"), "ES256", kid="mixed-rsa"), ALG_NOT_KEYS),
    ("jwk-crv-mismatch", lambda: sign_token(claims(MIXED), ec_key("attacker-p256"), "ES256", kid="mixed-p384"), ALG_NOT_KEYS),
    ("jwk-crv-mismatch-genuine-key", _es384_by_p256_key, ALG_NOT_KEYS),
]:  # fmt: skip
    _add(4, _variant, _build, _detail)

# 5. keys named by the token itself (jku/x5u are level-specific: see remote_key_token)


def _x5c(kid: str | None) -> Build:
    def build() -> str:
        attacker = rsa_key("attacker")
        chain = [b64url(self_signed_certificate_der(attacker))]
        return sign_token(claims(RS), attacker, "RS256", kid=kid, header={"x5c": chain})

    return build


for _variant, _build, _detail in [
    ("jwk-attacker-kid", lambda: sign_token(claims(RS), rsa_key("attacker"), "RS256", header={"jwk": rsa_key("attacker").jwk()}), KID_UNKNOWN),
    ("jwk-trusted-kid", lambda: sign_token(claims(RS), rsa_key("attacker"), "RS256", kid="rs-1", header={"jwk": rsa_key("attacker").jwk(kid="rs-1")}), SIGNATURE_NOT_VALID),
    ("jwk-static-pem-issuer", lambda: sign_token(claims(PEM), rsa_key("attacker"), "RS256", kid=None, header={"jwk": rsa_key("attacker").jwk()}), SIGNATURE_NOT_VALID),
    ("jwk-ec-issuer", lambda: sign_token(claims(ES), ec_key("attacker-p256"), "ES256", kid="es-256", header={"jwk": ec_key("attacker-p256").jwk(kid="es-256")}), SIGNATURE_NOT_VALID),
    ("x5c-attacker-kid", _x5c("attacker"), KID_UNKNOWN),
    ("x5c-trusted-kid", _x5c("rs-1"), SIGNATURE_NOT_VALID),
    ("x5c-no-kid", _x5c(None), NO_KID_SEVERAL_KEYS),
]:  # fmt: skip
    _add(5, _variant, _build, _detail)

# 6. kid values: odd ones on a token signed by the trusted key, and the classic
# attacks on an HMAC verifier (a path to an empty file, an SQL injection that makes
# the key lookup return a value the attacker chose)

ODD_KIDS: dict[str, Any] = {
    "empty": "",
    "path-traversal": "../../dev/null",
    "absolute-path": "/dev/null",
    "sql": "rs-1' OR '1'='1",
    "shell": "rs-1; $(curl http://127.0.0.1/) `id` | cat",
    "10kb": "k" * 10 * 1024,  # over max_token_bytes: refused before any key lookup
    "unicode": "ключ-🔑-rs-1",
    "nul-byte": "rs-1\u0000",
    "not-a-string": 1,
    "list": ["rs-1"],
}


def odd_kid_token(kid: Any) -> str:
    """Signed by rs-1 itself: only the kid is wrong."""
    return RS.token(kid=kid)


_ODD_KID_DETAILS = {
    "empty": KID_NOT_VALID,
    "not-a-string": KID_NOT_VALID,
    "list": KID_NOT_VALID,
    "10kb": TOO_LARGE,
}

for _name, _kid in ODD_KIDS.items():
    _add(
        6,
        f"kid-{_name}",
        functools.partial(odd_kid_token, _kid),
        _ODD_KID_DETAILS.get(_name, KID_UNKNOWN),
    )

for _variant, _build, _detail in [
    ("hs-issuer-dev-null-empty-key", lambda: sign_token(claims(HS), b"", "HS256", kid="../../../../../../dev/null"), SIGNATURE_NOT_VALID),
    ("hs-issuer-sql-union-key", lambda: sign_token(claims(HS), b"attacker", "HS256", kid="x' UNION SELECT 'attacker' --"), SIGNATURE_NOT_VALID),
    ("rs-issuer-dev-null-empty-key", lambda: sign_token(claims(RS), b"", "HS256", kid="../../../../../../dev/null"), ALG_NOT_ALLOWED),
    ("static-pem-issuer-path-kid-attacker-key", lambda: sign_token(claims(PEM), rsa_key("attacker"), "RS256", kid="../../config/pem"), SIGNATURE_NOT_VALID),
]:  # fmt: skip
    _add(6, _variant, _build, _detail)

# 7. crit

for _variant, _build in [
    ("rs-unknown-param", lambda: RS.token(header={"crit": ["exp-ext"], "exp-ext": 1})),
    ("rs-b64", lambda: RS.token(header={"crit": ["b64"], "b64": False})),
    ("rs-empty-list", lambda: RS.token(header={"crit": []})),
    ("hs-unknown-param", lambda: HS.token(header={"crit": ["exp-ext"], "exp-ext": 1})),
]:
    _add(7, _variant, _build, CRIT)

# 8. time claims. "Beyond leeway" is 31 s past (time only moves on) and 40 s ahead
# (ten seconds for the token to reach the verifier on a loaded machine).


def _timed(issuer: Issuer, **offsets: Any) -> Build:
    """A genuine token of ``issuer`` whose time claims are ``now + offset`` (int
    offsets) or the value given (anything else; None removes the claim)."""

    def build() -> str:
        at = now()
        values = {
            name: at + value if isinstance(value, int) and not isinstance(value, bool) else value
            for name, value in offsets.items()
        }
        return issuer.token(claims(issuer, now=at, **values))

    return build


def _explicit_null(claim: str) -> Build:
    def build() -> str:
        payload = claims(RS)
        payload[claim] = None  # claims() would remove it
        return RS.token(payload)

    return build


EXP_NOT_NUMBER = "token expiry (exp) is not a number"
FAR = 120  # well beyond the leeway, for the cases that are not about its edge

for _variant, _build, _detail, _error in [
    ("exp-missing", _timed(RS, exp=None), "token expiry (exp) is missing", InvalidSession),
    ("exp-past-beyond-leeway", _timed(RS, exp=-31), EXPIRED, SessionExpired),
    ("exp-long-past", _timed(RS, exp=-86_400), EXPIRED, SessionExpired),
    ("exp-past-hs-issuer", _timed(HS, exp=-FAR), EXPIRED, SessionExpired),
    ("exp-past-static-pem-issuer", _timed(PEM, exp=-FAR), EXPIRED, SessionExpired),
    ("exp-string", lambda: RS.token(claims(RS, exp=str(now() + 600))), EXP_NOT_NUMBER, InvalidSession),
    ("exp-bool", _timed(RS, exp=True), EXP_NOT_NUMBER, InvalidSession),
    ("exp-null", _explicit_null("exp"), EXP_NOT_NUMBER, InvalidSession),
    ("exp-list", lambda: RS.token(claims(RS, exp=[now() + 600])), EXP_NOT_NUMBER, InvalidSession),
    ("exp-huge-int", lambda: RS.token(claims(RS, exp=10**400)), "token expiry (exp) is out of range", InvalidSession),
    ("nbf-future-beyond-leeway", _timed(RS, nbf=40), "token is not valid yet (nbf)", InvalidSession),
    ("nbf-string", lambda: RS.token(claims(RS, nbf="0")), "token not-before (nbf) is not a number", InvalidSession),
    ("iat-future-beyond-leeway", _timed(RS, iat=40), "token issued-at (iat) is in the future", InvalidSession),
    ("iat-missing", _timed(RS, iat=None), "token issued-at (iat) is missing", InvalidSession),
    ("iat-string", lambda: RS.token(claims(RS, iat="0")), "token issued-at (iat) is not a number", InvalidSession),
    # expired AND forged: the forgery wins, "expired" is said only of genuine tokens
    ("exp-past-bad-signature", lambda: sign_token(claims(RS, exp=now() - FAR), rsa_key("attacker"), "RS256", kid="rs-1"), SIGNATURE_NOT_VALID, InvalidSession),
    ("exp-past-wrong-audience", lambda: RS.token(claims(RS, exp=now() - FAR, aud="someone-else")), AUD_NOT_ACCEPTED, InvalidSession),
]:  # fmt: skip
    _add(8, _variant, _build, _detail, _error)

# 9. issuer: wrong iss on a genuine token, and a trusted iss signed by another
# issuer's key

WRONG_ISSUERS: dict[str, Any] = {
    "unknown": "https://evil.example.test/",
    "prefix": "https://rs.example.test",
    "suffix": "rs.example.test/",
    "superstring": "https://rs.example.test/evil",
    "superstring-host": "https://rs.example.test.evil.test/",
    "case-changed": "HTTPS://RS.EXAMPLE.TEST/",
    "trailing-space": RS.name + " ",
    "list": [RS.name],
    "list-of-two": [RS.name, HS.name],
    "object": {"iss": RS.name},
    "number": 1,
    "missing": None,
}

for _name, _iss in WRONG_ISSUERS.items():
    _detail = ISS_NOT_TRUSTED if isinstance(_iss, str) else ISS_NOT_STRING
    _add(9, f"iss-{_name}", _genuine(RS, iss=_iss), _detail)

for _iss in ("app-backen", "app-backend-2", "xapp-backend"):
    _add(9, f"hs-iss-{_iss}", _genuine(HS, iss=_iss), ISS_NOT_TRUSTED)

for _variant, _build, _detail in [
    ("rs-jwks-issuer-pem-issuer-key-kid", lambda: sign_token(claims(RS), rsa_key("pem"), "RS256", kid="pem"), KID_UNKNOWN),
    ("rs-jwks-issuer-pem-issuer-key-no-kid", lambda: sign_token(claims(RS), rsa_key("pem"), "RS256", kid=None), NO_KID_SEVERAL_KEYS),
    ("rs-jwks-issuer-burst-issuer-key-and-kid", lambda: sign_token(claims(RS), rsa_key("burst-1"), "RS256"), KID_UNKNOWN),
    ("burst-issuer-rs-issuer-key-and-kid", lambda: sign_token(claims(BURST), rsa_key("rs-1"), "RS256"), KID_UNKNOWN),
    ("burst-issuer-rs-issuer-key-no-kid", lambda: sign_token(claims(BURST), rsa_key("rs-1"), "RS256", kid=None), SIGNATURE_NOT_VALID),
    ("pem-issuer-rs-issuer-key", lambda: sign_token(claims(PEM), rsa_key("rs-1"), "RS256"), SIGNATURE_NOT_VALID),
    ("es-issuer-rs-issuer-key", lambda: sign_token(claims(ES), rsa_key("rs-1"), "RS256"), ALG_NOT_ALLOWED),
    ("es-issuer-mixed-issuer-key", lambda: sign_token(claims(ES), ec_key("mixed-p384", "P-384"), "ES384", kid="es-384"), SIGNATURE_NOT_VALID),
    ("mixed-issuer-es-issuer-key", lambda: sign_token(claims(MIXED), ec_key("es-384", "P-384"), "ES384"), KID_UNKNOWN),
    ("hs-issuer-other-hs-issuer-secret", lambda: sign_token(claims(HS), _OTHER_HS_KEY, "HS256"), SIGNATURE_NOT_VALID),
    ("other-hs-issuer-hs-issuer-secret", lambda: sign_token(claims(OTHER_HS), _HS_KEY, "HS256"), SIGNATURE_NOT_VALID),
    ("hs-issuer-rs-issuer-key", lambda: sign_token(claims(HS), rsa_key("rs-1"), "RS256"), ALG_NOT_ALLOWED),
]:  # fmt: skip
    _add(9, _variant, _build, _detail)

# 10. audience, on a genuine token

BAD_AUDIENCES: dict[str, tuple[Any, str]] = {
    "missing": (None, AUD_MISSING),
    "wrong": ("someone-else", AUD_NOT_ACCEPTED),
    "wrong-list": (["someone-else", "another"], AUD_NOT_ACCEPTED),
    "empty-string": ("", AUD_NOT_ACCEPTED),
    "empty-list": ([], AUD_NOT_STRING_OR_LIST),
    "non-string-list": ([123], AUD_NON_STRING),
    "trusted-and-non-string": ([AUDIENCE, 123], AUD_NON_STRING),
    "trusted-and-null": ([AUDIENCE, None], AUD_NON_STRING),
    "trusted-and-object": ([AUDIENCE, {"aud": AUDIENCE}], AUD_NON_STRING),
    "nested-list": ([[AUDIENCE]], AUD_NON_STRING),
    "object": ({"aud": AUDIENCE}, AUD_NOT_STRING_OR_LIST),
    "number": (42, AUD_NOT_STRING_OR_LIST),
    "bool": (True, AUD_NOT_STRING_OR_LIST),
    "prefix": ("analytics-we", AUD_NOT_ACCEPTED),
    "superstring": ("analytics-web-evil", AUD_NOT_ACCEPTED),
    "case-changed": ("Analytics-Web", AUD_NOT_ACCEPTED),
}

for _name, (_aud, _detail) in BAD_AUDIENCES.items():
    _add(10, f"aud-{_name}", _genuine(RS, aud=_aud), _detail)
_add(10, "aud-null", _explicit_null("aud"), AUD_NOT_STRING_OR_LIST)

# 11. malformed tokens

DEEP = "[" * 200 + "]" * 200
RS1_HEADER = {"alg": "RS256", "kid": "rs-1"}


def _claims_json(**extra: Any) -> str:
    return json.dumps(claims(RS, **extra))


def _standard_base64(token: str) -> str:
    """The genuine token in the standard alphabet (``+/``) instead of base64url."""
    changed = token.replace("-", "+").replace("_", "/")
    assert changed != token
    return changed


def _non_canonical(token: str) -> str:
    signing_input, signature = token.rsplit(".", 1)
    return f"{signing_input}.{non_canonical_segment(signature)}"


def _rs_segments() -> tuple[str, str, str]:
    return segments(RS.token())


MALFORMED: dict[str, tuple[Build, str]] = {
    "one-segment": (lambda: _rs_segments()[0], NOT_THREE_SEGMENTS),
    "two-segments": (lambda: ".".join(_rs_segments()[:2]), NOT_THREE_SEGMENTS),
    "four-segments": (lambda: RS.token() + "." + _rs_segments()[2], NOT_THREE_SEGMENTS),
    "five-segments-jwe": (lambda: ".".join([*_rs_segments(), _rs_segments()[2], _rs_segments()[2]]), NOT_THREE_SEGMENTS),
    "dots-only": (lambda: "..", NOT_BASE64URL),
    "padding-header": (lambda: "{}=.{}.{}".format(*_rs_segments()), NOT_BASE64URL),
    "padding-signature": (lambda: "{}.{}.{}==".format(*_rs_segments()), NOT_BASE64URL),
    "plus-slash": (lambda: "{}.{}.{}".format(*_rs_segments()[:2], _rs_segments()[2][:-2] + "+/"), NOT_BASE64URL),
    "standard-base64-alphabet": (lambda: _standard_base64(RS.token()), NOT_BASE64URL),
    "non-base64url-char": (lambda: "{}.{}*.{}".format(*_rs_segments()), NOT_BASE64URL),
    "percent-encoded-dots": (lambda: RS.token().replace(".", "%2E"), NOT_THREE_SEGMENTS),
    "non-ascii-char": (lambda: "{}.{}.{}é".format(*_rs_segments()), NOT_BASE64URL),
    "non-canonical-base64": (lambda: _non_canonical(RS.token()), SIGNATURE_NOT_VALID),
    "header-not-json": (lambda: compact(b"{alg: RS256}", claims(RS), b"sig"), "token header is not strict JSON (not valid JSON)"),
    "header-array": (lambda: compact(["RS256"], claims(RS), b"sig"), "token header is not a JSON object"),
    "header-string": (lambda: compact('"RS256"', claims(RS), b"sig"), "token header is not a JSON object"),
    "payload-not-json": (lambda: rs_signed(RS1_HEADER, b"sub=alice&org_id=acme"), "token payload is not strict JSON (not valid JSON)"),
    "payload-array": (lambda: rs_signed(RS1_HEADER, "[1]"), "token payload is not a JSON object"),
    "payload-number": (lambda: rs_signed(RS1_HEADER, "1"), "token payload is not a JSON object"),
    "header-non-utf8": (lambda: rs_signed(b'{"alg":"RS256","kid":"rs-1\xc3\x28"}', claims(RS)), "token header is not base64url-encoded UTF-8"),
    "payload-non-utf8": (lambda: rs_signed(RS1_HEADER, _claims_json()[:-1].encode() + b',"x":"\xff\xfe"}'), "token payload is not base64url-encoded UTF-8"),
    # valid UTF-8 bytes, but JSON that decodes to a string no UTF-8 can encode
    "payload-lone-surrogate-user-id": (lambda: RS.token(claims(RS, sub="\ud800")), "token payload is not strict JSON (contains a lone surrogate)"),
    "payload-lone-surrogate-tenant": (lambda: RS.token(claims(RS, tenant="acme\udfff")), "token payload is not strict JSON (contains a lone surrogate)"),
    # last-wins parsing would read RS256 and accept the genuine signature
    "duplicate-alg-none-first": (lambda: rs_signed('{"alg":"none","alg":"RS256","kid":"rs-1"}', claims(RS)), "token header is not strict JSON (duplicate key)"),
    "duplicate-alg-none-last": (lambda: rs_signed('{"alg":"RS256","alg":"none","kid":"rs-1"}', claims(RS)), "token header is not strict JSON (duplicate key)"),
    "duplicate-sub-claim": (lambda: rs_signed(RS1_HEADER, _claims_json()[:-1] + ',"sub":"admin"}'), "token payload is not strict JSON (duplicate key)"),
    "duplicate-tenant-claim": (lambda: rs_signed(RS1_HEADER, _claims_json()[:-1] + ',"org_id":"globex"}'), "token payload is not strict JSON (duplicate key)"),
    "nan-claim": (lambda: rs_signed(RS1_HEADER, _claims_json()[:-1] + ',"x":NaN}'), "token payload is not strict JSON (NaN and Infinity are not JSON)"),
    "over-max-token-bytes": (lambda: RS.token(claims(RS, padding="p" * 9000)), TOO_LARGE),
    "deeply-nested-payload": (lambda: rs_signed(RS1_HEADER, _claims_json()[:-1] + f',"x":{DEEP}}}'), "token payload is not strict JSON (nested too deeply)"),
    "deeply-nested-header": (lambda: rs_signed('{"alg":"RS256","kid":"rs-1","x":' + DEEP + "}", claims(RS)), "token header is not strict JSON (nested too deeply)"),
    "empty-header": (lambda: ".{1}.{2}".format(*_rs_segments()), NOT_BASE64URL),
    "empty-payload": (lambda: "{0}..{2}".format(*_rs_segments()), NOT_BASE64URL),
}  # fmt: skip

for _name, (_build, _detail) in MALFORMED.items():
    _add(11, _name, _build, _detail)

# 12. signature encodings


def _es_forged(alg: str, kid: str, signature: bytes) -> Build:
    return lambda: compact({"alg": alg, "kid": kid}, claims(ES), signature)


def _es256_der_signature() -> str:
    """A genuine ES256 signature, but DER-encoded instead of JWS ``r || s``."""
    unsigned = compact({"alg": "ES256", "kid": "es-256"}, claims(ES), b"")
    der = ec_key("es-256").private.sign(unsigned[:-1].encode(), ec.ECDSA(hashes.SHA256()))
    return unsigned + b64url(der)


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

for _variant, _build in [
    ("es256-r-s-zero", _es_forged("ES256", "es-256", bytes(64))),
    ("es384-r-s-zero", _es_forged("ES384", "es-384", bytes(96))),
    ("es256-r-s-zero-der", _es_forged("ES256", "es-256", encode_dss_signature(0, 0))),
    ("es256-r-s-curve-order", _es_forged("ES256", "es-256", P256_ORDER.to_bytes(32, "big") * 2)),
    ("es256-63-bytes", lambda: resized_signature(ES.token(), 63)),
    ("es256-65-bytes", lambda: resized_signature(ES.token(), 65)),
    ("es256-128-bytes", lambda: resized_signature(ES.token(), 128)),
    ("es256-der-format", _es256_der_signature),
    ("rs256-255-bytes", lambda: resized_signature(RS.token(), 255)),
    ("rs256-257-bytes", lambda: resized_signature(RS.token(), 257)),
    ("rs256-1-byte", lambda: with_signature(RS.token(), b"\x00")),
    ("hs256-16-bytes", lambda: resized_signature(HS.token(), 16)),
    ("hs256-1-byte", lambda: resized_signature(HS.token(), 1)),
    ("hs256-33-bytes", lambda: resized_signature(HS.token(), 33)),
]:
    _add(12, _variant, _build, SIGNATURE_NOT_VALID)

ATTACKS: tuple[Attack, ...] = tuple(_attacks)
ATTACKS_BY_ID: dict[str, Attack] = {attack.id: attack for attack in ATTACKS}


def attack_params() -> list[Any]:
    """``pytest.param`` per attack, id = the attack's id."""
    return [pytest.param(attack, id=attack.id) for attack in ATTACKS]


# --- controls: the same issuers' genuine tokens are accepted ------------------------------


def _own(
    issuer: Issuer, key: Key | None = None, alg: str | None = None, **extra: Any
) -> Callable[[str], str]:
    def build(sub: str) -> str:
        signer = key or issuer.key
        return sign_token(claims(issuer, sub=sub, **extra), signer.signing_key(), alg or issuer.alg)

    return build


def _within_leeway(claim: str, offset: int) -> Callable[[str], str]:
    def build(sub: str) -> str:
        at = now()
        return RS.token(claims(RS, sub=sub, now=at, **{claim: at + offset}))

    return build


CONTROLS: dict[str, Callable[[str], str]] = {
    "hs256-app-backend": _own(HS),
    "hs256-other-backend": _own(OTHER_HS),
    "rs256-jwks-rs-1": _own(RS),
    "rs256-jwks-rs-2": _own(RS, Key("rsa", "rs-2")),
    "es256-jwks": _own(ES),
    "es384-jwks": _own(ES, Key("ec", "es-384", "P-384"), "ES384"),
    "rs256-static-pem": _own(PEM),
    "mixed-rs512-pinned": _own(MIXED, Key("rsa", "mixed-rs512"), "RS512"),
    "mixed-rs256": _own(MIXED),
    "mixed-es384": _own(MIXED, Key("ec", "mixed-p384", "P-384"), "ES384"),
    "burst-issuer": _own(BURST),
    "item08-exp-past-within-leeway": _within_leeway("exp", -20),
    "item08-nbf-ahead-within-leeway": _within_leeway("nbf", 20),
    "item08-iat-ahead-within-leeway": _within_leeway("iat", 20),
    "item10-second-configured-audience": _own(RS, audience="second-app"),
    "item10-audience-list-with-a-configured-one": _own(RS, audience=["other", AUDIENCE]),
}
"""A genuine token for the user named (so a test can find its own vendor call)."""


# --- 14. a session for tenant A asking for tenant B ---------------------------------------


@dataclass(frozen=True)
class TenantCase:
    build: Callable[[str], str]
    """A genuine session for the user named, granting ``own`` only."""
    own: str
    other: str


TENANT_CASES: dict[str, TenantCase] = {
    "rs-session-acme-asks-globex": TenantCase(_own(RS, tenant="acme"), "acme", "globex"),
    "hs-session-acme-asks-globex": TenantCase(_own(HS, tenant="acme"), "acme", "globex"),
    "hs-session-globex-asks-acme": TenantCase(_own(HS, tenant="globex"), "globex", "acme"),
    "rs-session-acme-asks-unconfigured": TenantCase(_own(RS, tenant="acme"), "acme", "initech"),
}
