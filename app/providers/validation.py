"""Checking a policy's vendor request body against a vendor module's request model.

Vendors add body fields more often than the broker is released (Embeddable added
``savedVersion``, ``roles``, ``dataProvider``, ``customCanvasState`` and ``filters``
within six months). Request models are strict, so a misspelt field fails at load;
a provider with ``allow_unknown_fields: true`` instead lets fields its model does not
know pass, and this module says which ones, so the loader can list them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

UNKNOWN_FIELD = "extra_forbidden"
UNKNOWN_FIELD_HINT = (
    "unknown field (check the spelling; if the vendor added it, set "
    "allow_unknown_fields: true on the provider to forward it)"
)


def validate_body(
    model: type[BaseModel], body: Mapping[str, Any], *, allow_unknown_fields: bool = False
) -> tuple[str, ...]:
    """Validate ``body``; return the dotted paths of the unknown fields it let through.

    Raises ValueError naming each offending field (never echoing a value). Unknown
    fields are tolerated only with ``allow_unknown_fields``; the rest of the body is
    then checked without them, so the model's own rules (e.g. which filter operators
    take values) still apply to the fields it knows.
    """
    try:
        model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        unknown = [err["loc"] for err in errors if err["type"] == UNKNOWN_FIELD]
        if not allow_unknown_fields or len(unknown) < len(errors):
            raise ValueError(describe_errors(errors, allow_unknown_fields)) from None
    else:
        return ()
    try:
        known_only = _without(body, unknown)
        model.model_validate(known_only)
    except (KeyError, IndexError, TypeError):
        # An "unknown field" inside a union member is no field of the body: not forwardable.
        raise ValueError(describe_errors(errors)) from None
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        raise ValueError(describe_errors(errors, allow_unknown_fields)) from None
    return tuple(sorted({dotted(loc) for loc in unknown}))


def describe_errors(errors: Iterable[ErrorDetails], allow_unknown_fields: bool = False) -> str:
    """``field.path: reason; ...`` without input values (they may come from secrets)."""
    parts = []
    for err in errors:
        if allow_unknown_fields and err["type"] == UNKNOWN_FIELD:
            continue
        reason = UNKNOWN_FIELD_HINT if err["type"] == UNKNOWN_FIELD else err["msg"]
        parts.append(f"{dotted(err['loc'])}: {reason.removeprefix('Value error, ')}")
    return "; ".join(parts)


def dotted(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def _without(body: Mapping[str, Any], paths: Iterable[Sequence[int | str]]) -> Any:
    trimmed: Any = copy.deepcopy(dict(body))
    for path in paths:
        parent = trimmed
        for part in path[:-1]:
            parent = parent[part]
        del parent[path[-1]]
    return trimmed
