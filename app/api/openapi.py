"""The OpenAPI 3.1 document at ``/openapi.json``: the contract clients are generated from.

Front-end teams generate types and clients from it (openapi-typescript,
openapi-python-client), and the test suite fuzzes the running broker against it
(schemathesis), so it is held to what those tools need:

- every ``$ref`` points into ``components`` (pydantic's ``$defs`` are hoisted there);
- every operation has a stable ``operationId`` (``OPERATION_IDS`` for framework routes
  that do not set one, ``TokenRoute.operation_id`` for the token routes);
- every error an operation can give is ``application/problem+json`` with the one
  ``Problem`` schema, whose ``code`` is the enum of the codes the error classes in
  ``app.errors`` define, with an example per code built from those classes;
- the security schemes (session bearer JWT, the session cookie when the policy names
  one, the service key) are applied per operation;
- the response headers are declared where they are sent: ``X-Request-ID`` on every
  response, ``Cache-Control``/``Pragma`` and ``RateLimit-*`` on tokens,
  ``Retry-After`` on 429 and 503, ``WWW-Authenticate`` on 401, ``Allow`` on 405.

The framework routes (probes, metrics, anything added with FastAPI) are described by
FastAPI and completed here; the token routes are not framework routes
(``app.api.routing``), so their operations are written out below, next to nothing
else, and a test checks that they match ``app.api.tokens.ROUTES``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute

from app.api.routing import TokenRoute
from app.api.schemas import (
    EmbedsResponse,
    InternalTokenRequest,
    Problem,
    TokenRequest,
    TokenResponse,
)
from app.errors import (
    PROBLEM_CONTENT_TYPE,
    BrokerError,
    RateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
EXAMPLE_REQUEST_ID = "7f3c2a9e4b1d4c6f8a0e5d2b3c4a1f90"

DESCRIPTION = """\
Mints short-lived embedded-analytics tokens for the signed-in user without exposing
the vendor's API key. Errors are `application/problem+json` (RFC 9457) with a stable
`code`; every response carries `X-Request-ID`, which also appears in the broker's logs.
The product documentation is `docs/api.md` in the broker's repository.
"""

# Stable ids for framework routes that do not set ``operation_id`` themselves.
OPERATION_IDS: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "getHealth",
    ("GET", "/readyz"): "getReadiness",
    ("GET", "/metrics"): "getMetrics",
    ("GET", "/v1/client.js"): "getClientScript",
}

# What FastAPI cannot infer from a framework route that answers with something other
# than JSON: the browser client module (app.api's client route, api.md).
FRAMEWORK_RESPONSES: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/v1/client.js"): {
        "200": {
            "description": "The browser client as an ES module.",
            "headers": {
                "ETag": {"description": "Strong validator.", "schema": {"type": "string"}},
                "Cache-Control": {
                    "description": "`public, max-age=300`.",
                    "schema": {"type": "string"},
                },
            },
            "content": {"text/javascript": {"schema": {"type": "string"}}},
        },
        "304": {"description": "Not modified (`If-None-Match` matched the `ETag`)."},
    },
}

# A detail per code for the examples, where the class default says too little.
EXAMPLE_DETAILS: dict[str, str] = {
    "invalid_request": "embed: field required",
    "invalid_session": "the session token's signature is not valid",
    "tenant_not_allowed": "the session does not grant tenant 'globex'",
    "embed_not_allowed": "embed 'ops' is not available to you",
    "missing_claim": "the session has no 'department' claim",
    "upstream_rejected": "the vendor answered 403 INVALID_PERMISSIONS",
}

# Which codes each operation can answer with, by status (api.md "Errors").
SESSION_ERRORS: dict[int, tuple[str, ...]] = {
    400: ("invalid_request",),
    401: ("unauthenticated", "invalid_session", "session_expired"),
    403: ("tenant_not_allowed", "embed_not_allowed", "missing_claim", "origin_not_allowed"),
}
ISSUANCE_ERRORS: dict[int, tuple[str, ...]] = {
    413: ("request_too_large",),
    429: ("rate_limited",),
    502: ("upstream_rejected", "upstream_auth_failed", "upstream_bad_response"),
    503: ("upstream_unavailable",),
    504: ("upstream_timeout",),
}
SERVICE_ERRORS: dict[int, tuple[str, ...]] = {
    400: ("invalid_request",),
    401: ("invalid_service_key",),
    403: ("tenant_not_allowed", "embed_not_allowed", "missing_claim"),
}
EVERY_OPERATION_ERRORS: dict[int, tuple[str, ...]] = {
    405: ("method_not_allowed",),
    500: ("internal_error",),
}
# Answered by the connection limits (app.connections) before any route is chosen.
CONNECTION_ERRORS: dict[int, tuple[str, ...]] = {
    408: ("request_timeout",),
    431: ("headers_too_large",),
    503: ("overloaded",),
}


def merge_errors(*maps: dict[int, tuple[str, ...]]) -> dict[int, tuple[str, ...]]:
    """The codes of several maps, per status, in order and without repeats."""
    merged: dict[int, tuple[str, ...]] = {}
    for errors in maps:
        for status, codes in errors.items():
            merged[status] = tuple(dict.fromkeys((*merged.get(status, ()), *codes)))
    return merged


STATUS_DESCRIPTIONS = {
    400: "The request is malformed (JSON, types, unknown fields, missing tenant).",
    401: "No usable credentials.",
    403: "Authenticated, but not allowed.",
    405: "This path does not accept that method (see `Allow`).",
    408: "The request's headers or body did not arrive in time; the connection is closed.",
    413: "The body is larger than 16 KiB.",
    429: "A rate limit is exhausted; retry after `Retry-After` seconds.",
    431: "The request line and headers are too large, or there are too many header fields.",
    500: "A bug: the body says nothing but the request id.",
    502: "The vendor refused or answered without a usable token.",
    503: "The vendor is unavailable (or the broker is protecting it), or the broker is at "
    "its connection limit; retry after `Retry-After` seconds.",
    504: "The vendor did not answer in time.",
}


def _integer_header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "integer", "minimum": 0}}


HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id: echoed when the request sent a sane one "
        "(1-128 of `[A-Za-z0-9._-]`), generated otherwise. Also in the logs.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
    },
    "Cache-Control": {
        "description": "`no-store`: tokens and errors are never cached.",
        "schema": {"type": "string"},
    },
    "Pragma": {"description": "`no-cache`, for old proxies.", "schema": {"type": "string"}},
    "Retry-After": {
        "description": "Whole seconds to wait before retrying (at least 1).",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
    "RateLimit-Limit": _integer_header("The tightest applied limit (requests per window)."),
    "RateLimit-Remaining": _integer_header("Requests left in that limit's window."),
    "RateLimit-Reset": _integer_header("Seconds until that limit's window resets."),
    "WWW-Authenticate": {
        "description": '`Bearer`, with `error="invalid_token"` for a rejected token.',
        "schema": {"type": "string"},
    },
    "Allow": {"description": "The methods this path accepts.", "schema": {"type": "string"}},
}
RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def error_classes() -> list[type[BrokerError]]:
    """Every concrete error class: the leaves of the BrokerError tree."""
    leaves: list[type[BrokerError]] = []
    pending: list[type[BrokerError]] = [BrokerError]
    while pending:
        cls = pending.pop()
        children = cls.__subclasses__()
        if children:
            pending.extend(children)
        else:
            leaves.append(cls)
    return sorted(leaves, key=lambda cls: (cls.status, cls.code))


def problem_codes() -> list[str]:
    return sorted({cls.code for cls in error_classes()})


def example_problem(code: str) -> dict[str, Any]:
    """A real problem body for ``code``, as the error class renders it."""
    cls = next(cls for cls in error_classes() if cls.code == code)
    detail = EXAMPLE_DETAILS.get(code)
    error: BrokerError
    if cls is UpstreamRejected:
        error = UpstreamRejected(detail, upstream_status=403, upstream_code="INVALID_PERMISSIONS")
    elif cls is RateLimited:
        error = RateLimited(detail, retry_after_seconds=30)
    elif cls is UpstreamUnavailable:
        error = UpstreamUnavailable(detail, retry_after_seconds=5)
    else:
        error = cls(detail)
    return error.problem(EXAMPLE_REQUEST_ID)


def _schemas() -> dict[str, Any]:
    models: Sequence[tuple[type[BaseModel], Any]] = [
        (TokenRequest, "validation"),
        (InternalTokenRequest, "validation"),
        (TokenResponse, "serialization"),
        (EmbedsResponse, "serialization"),
        (Problem, "serialization"),
    ]
    _, top = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = top["$defs"]
    for schema in schemas.values():
        for field in schema.get("properties", {}).values():
            # An optional field is one not in "required"; generators (openapi-typescript)
            # read "default": null as "always present".
            if "default" in field and field["default"] is None:
                del field["default"]
    problem = schemas["Problem"]
    problem["properties"]["code"]["enum"] = problem_codes()
    # Present only on upstream_rejected; the status is then always a number.
    problem["properties"]["upstream_status"].pop("anyOf")
    problem["properties"]["upstream_status"]["type"] = "integer"
    problem["examples"] = [example_problem("embed_not_allowed")]
    return schemas


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _header_refs(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _error_responses(errors: dict[int, tuple[str, ...]]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in sorted(errors):
        codes = errors[status]
        headers = ["X-Request-ID", "Cache-Control"]
        if status == 401:
            headers.append("WWW-Authenticate")
        elif status == 405:
            headers.append("Allow")
        elif status == 429:
            headers += ["Retry-After", *RATE_LIMIT_HEADERS]
        elif status == 503:
            headers.append("Retry-After")
        listed = ", ".join(f"`{code}`" for code in codes)
        responses[str(status)] = {
            "description": f"{STATUS_DESCRIPTIONS[status]} Codes: {listed}.",
            "headers": _header_refs(*headers),
            "content": {
                PROBLEM_CONTENT_TYPE: {
                    "schema": _ref("Problem"),
                    "examples": {code: {"value": example_problem(code)} for code in codes},
                }
            },
        }
    return responses


def _token_success(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _header_refs("X-Request-ID", "Cache-Control", "Pragma", *RATE_LIMIT_HEADERS),
        "content": {"application/json": {"schema": _ref("TokenResponse")}},
    }


SESSION_SECURITY_NOTE = (
    "Credentials: `Authorization: Bearer <session JWT>`, else the session cookie when "
    "the policy names one (then `Content-Type: application/json` is required and an "
    "`Origin` must be one of `cors.allow_origins`)."
)


def _token_operations() -> dict[tuple[str, str], dict[str, Any]]:
    """The token routes' operations (they are not framework routes)."""
    token_errors = merge_errors(
        SESSION_ERRORS, ISSUANCE_ERRORS, EVERY_OPERATION_ERRORS, CONNECTION_ERRORS
    )
    service_errors = merge_errors(
        SERVICE_ERRORS, ISSUANCE_ERRORS, EVERY_OPERATION_ERRORS, CONNECTION_ERRORS
    )
    return {
        ("POST", "/v1/tokens"): {
            "tags": ["tokens"],
            "summary": "Mint an embed token for the signed-in user",
            "description": "Verifies the session, authorizes the embed for the user's "
            "tenant and roles, and returns a short-lived vendor token (cached while "
            "fresh). " + SESSION_SECURITY_NOTE,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": _ref("TokenRequest"),
                        "examples": {
                            "single-tenant user": {"value": {"embed": "sales-overview"}},
                            "multi-tenant user": {
                                "value": {"embed": "sales-overview", "tenant": "acme"}
                            },
                        },
                    }
                },
            },
            "responses": {
                "200": _token_success("The embed token."),
                **_error_responses(token_errors),
            },
        },
        ("GET", "/v1/embeds"): {
            "tags": ["tokens"],
            "summary": "List the embeds the signed-in user may request",
            "description": SESSION_SECURITY_NOTE,
            "parameters": [
                {
                    "name": "tenant",
                    "in": "query",
                    "required": False,
                    "description": "Which of the session's tenants (needed for multi-tenant users).",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                    "example": "acme",
                }
            ],
            "responses": {
                "200": {
                    "description": "The embeds this user may request for that tenant.",
                    "headers": _header_refs("X-Request-ID", "Cache-Control", "Pragma"),
                    "content": {"application/json": {"schema": _ref("EmbedsResponse")}},
                },
                **_error_responses(
                    merge_errors(SESSION_ERRORS, EVERY_OPERATION_ERRORS, CONNECTION_ERRORS)
                ),
            },
        },
        ("POST", "/internal/v1/tokens"): {
            "tags": ["service-to-service"],
            "summary": "Mint an embed token on behalf of a user (internal services)",
            "description": "For the broker's internal callers, authenticated with their "
            "service key (`Authorization: Bearer <key>`). The service's `allow` rules "
            "apply on top of the policy; the response is the same as `createToken`'s.",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": _ref("InternalTokenRequest"),
                        "examples": {
                            "user": {
                                "value": {
                                    "embed": "sales-overview",
                                    "user": {
                                        "id": "alice",
                                        "tenant": "acme",
                                        "roles": ["analyst"],
                                        "email": "alice@acme.test",
                                        "claims": {},
                                    },
                                }
                            }
                        },
                    }
                },
            },
            "responses": {
                "200": _token_success("The embed token."),
                **_error_responses(service_errors),
            },
        },
    }


def _security_schemes(cookie_name: str | None) -> dict[str, Any]:
    schemes: dict[str, Any] = {
        "sessionBearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "The user's session JWT from the company's IdP or app backend.",
        },
        "serviceKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "An internal service's key (the policy holds only its SHA-256).",
        },
    }
    if cookie_name:
        schemes["sessionCookie"] = {
            "type": "apiKey",
            "in": "cookie",
            "name": cookie_name,
            "description": "The session JWT in a cookie (needs `Content-Type: "
            "application/json`; `Origin`, when sent, must be allowed by `cors`).",
        }
    return schemes


def _framework_operations_completed(paths: dict[str, Any]) -> None:
    """What FastAPI cannot know about the framework routes, added in place."""
    for path, item in paths.items():
        for method, operation in item.items():
            key = (method.upper(), path)
            if key in OPERATION_IDS:
                operation["operationId"] = OPERATION_IDS[key]
            if key in FRAMEWORK_RESPONSES:
                operation["responses"] = copy.deepcopy(FRAMEWORK_RESPONSES[key])
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # never sent: bad input is 400 invalid_request
            for response in responses.values():
                headers = response.setdefault("headers", {})
                headers.setdefault("X-Request-ID", {"$ref": "#/components/headers/X-Request-ID"})
            every = merge_errors(EVERY_OPERATION_ERRORS, CONNECTION_ERRORS)
            for status, error in _error_responses(every).items():
                responses.setdefault(status, error)
            operation["security"] = []


def build_document(
    *,
    version: str,
    framework_routes: Iterable[BaseRoute],
    token_routes: Sequence[TokenRoute],
    cookie_name: str | None,
    root_path: str = "",
) -> dict[str, Any]:
    """The whole document for a policy whose session cookie is ``cookie_name``."""
    document = get_openapi(
        title="token-broker",
        version=version,
        openapi_version=OPENAPI_VERSION,
        summary="Short-lived embedded-analytics tokens without exposing vendor API keys.",
        description=DESCRIPTION,
        routes=list(framework_routes),
        servers=[{"url": root_path}] if root_path else None,
    )
    paths: dict[str, Any] = document.setdefault("paths", {})
    _framework_operations_completed(paths)
    components = document.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(_schemas())
    components["headers"] = copy.deepcopy(HEADERS)
    components["securitySchemes"] = _security_schemes(cookie_name)

    session_security: list[dict[str, list[str]]] = [{"sessionBearer": []}]
    if cookie_name:
        session_security.append({"sessionCookie": []})
    operations = _token_operations()
    for route in token_routes:
        operation = copy.deepcopy(operations[(route.method, route.path)])
        operation["operationId"] = route.operation_id
        operation["security"] = (
            [{"serviceKey": []}] if route.credentials == "service" else session_security
        )
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    document["paths"] = dict(sorted(paths.items()))
    document["tags"] = [
        {"name": "tokens", "description": "Browser-facing: the signed-in user's tokens."},
        {"name": "service-to-service", "description": "Internal services, with service keys."},
        {"name": "probes", "description": "Health, readiness and metrics; no credentials."},
    ]
    return document
