"""JOSE signature keys and algorithms, chosen and built by the broker, never by the token.

A leaf module (cryptography and python-jose only): the config loader uses it to
reject an unusable ``public_key`` at load, the session verifier to build its keys,
so neither package has to import the other.

python-jose picks a key class from the token header and tries every key of a JWKS when
given one; both are how key-confusion attacks work. So the broker validates each
public key itself (kty, crv, use, key_ops, alg, size, point on curve), keeps only its
public members, and builds the python-jose key with the one algorithm it expects:
``jwk.construct(public_jwk, alg)``. A static PEM from the config is parsed with
``cryptography`` and converted to the same JWK form, so no PEM string ever reaches
python-jose (where a PEM could be read as an HMAC secret).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jose import jwk
from jose.exceptions import JWKError
from pydantic import SecretStr

HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512"})
EC_ALGORITHMS: Final = frozenset({"ES256", "ES384", "ES512"})
SUPPORTED_ALGORITHMS: Final = HMAC_ALGORITHMS | RSA_ALGORITHMS | EC_ALGORITHMS
JWK_CURVE_FOR_ALG: Final = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_EC_CURVES: Final[dict[str, tuple[type[ec.EllipticCurve], int]]] = {
    "P-256": (ec.SECP256R1, 32),
    "P-384": (ec.SECP384R1, 48),
    "P-521": (ec.SECP521R1, 66),
}
_JWK_CURVE_FOR_CRYPTOGRAPHY: Final = {
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
}
HMAC_DIGEST_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}
"""Also the shortest secret accepted (RFC 7518 3.2: a key at least as long as the hash)."""
MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192  # a bigger modulus only makes every verification slower
MAX_KID_CHARS: Final = 256
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+={0,2}")


class KeyProblem(ValueError):
    """A JWK or PEM that cannot serve as a signature-verification key (says why)."""


def key_type_for(alg: str) -> str | None:
    if alg in RSA_ALGORITHMS:
        return "RSA"
    if alg in EC_ALGORITHMS:
        return "EC"
    return None


def _b64url_int(value: Any, member: str) -> int:
    if not isinstance(value, str) or not _BASE64URL.fullmatch(value):
        raise KeyProblem(f"member {member!r} is not base64url")
    stripped = value.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as exc:
        raise KeyProblem(f"member {member!r} is not base64url") from exc
    return int.from_bytes(raw, "big")


def _b64url_uint(number: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (number.bit_length() + 7) // 8)
    return base64.urlsafe_b64encode(number.to_bytes(size, "big")).rstrip(b"=").decode("ascii")


class VerificationKey:
    """One public signature key: an entry of an issuer's JWKS or its static PEM.

    ``verify`` builds (once per algorithm) the python-jose key with exactly that
    algorithm, after :meth:`fits` has confirmed the key can serve it.
    """

    __slots__ = ("_by_alg", "_public_jwk", "alg", "crv", "kid", "kty", "signature_bytes")

    def __init__(
        self,
        *,
        public_jwk: Mapping[str, str],
        kid: str | None,
        alg: str | None,
        signature_bytes: int,
    ) -> None:
        self._public_jwk = dict(public_jwk)
        self.kty: str = public_jwk["kty"]
        self.crv: str | None = public_jwk.get("crv")
        self.kid = kid
        self.alg = alg
        self.signature_bytes = signature_bytes
        self._by_alg: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"VerificationKey(kty={self.kty!r}, crv={self.crv!r}, kid={self.kid!r}, alg={self.alg!r})"

    def fits(self, alg: str) -> bool:
        """The key's type (and curve) fit ``alg``, and its own ``alg``, if any, is ``alg``."""
        if self.alg is not None and self.alg != alg:
            return False
        if key_type_for(alg) != self.kty:
            return False
        return self.kty != "EC" or JWK_CURVE_FOR_ALG[alg] == self.crv

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> bool:
        if not self.fits(alg) or len(signature) != self.signature_bytes:
            return False
        verifier = self._by_alg.get(alg)
        if verifier is None:
            verifier = self._by_alg[alg] = jwk.construct(self._public_jwk, alg)
        return bool(verifier.verify(signing_input, signature))


def key_from_jwk(entry: Any) -> VerificationKey:
    """Validate one JWKS entry as a public signing key; raise KeyProblem otherwise."""
    if not isinstance(entry, dict):
        raise KeyProblem("not a JSON object")
    kty = entry.get("kty")
    if kty not in ("RSA", "EC"):
        raise KeyProblem("kty is not RSA or EC")
    if entry.get("use", "sig") != "sig":
        raise KeyProblem("use is not 'sig'")
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise KeyProblem("key_ops does not allow 'verify'")
    if _PRIVATE_MEMBERS & entry.keys():
        raise KeyProblem("it carries private key material")
    kid = entry.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_CHARS):
        raise KeyProblem("kid is not a short string")
    alg = entry.get("alg")
    if alg is not None and (not isinstance(alg, str) or key_type_for(alg) != kty):
        raise KeyProblem("alg does not fit the key type")
    if kty == "RSA":
        n = _b64url_int(entry.get("n"), "n")
        e = _b64url_int(entry.get("e"), "e")
        return _rsa_key(n, e, kid=kid, alg=alg)
    crv = entry.get("crv")
    if not isinstance(crv, str) or crv not in _EC_CURVES:
        raise KeyProblem("crv is not P-256, P-384 or P-521")
    if alg is not None and JWK_CURVE_FOR_ALG[alg] != crv:
        raise KeyProblem("alg does not fit the curve")
    x = _b64url_int(entry.get("x"), "x")
    y = _b64url_int(entry.get("y"), "y")
    return _ec_key(crv, x, y, kid=kid, alg=alg)


def _rsa_key(n: int, e: int, *, kid: str | None, alg: str | None) -> VerificationKey:
    bits = n.bit_length()
    if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise KeyProblem(f"RSA modulus must have {MIN_RSA_BITS}..{MAX_RSA_BITS} bits")
    try:
        rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise KeyProblem("not a valid RSA public key") from exc
    return VerificationKey(
        public_jwk={"kty": "RSA", "n": _b64url_uint(n), "e": _b64url_uint(e)},
        kid=kid,
        alg=alg,
        signature_bytes=(bits + 7) // 8,
    )


def _ec_key(crv: str, x: int, y: int, *, kid: str | None, alg: str | None) -> VerificationKey:
    curve, size = _EC_CURVES[crv]
    try:
        ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()  # checks the point
    except ValueError as exc:
        raise KeyProblem("not a point on the curve") from exc
    return VerificationKey(
        public_jwk={
            "kty": "EC",
            "crv": crv,
            "x": _b64url_uint(x, size),
            "y": _b64url_uint(y, size),
        },
        kid=kid,
        alg=alg,
        signature_bytes=2 * size,
    )


def key_from_pem(pem: str) -> VerificationKey:
    """A static public key from the config, converted to a JWK (no kid, no alg)."""
    try:
        public = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise KeyProblem("not a PEM public key") from exc
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return _rsa_key(numbers.n, numbers.e, kid=None, alg=None)
    if isinstance(public, ec.EllipticCurvePublicKey):
        crv = _JWK_CURVE_FOR_CRYPTOGRAPHY.get(public.curve.name)
        if crv is None:
            raise KeyProblem("only P-256, P-384 and P-521 EC keys are supported")
        point = public.public_numbers()
        return _ec_key(crv, point.x, point.y, kid=None, alg=None)
    raise KeyProblem("only RSA and EC public keys are supported")


def pem_key_problem(pem: str, algorithms: Iterable[str]) -> str | None:
    """Why a static PEM public key cannot verify ``algorithms``, or None when it can."""
    try:
        key = key_from_pem(pem)
    except KeyProblem as exc:
        return str(exc)
    family = "RS" if key.kty == "RSA" else "ES"
    algorithms = list(algorithms)
    if not all(alg.startswith(family) for alg in algorithms):
        return f"an {key.kty} key fits only {family}* algorithms"
    wrong = sorted(alg for alg in algorithms if not key.fits(alg))
    if wrong:
        return f"curve {key.crv} does not fit {', '.join(wrong)}"
    return None


class HmacKey:
    """An issuer's shared secret, built per HS* algorithm at load time."""

    __slots__ = ("_by_alg",)

    def __init__(self, secret: SecretStr, algorithms: list[str]) -> None:
        raw = secret.get_secret_value().encode("utf-8")
        self._by_alg: dict[str, Any] = {}
        for alg in algorithms:
            if alg not in HMAC_ALGORITHMS:
                raise KeyProblem("a shared secret serves only HS* algorithms")
            try:
                self._by_alg[alg] = jwk.construct(raw, alg)
            except JWKError:
                # python-jose refuses PEM/SSH-looking secrets: such a "secret" is
                # public, so anyone could forge tokens with it.
                raise KeyProblem(
                    "the secret looks like a public key; use a random secret"
                ) from None

    def __repr__(self) -> str:
        return f"HmacKey(algorithms={sorted(self._by_alg)!r})"

    def sign(self, alg: str, signing_input: bytes) -> bytes:
        return bytes(self._by_alg[alg].sign(signing_input))

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> bool:
        verifier = self._by_alg.get(alg)
        if verifier is None or len(signature) != HMAC_DIGEST_BYTES[alg]:
            return False
        return bool(verifier.verify(signing_input, signature))
