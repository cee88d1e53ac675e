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
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.errors import InvalidSession

MAX_TOKEN_JSON_DEPTH = 16
"""Header and payload nesting limit; real IdP claims (Keycloak, Auth0) stay under 5."""

_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# A JSON string literal, or one bracket; enough to measure nesting without parsing.
_JSON_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class StrictJsonError(ValueError):
    """The text is not strict JSON (syntax, duplicate key, NaN/Infinity, nesting)."""


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


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise StrictJsonError("duplicate key")
        obj[key] = value
    return obj


def _reject_constant(_: str) -> Any:
    raise StrictJsonError("NaN and Infinity are not JSON")


def _nesting_exceeds(text: str, max_depth: int) -> bool:
    if text.count("{") + text.count("[") <= max_depth:
        return False  # fast path: too few brackets to be that deep
    depth = 0
    for match in _JSON_STRUCTURE.finditer(text):
        symbol = match.group()
        if symbol in ("{", "["):
            depth += 1
            if depth > max_depth:
                return True
        elif symbol in ("}", "]"):
            depth -= 1
    return False


def _reject_huge_floats(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):  # "1e999" parses to inf
        raise StrictJsonError("number out of range")
    return number


def loads_strict_json(text: str, *, max_depth: int) -> Any:
    """Parse JSON rejecting duplicate keys, NaN/Infinity, out-of-range numbers and
    nesting deeper than ``max_depth`` (checked before parsing, so no RecursionError)."""
    if _nesting_exceeds(text, max_depth):
        raise StrictJsonError("nested too deeply")
    if _LONE_SURROGATE_ESCAPE.search(text) and _has_lone_surrogate_escape(text):
        # JSON can spell a lone UTF-16 surrogate ("\ud800"); such a string is not
        # Unicode text and cannot be encoded again (cache keys, vendor bodies, logs).
        raise StrictJsonError("contains a lone surrogate")
    try:
        return _STRICT_DECODER.decode(text)
    except StrictJsonError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int-digit limit
        raise StrictJsonError("not valid JSON") from exc


_LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]", re.ASCII)
# Stateless, so one for all calls (json.loads with hooks builds a decoder per call).
_STRICT_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicate_keys,
    parse_constant=_reject_constant,
    parse_float=_reject_huge_floats,
)


def _has_lone_surrogate_escape(text: str) -> bool:
    """True when a ``\\uD800``-``\\uDFFF`` escape is not part of a valid pair."""
    try:
        decoded = json.loads(text, object_pairs_hook=lambda pairs: [*pairs])
        json.dumps(decoded, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except (ValueError, RecursionError):
        return False  # not valid JSON: the strict parse reports that
    return False


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
        raise InvalidSession("session token is too large")
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
