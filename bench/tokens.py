"""Session JWTs for the benchmark: one RS256 key pair, thousands of tokens.

S2 and S3 need tens of thousands of distinct RS256 tokens. An RSA-2048 signature costs
~0.7 ms, so they are signed in a process pool (one worker per CPU) before any
measurement starts, never while a system is under load.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ISSUER = "bench-idp"
AUDIENCE = "analytics-web"
SESSION_TTL_SECONDS = 6 * 3600
_HEADER = {"alg": "RS256", "typ": "JWT"}

# (user id, tenant, roles)
Session = tuple[str, str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class KeyPair:
    private_pem: bytes
    public_pem: bytes


def generate_key_pair() -> KeyPair:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(
        private_pem=private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        public_pem=private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _segment(value: dict[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


def _claims(session: Session, issued_at: int) -> dict[str, Any]:
    user, tenant, roles = session
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user,
        "org_id": tenant,
        "roles": list(roles),
        "iat": issued_at,
        "exp": issued_at + SESSION_TTL_SECONDS,
        "jti": uuid.uuid4().hex,  # two sessions of one user are two distinct tokens
    }


def sign_rs256(private_key: rsa.RSAPrivateKey, claims: dict[str, Any]) -> str:
    signing_input = f"{_segment(_HEADER)}.{_segment(claims)}"
    signature = private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


_worker_key: rsa.RSAPrivateKey | None = None


def _load_worker_key(private_pem: bytes) -> None:
    global _worker_key
    key = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    _worker_key = key


def _sign_chunk(chunk: Sequence[Session], issued_at: int) -> list[str]:
    assert _worker_key is not None
    return [sign_rs256(_worker_key, _claims(session, issued_at)) for session in chunk]


def mint_sessions(keys: KeyPair, sessions: Sequence[Session]) -> list[str]:
    """One RS256 session JWT per (user, tenant, roles), in order; signed in parallel."""
    issued_at = int(time.time()) - 5
    if len(sessions) < 200:
        _load_worker_key(keys.private_pem)
        return _sign_chunk(sessions, issued_at)
    workers = max(1, os.cpu_count() or 1)
    size = max(100, len(sessions) // (workers * 8))
    chunks = [sessions[start : start + size] for start in range(0, len(sessions), size)]
    with ProcessPoolExecutor(
        max_workers=workers, initializer=_load_worker_key, initargs=(keys.private_pem,)
    ) as pool:
        signed = pool.map(_sign_chunk, chunks, [issued_at] * len(chunks))
        return [token for part in signed for token in part]


def write_token_file(path: Path, tokens: Sequence[str]) -> Path:
    """One token per line, for the wrk Lua scripts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{token}\n" for token in tokens))
    return path
