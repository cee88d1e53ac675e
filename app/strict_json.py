"""Strict JSON for untrusted text: session tokens, request bodies, JWKS documents.

The standard library's parser accepts what an attacker can use: duplicate keys (two
readers of one document see different values), ``NaN``/``Infinity``, numbers that
overflow to ``inf``, lone UTF-16 surrogates (text that cannot be encoded again) and
nesting deep enough to raise ``RecursionError``. :func:`loads_strict_json` refuses
all of them with :class:`StrictJsonError`, whose message never quotes the input.

A leaf module: the auth, api and JWKS code all parse with it and none imports another
for it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from app.jsonscan import nesting_exceeds


class StrictJsonError(ValueError):
    """The text is not strict JSON (syntax, duplicate key, NaN/Infinity, nesting)."""


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise StrictJsonError("duplicate key")
        obj[key] = value
    return obj


def _reject_constant(_: str) -> Any:
    raise StrictJsonError("NaN and Infinity are not JSON")


def _reject_huge_floats(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):  # "1e999" parses to inf
        raise StrictJsonError("number out of range")
    return number


def loads_strict_json(text: str, *, max_depth: int) -> Any:
    """Parse JSON rejecting duplicate keys, NaN/Infinity, out-of-range numbers and
    nesting deeper than ``max_depth`` (checked before parsing, so no RecursionError)."""
    if nesting_exceeds(text, max_depth):
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
