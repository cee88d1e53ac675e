"""Errors the broker answers with.

Every error a client can see is a :class:`BrokerError`; one exception handler renders
it as ``application/problem+json`` (RFC 9457) with a stable ``code`` and the request id.
Nothing else is ever shown to a client: an unexpected exception becomes
``500 internal_error`` whose body says nothing but the request id.

    BrokerError
    ├── InvalidRequest          400 invalid_request
    ├── RequestTooLarge         413 request_too_large
    ├── NotFound                404 not_found
    ├── MethodNotAllowed        405 method_not_allowed
    ├── RequestTimeout          408 request_timeout        ┐ answered by the connection
    ├── HeadersTooLarge         431 headers_too_large      │ limits (app.connections),
    ├── Overloaded              503 overloaded (Retry-After) ┘ before the app sees a request
    ├── AuthenticationError     401
    │   ├── Unauthenticated         unauthenticated  (WWW-Authenticate: Bearer)
    │   ├── InvalidSession          invalid_session
    │   ├── SessionExpired          session_expired
    │   └── InvalidServiceKey       invalid_service_key
    ├── PermissionDenied        403
    │   ├── TenantNotAllowed        tenant_not_allowed
    │   ├── EmbedNotAllowed         embed_not_allowed
    │   ├── MissingClaim            missing_claim
    │   └── OriginNotAllowed        origin_not_allowed
    ├── RateLimited             429 rate_limited     (Retry-After)
    ├── UpstreamError           the vendor failed us
    │   ├── UpstreamRejected        502 upstream_rejected  (upstream_status, upstream_code)
    │   ├── UpstreamAuthFailed      502 upstream_auth_failed
    │   ├── UpstreamBadResponse     502 upstream_bad_response
    │   ├── UpstreamUnavailable     503 upstream_unavailable (Retry-After)
    │   └── UpstreamTimeout         504 upstream_timeout
    └── InternalError           500 internal_error

``detail`` is for people. It must never contain an API key, a session JWT, an issued
token or a raw vendor body: callers pass only short, scrubbed text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

PROBLEM_TYPE_BASE = "https://token-broker.dev/errors/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class BrokerError(Exception):
    """Base of every error rendered to a client."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"
    default_detail: ClassVar[str] = "the request could not be completed"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.detail = detail if detail is not None else self.default_detail
        self.headers: dict[str, str] = dict(headers or {})
        self.extra: dict[str, Any] = dict(extra or {})
        super().__init__(self.detail)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, detail={self.detail!r})"

    def problem(self, request_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            "request_id": request_id,
        }
        body.update(self.extra)
        return body


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, never below 1."""
    return str(max(1, math.ceil(seconds)))


class InvalidRequest(BrokerError):
    status = 400
    code = "invalid_request"
    title = "Invalid request"
    default_detail = "the request body is not valid"


class RequestTooLarge(BrokerError):
    status = 413
    code = "request_too_large"
    title = "Request too large"
    default_detail = "the request body is larger than 16 KiB"


class NotFound(BrokerError):
    status = 404
    code = "not_found"
    title = "Not found"
    default_detail = "no such endpoint"


class MethodNotAllowed(BrokerError):
    status = 405
    code = "method_not_allowed"
    title = "Method not allowed"
    default_detail = "this endpoint does not accept that method"


class RequestTimeout(BrokerError):
    status = 408
    code = "request_timeout"
    title = "Request timeout"
    default_detail = "the request did not arrive in time"


class HeadersTooLarge(BrokerError):
    status = 431
    code = "headers_too_large"
    title = "Request header fields too large"
    default_detail = "the request headers are too large"


class Overloaded(BrokerError):
    status = 503
    code = "overloaded"
    title = "Overloaded"
    default_detail = "the broker is at its connection limit; retry shortly"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


CONNECTION_REFUSAL_REASONS = (
    "header_too_large",  # request line and headers over BROKER_MAX_HEADER_BYTES
    "too_many_headers",  # more than BROKER_MAX_HEADER_FIELDS
    "header_timeout",  # headers unfinished after BROKER_HEADER_TIMEOUT_SECONDS
    "body_timeout",  # body unfinished after BROKER_BODY_TIMEOUT_SECONDS
    "over_capacity",  # every connection and the probe reserve in use
    "reserve_not_probe",  # a reserve connection asked for something other than a probe
    "evicted",  # an idle connection closed to make room for a new one
)
"""Why the connection limits (app.connections) refused a request or closed a
connection: the ``reason`` values of ``token_broker_connections_refused_total``."""


SESSION_REJECTION_REASONS = (
    "missing",  # no credentials at all
    "malformed",  # not a well-formed signed JWT, or the credential is sent wrongly
    "too_large",  # longer than session.max_token_bytes
    "unknown_issuer",  # iss missing or not a configured issuer
    "algorithm_not_allowed",  # alg not on the issuer's allow-list, or not its key's
    "unknown_key",  # kid not published by the issuer
    "keys_unavailable",  # the issuer's JWKS has never been fetched
    "bad_signature",
    "wrong_audience",
    "not_yet_valid",  # nbf or iat in the future
    "invalid_claims",  # exp/iat missing, or the user, tenant or role claims unusable
    "expired",
    "origin_not_allowed",  # a cookie credential from another site
    "invalid_service_key",  # /internal: missing or unknown service key
)
"""Why a credential was refused: the closed set of ``reason`` values of the
``session.rejected`` audit event and ``token_broker_sessions_rejected_total``."""


class AuthenticationError(BrokerError):
    status = 401
    code = "invalid_session"
    title = "Invalid session"
    default_detail = "the session token is not valid"
    reason: str = "malformed"
    """One of :data:`SESSION_REJECTION_REASONS`."""
    issuer: str | None = None
    """The configured issuer the token named, once known (for the audit event)."""


class Unauthenticated(AuthenticationError):
    code = "unauthenticated"
    title = "Unauthenticated"
    default_detail = "no session credentials were sent"
    reason = "missing"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class InvalidSession(AuthenticationError):
    code = "invalid_session"
    title = "Invalid session"

    def __init__(self, detail: str | None = None, *, reason: str = "malformed") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        self.reason = reason


class SessionExpired(AuthenticationError):
    code = "session_expired"
    title = "Session expired"
    default_detail = "the session token has expired"
    reason = "expired"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class InvalidServiceKey(AuthenticationError):
    code = "invalid_service_key"
    title = "Invalid service key"
    default_detail = "the service key is missing or unknown"
    reason = "invalid_service_key"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class PermissionDenied(BrokerError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class TenantNotAllowed(PermissionDenied):
    code = "tenant_not_allowed"
    title = "Tenant not allowed"
    default_detail = "the session does not grant access to that tenant"


class EmbedNotAllowed(PermissionDenied):
    code = "embed_not_allowed"
    title = "Embed not allowed"
    default_detail = "the embed does not exist or is not available to you"


class MissingClaim(PermissionDenied):
    code = "missing_claim"
    title = "Missing claim"
    default_detail = "the session lacks a claim the policy needs"


class OriginNotAllowed(PermissionDenied):
    code = "origin_not_allowed"
    title = "Origin not allowed"
    default_detail = "cookie credentials are not accepted from this origin"
    reason = "origin_not_allowed"
    issuer: str | None = None


class RateLimited(BrokerError):
    status = 429
    code = "rate_limited"
    title = "Rate limited"
    default_detail = "too many token requests; retry later"

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after_seconds: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        merged = {"Retry-After": retry_after_header(retry_after_seconds), **(headers or {})}
        super().__init__(detail, headers=merged)


class UpstreamError(BrokerError):
    status = 502
    code = "upstream_error"
    title = "Upstream error"


class UpstreamRejected(UpstreamError):
    status = 502
    code = "upstream_rejected"
    title = "Upstream rejected the request"
    default_detail = "the vendor rejected the token request"

    def __init__(
        self, detail: str | None = None, *, upstream_status: int, upstream_code: str | None
    ) -> None:
        super().__init__(
            detail, extra={"upstream_status": upstream_status, "upstream_code": upstream_code}
        )


class UpstreamAuthFailed(UpstreamError):
    status = 502
    code = "upstream_auth_failed"
    title = "Upstream authentication failed"
    default_detail = "the vendor rejected the broker's API key"


class UpstreamBadResponse(UpstreamError):
    status = 502
    code = "upstream_bad_response"
    title = "Bad upstream response"
    default_detail = "the vendor answered without a usable token"


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"
    title = "Upstream unavailable"
    default_detail = "the vendor is unavailable; retry later"

    def __init__(self, detail: str | None = None, *, retry_after_seconds: float) -> None:
        super().__init__(detail, headers={"Retry-After": retry_after_header(retry_after_seconds)})


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    title = "Upstream timeout"
    default_detail = "the vendor did not answer in time"


class InternalError(BrokerError):
    status = 500
    code = "internal_error"
    title = "Internal error"
    default_detail = "an internal error occurred; quote the request id when reporting it"
