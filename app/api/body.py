"""Reading JSON request bodies strictly: ≤ 16 KiB, no duplicate keys, bounded nesting,
unknown fields rejected. Errors name fields, never echo values."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from app.api.problems import describe_validation_errors
from app.errors import InvalidRequest, RequestTooLarge

MAX_BODY_BYTES = 16 * 1024
MAX_DEPTH = 16
ModelT = TypeVar("ModelT", bound=BaseModel)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _depth(value: Any, limit: int) -> bool:
    """True when ``value`` nests no deeper than ``limit`` containers."""
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict | list):
            if depth > limit:
                return False
            children = current.values() if isinstance(current, dict) else current
            stack.extend((child, depth + 1) for child in children)
    return True


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > MAX_BODY_BYTES:
                raise RequestTooLarge()
        except ValueError:
            raise InvalidRequest("Content-Length is not a number") from None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise InvalidRequest("the request body must be a JSON object")
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise InvalidRequest(f"duplicate key {str(exc)[:64]!r} in the JSON body") from None
    except RecursionError:
        raise InvalidRequest("the JSON body is nested too deeply") from None
    except ValueError:
        raise InvalidRequest("the request body is not valid JSON (UTF-8)") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if not _depth(data, MAX_DEPTH):
        raise InvalidRequest("the JSON body is nested too deeply")
    return data


def validate(model: type[ModelT], data: Any) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(
            describe_validation_errors(exc.errors(include_input=False, include_url=False))
        ) from None


async def read_model(request: Request, model: type[ModelT]) -> ModelT:
    return validate(model, parse_json(await read_body(request)))
