"""Vendor failures (:mod:`app.providers.errors`) → the api.md error codes.

Called by the issuance layer once retries are exhausted. ``detail`` carries only what
the provider put in the exception's message, which is already short and scrubbed.
"""

from __future__ import annotations

from app.errors import (
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.providers.errors import (
    LogicalError,
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderConnectError,
    ProviderError,
    ProviderProxyError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
)

DEFAULT_RETRY_AFTER_SECONDS = 5.0
"""When the vendor is down or rate-limits us without saying for how long."""
MAX_RETRY_AFTER_SECONDS = 300.0
"""A vendor's Retry-After is passed on, but a client is never told to wait longer."""


def to_broker_error(exc: ProviderError) -> UpstreamError:
    """The client-facing error for a vendor failure (after the issuance layer's retries)."""
    vendor = exc.provider
    if isinstance(exc, ProviderRejected):
        return UpstreamRejected(
            f"{vendor} rejected the token request ({exc.message})",
            upstream_status=exc.status,
            upstream_code=exc.vendor_code,
        )
    if isinstance(exc, ProviderAuthFailed):
        # Only the vendor's credential errors get here (providers decide): the operator
        # is told to look at the key, and by its code whether it is wrong or expired.
        answer = f"HTTP {exc.status}" + (f" {exc.vendor_code}" if exc.vendor_code else "")
        return UpstreamAuthFailed(f"{vendor} rejected the broker's API key ({answer})")
    if isinstance(exc, ProviderBadResponse):
        return UpstreamBadResponse(f"{vendor}: {exc.message}")
    if isinstance(exc, ProviderTimeout):
        return UpstreamTimeout(f"{vendor} did not answer in time")
    if isinstance(exc, ProviderRateLimited):
        return UpstreamUnavailable(
            f"{vendor} is rate-limiting the broker",
            retry_after_seconds=_bounded(exc.retry_after_seconds),
        )
    if isinstance(exc, ProviderUnavailable):
        return UpstreamUnavailable(
            f"{vendor} is unavailable ({exc.message})",
            retry_after_seconds=_bounded(exc.retry_after_seconds),
        )
    if isinstance(exc, ProviderServerError):
        return UpstreamUnavailable(
            f"{vendor} failed ({exc.message})",
            retry_after_seconds=DEFAULT_RETRY_AFTER_SECONDS,
        )
    if isinstance(exc, ProviderProxyError):
        return UpstreamUnavailable(
            f"{exc.message}; {vendor} was not reached",
            retry_after_seconds=DEFAULT_RETRY_AFTER_SECONDS,
        )
    if isinstance(exc, ProviderConnectError):
        return UpstreamUnavailable(
            f"{vendor} could not be reached", retry_after_seconds=DEFAULT_RETRY_AFTER_SECONDS
        )
    # A ProviderError subclass added later: keep the retryable/permanent split.
    if isinstance(exc, LogicalError):
        return UpstreamBadResponse(f"{vendor}: {exc.message}")
    return UpstreamUnavailable(
        f"{vendor} is unavailable", retry_after_seconds=DEFAULT_RETRY_AFTER_SECONDS
    )


def _bounded(retry_after_seconds: float | None) -> float:
    if retry_after_seconds is None:
        return DEFAULT_RETRY_AFTER_SECONDS
    return min(max(retry_after_seconds, 1.0), MAX_RETRY_AFTER_SECONDS)
