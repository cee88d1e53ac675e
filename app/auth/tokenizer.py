"""Pre-parse a compact JWS before any cryptography (security.md step 1).

Everything here runs on attacker-controlled bytes, so it is strict and bounded: a size
limit first, then exactly three canonical base64url segments (no padding, nothing
outside ``[A-Za-z0-9_-]``), then header and payload as UTF-8 JSON *objects* without
duplicate keys, non-finite numbers or deep nesting. Failures raise
:class:`~app.errors.InvalidSession` whose detail names the kind of failure and never
quotes the token.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.errors import InvalidSession
from app.strict_json import StrictJsonError, loads_strict_json

MAX_TOKEN_JSON_DEPTH = 16
"""Header and payload nesting limit; real IdP claims (Keycloak, Auth0) stay under 5."""

_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class UnverifiedToken:
    """A compact JWS split and decoded, its signature not yet checked."""

    header: Mapping[str, Any]
    payload: Mapping[str, Any]
    signing_input: bytes
    signature: bytes

    def __repr__(self) -> str:
        # The parts are the token itself: never show them.
        return "UnverifiedToken(...)"


def decode_base64url(segment: str) -> bytes:
    """Decode unpadded, canonical base64url (``segment`` already matched the alphabet).

    Non-canonical encodings (non-zero trailing bits) are refused so that one byte
    string has exactly one textual token.
    """
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        raise ValueError("not canonical base64url")
    return raw


def _decode_json_object(segment: str, part: str) -> dict[str, Any]:
    try:
        text = decode_base64url(segment).decode("utf-8")
    except ValueError:  # UnicodeDecodeError is a ValueError
        raise InvalidSession(f"token {part} is not base64url-encoded UTF-8") from None
    try:
        value = loads_strict_json(text, max_depth=MAX_TOKEN_JSON_DEPTH)
    except StrictJsonError as exc:
        raise InvalidSession(f"token {part} is not strict JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidSession(f"token {part} is not a JSON object")
    return value


def parse_compact_jws(token: str, *, max_bytes: int) -> UnverifiedToken:
    """Split and decode ``token``; raise InvalidSession for anything malformed."""
    if len(token) > max_bytes:
        raise InvalidSession("session token is too large", reason="too_large")
    if not _COMPACT_JWS.fullmatch(token):
        # Only the shape is described; the characters are never echoed.
        if token.count(".") != 2:
            raise InvalidSession("session token must have exactly three segments (a signed JWT)")
        raise InvalidSession("session token segments must be unpadded base64url")
    header_segment, payload_segment, signature_segment = token.split(".")
    header = _decode_json_object(header_segment, "header")
    payload = _decode_json_object(payload_segment, "payload")
    try:
        signature = decode_base64url(signature_segment)
    except ValueError:
        raise InvalidSession("token signature is not valid") from None
    if not signature:
        raise InvalidSession("token signature is not valid")
    return UnverifiedToken(
        header=header,
        payload=payload,
        signing_input=f"{header_segment}.{payload_segment}".encode("ascii"),
        signature=signature,
    )
