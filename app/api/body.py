"""Reading JSON request bodies strictly: ≤ 16 KiB, no duplicate keys, bounded nesting,
unknown fields rejected. Errors name fields, never echo values."""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from app.api.problems import describe_validation_errors
from app.errors import InvalidRequest, RequestTooLarge
from app.strict_json import StrictJsonError, loads_strict_json

MAX_BODY_BYTES = 16 * 1024
MAX_DEPTH = 16
ModelT = TypeVar("ModelT", bound=BaseModel)


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > MAX_BODY_BYTES:
                raise RequestTooLarge()
        except ValueError:
            raise InvalidRequest("Content-Length is not a number") from None
    # Straight from the ASGI receive channel (Starlette's stream() is a generator
    # around the same loop); the body is read once, by this function only.
    receive = request.receive
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """The same strict JSON rules as session tokens: no duplicate keys, no NaN, no
    lone surrogates, bounded nesting (checked before parsing)."""
    if not raw.strip():
        raise InvalidRequest("the request body must be a JSON object")
    try:
        data = loads_strict_json(raw.decode("utf-8"), max_depth=MAX_DEPTH)
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not valid JSON (UTF-8)") from None
    except StrictJsonError as exc:
        raise InvalidRequest(f"the request body is not accepted JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


def validate(model: type[ModelT], data: Any) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(
            describe_validation_errors(exc.errors(include_input=False, include_url=False))
        ) from None


MEMO_MAX_BODY_BYTES = 512


@functools.lru_cache(maxsize=4096)
def _parsed_small_body(model: type[BaseModel], raw: bytes) -> BaseModel:
    # Front ends send the same few small bodies ({"embed": ...}) over and over; the
    # result is a pure function of the bytes and the models are frozen. Errors are
    # raised, hence never cached.
    return validate(model, parse_json(raw))


async def read_model(request: Request, model: type[ModelT]) -> ModelT:
    raw = await read_body(request)
    if len(raw) <= MEMO_MAX_BODY_BYTES:
        return _parsed_small_body(model, raw)  # type: ignore[return-value]
    return validate(model, parse_json(raw))
