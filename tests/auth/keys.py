"""Keys, JWKS documents and token signing for auth tests, including forged tokens.

Deliberately independent of python-jose (signatures come straight from
``cryptography``), so the tests do not share the code they check. The attack
catalogue (catalogue.py) forges its tokens with these: build keys with :func:`rsa_key`/:func:`ec_key` (generated
once per name and process), publish :func:`jwks_document`, sign with
:func:`sign_token`, forge with :func:`compact` and a signature of your choice.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
CURVES: dict[str, tuple[ec.EllipticCurve, str, int]] = {
    "P-256": (ec.SECP256R1(), "ES256", 32),
    "P-384": (ec.SECP384R1(), "ES384", 48),
    "P-521": (ec.SECP521R1(), "ES512", 66),
}
DEFAULT_AUDIENCE = "analytics-web"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_uint(number: int, length: int | None = None) -> str:
    size = length or max(1, (number.bit_length() + 7) // 8)
    return b64url(number.to_bytes(size, "big"))


def json_segment(value: Any) -> str:
    """A JSON value (or raw JSON text given as str/bytes) as a base64url segment."""
    if isinstance(value, bytes):
        return b64url(value)
    if isinstance(value, str):
        return b64url(value.encode("utf-8"))
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def compact(header: Any, payload: Any, signature: bytes | str = b"") -> str:
    """``header.payload.signature``; a str signature is used verbatim (for forgeries)."""
    sig = signature if isinstance(signature, str) else b64url(signature)
    return f"{json_segment(header)}.{json_segment(payload)}.{sig}"


def hmac_sign(secret: bytes, alg: str, data: bytes) -> bytes:
    digest = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}[alg[2:]]
    return hmac.new(secret, data, digest).digest()


@dataclass(frozen=True)
class RsaKeyPair:
    private: rsa.RSAPrivateKey
    kid: str

    @property
    def public(self) -> rsa.RSAPublicKey:
        return self.private.public_key()

    def public_pem(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def public_der(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_openssh(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )

    def jwk(self, **members: Any) -> dict[str, Any]:
        """The public JWK; ``members`` add or override (None removes) fields."""
        numbers = self.public.public_numbers()
        base: dict[str, Any] = {
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "n": b64url_uint(numbers.n),
            "e": b64url_uint(numbers.e),
        }
        return _with(base, members)

    def sign(self, alg: str, data: bytes) -> bytes:
        return self.private.sign(data, padding.PKCS1v15(), HASHES[alg[2:]]())


@dataclass(frozen=True)
class EcKeyPair:
    private: ec.EllipticCurvePrivateKey
    kid: str
    crv: str

    @property
    def public(self) -> ec.EllipticCurvePublicKey:
        return self.private.public_key()

    @property
    def alg(self) -> str:
        return CURVES[self.crv][1]

    def public_pem(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def public_der(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_openssh(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )

    def jwk(self, **members: Any) -> dict[str, Any]:
        numbers = self.public.public_numbers()
        size = CURVES[self.crv][2]
        base: dict[str, Any] = {
            "kty": "EC",
            "kid": self.kid,
            "use": "sig",
            "crv": self.crv,
            "x": b64url_uint(numbers.x, size),
            "y": b64url_uint(numbers.y, size),
        }
        return _with(base, members)

    def sign(self, alg: str, data: bytes) -> bytes:
        """JWS (raw ``r || s``) signature."""
        der = self.private.sign(data, ec.ECDSA(HASHES[alg[2:]]()))
        r, s = decode_dss_signature(der)
        size = CURVES[self.crv][2]
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")


SigningKey = RsaKeyPair | EcKeyPair | bytes


def _with(base: dict[str, Any], members: Mapping[str, Any]) -> dict[str, Any]:
    for name, value in members.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


@functools.cache
def rsa_key(name: str, bits: int = 2048) -> RsaKeyPair:
    """An RSA key pair with ``kid`` = ``name``, generated once per process."""
    return RsaKeyPair(rsa.generate_private_key(public_exponent=65537, key_size=bits), kid=name)


@functools.cache
def ec_key(name: str, crv: str = "P-256") -> EcKeyPair:
    return EcKeyPair(ec.generate_private_key(CURVES[crv][0]), kid=name, crv=crv)


def jwks_document(*keys: RsaKeyPair | EcKeyPair | Any) -> dict[str, Any]:
    """``{"keys": [...]}``: key pairs become their public JWK, anything else is kept
    as given (for malformed entries)."""
    return {"keys": [k.jwk() if isinstance(k, RsaKeyPair | EcKeyPair) else k for k in keys]}


def signature_for(key: SigningKey, alg: str, data: bytes) -> bytes:
    if isinstance(key, bytes):
        return hmac_sign(key, alg, data)
    return key.sign(alg, data)


class _OwnKid:
    """Marker: use the signing key's own kid."""


OWN_KID = _OwnKid()


def sign_token(
    payload: Mapping[str, Any],
    key: SigningKey,
    alg: str,
    *,
    kid: Any = OWN_KID,
    header: Mapping[str, Any] | None = None,
) -> str:
    """A compact JWS. By default the header names the key's own kid (none for HMAC);
    ``kid=None`` leaves it out, any other value is used as is (forgeries);
    ``header`` adds or overrides header fields."""
    head: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is OWN_KID:
        kid = None if isinstance(key, bytes) else key.kid
    if kid is not None:
        head["kid"] = kid
    head.update(header or {})
    signing_input = f"{json_segment(head)}.{json_segment(dict(payload))}"
    signature = signature_for(key, alg, signing_input.encode("ascii"))
    return f"{signing_input}.{b64url(signature)}"


def resign(token: str, key: SigningKey, alg: str) -> str:
    """Replace the signature of ``token`` (header and payload untouched)."""
    signing_input = token.rsplit(".", 1)[0]
    return f"{signing_input}.{b64url(signature_for(key, alg, signing_input.encode('ascii')))}"


def session_claims(
    issuer: str,
    *,
    audience: Any = DEFAULT_AUDIENCE,
    sub: Any = "alice",
    tenant: Any = "acme",
    now: float | None = None,
    ttl: int = 600,
    **extra: Any,
) -> dict[str, Any]:
    """Valid claims for ``issuer``; ``extra`` adds or overrides (None removes)."""
    issued = int(time.time() if now is None else now)
    base: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": sub,
        "org_id": tenant,
        "iat": issued,
        "exp": issued + ttl,
    }
    return _with(base, extra)


def self_signed_certificate_der(key: RsaKeyPair) -> bytes:
    """A certificate for an ``x5c`` header (what an attacker would embed)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker.invalid")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key.private, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


BASE64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def public_key_forms(key: RsaKeyPair | EcKeyPair) -> dict[str, bytes]:
    """An issuer's public key in the encodings a key-confusion attacker would try
    as an HMAC secret."""
    return {
        "pem": key.public_pem().encode(),
        "jwk-json": json.dumps(key.jwk()).encode(),
        "der": key.public_der(),
        "openssh": key.public_openssh(),
    }


def non_canonical_segment(segment: str) -> str:
    """Same bytes, other text: set an unused trailing bit (256-byte RSA signatures
    end in a character that carries 2 data bits and 4 zero bits)."""
    assert len(segment) % 4 == 2
    index = BASE64URL_ALPHABET.index(segment[-1])
    return segment[:-1] + BASE64URL_ALPHABET[index ^ 1]
