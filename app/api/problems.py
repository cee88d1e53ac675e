"""Rendering errors as ``application/problem+json`` (RFC 9457), and the one handler.

FastAPI's own failures are folded into the same shape: request validation (422 in
FastAPI) becomes ``400 invalid_request``; unknown routes and methods become 404/405
problem bodies.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.errors import (
    PROBLEM_CONTENT_TYPE,
    BrokerError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
)

log = logging.getLogger("token_broker.api")

# X-Content-Type-Options and the other security headers are added to every response
# by RequestContextMiddleware.
NO_STORE_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "-")


def problem_response(error: BrokerError, request_id: str) -> Response:
    return Response(
        content=orjson.dumps(error.problem(request_id)),
        status_code=error.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers={**NO_STORE_HEADERS, **error.headers},
    )


def describe_validation_errors(errors: list[dict[str, object]] | object) -> str:
    """A short description of what is wrong, naming fields but never echoing values."""
    if not isinstance(errors, list):
        return "the request is not valid"
    parts: list[str] = []
    for err in errors[:5]:
        if not isinstance(err, dict):
            continue
        loc = [
            str(p)[:64]
            for p in err.get("loc", ())  # type: ignore[union-attr]
            if p not in ("body", "query", "header")
        ]
        where = ".".join(loc) or "body"
        kind = err.get("type")
        if kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "missing":
            message = "field required"
        else:
            message = str(err.get("msg", "invalid"))
        parts.append(f"{where}: {message}")
    return "; ".join(parts) or "the request is not valid"


async def _broker_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BrokerError)
    return problem_response(exc, request_id_of(request))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    error = InvalidRequest(describe_validation_errors(exc.errors()))
    return problem_response(error, request_id_of(request))


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error: BrokerError
    if exc.status_code == 404:
        error = NotFound()
    elif exc.status_code == 405:
        error = MethodNotAllowed()
        if exc.headers and "Allow" in exc.headers:
            error.headers["Allow"] = exc.headers["Allow"]
    elif exc.status_code == 413:
        error = RequestTooLarge()
    elif 400 <= exc.status_code < 500:
        error = InvalidRequest()
    else:
        error = InternalError()
    return problem_response(error, request_id_of(request))


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BrokerError, _broker_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
