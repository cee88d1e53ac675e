"""What a vendor call can fail with.

Providers raise only these; :mod:`app.resilience` decides about retries and the circuit
breaker from them, and the API layer maps them to api.md codes. *Technical* failures
say something about the vendor's (or the network's) health; *logical* ones are the
vendor's considered answer. Whether a failure is retried is one rule, the
``retryable`` attribute, and only the marked ones are (never a 4xx, never a 429, never
a 500 that one request body provokes)::

    ProviderError                                              retryable
    ├── TechnicalError
    │   ├── ProviderConnectError        no connection / dropped before an answer   yes
    │   │   └── ProviderProxyError          the outbound proxy failed                  yes
    │   ├── ProviderTimeout             no answer within the timeout               yes
    │   ├── ProviderServerError         5xx (status)                 502, 503, 504 only
    │   ├── ProviderRateLimited         429 (retry_after_seconds)                  no
    │   └── ProviderUnavailable         broker-side: circuit open, calls in flight  no
    └── LogicalError                                                           no
        ├── VendorRefusal               a 4xx answer (status, vendor_code)
        │   ├── ProviderRejected            any other 4xx but 429: the body was refused
        │   └── ProviderAuthFailed          the vendor's credential error: the API key was refused
        │                                   (Embeddable 401; Databrain AUTHENTICATION_ERROR, ...)
        └── ProviderBadResponse         2xx without a usable token

Messages are short and scrubbed: never an API key, a token, or a raw vendor body.
"""

from __future__ import annotations

RETRYABLE_STATUSES = frozenset({502, 503, 504})
"""Gateway answers: the vendor (or its load balancer) is briefly away. A plain 500 is
not retried: it is as often an answer to this one body as an outage."""


class ProviderError(Exception):
    """A vendor token call failed."""

    retryable: bool = False
    """May the same call succeed if made again at once? (the one retry rule)"""

    def __init__(self, message: str, *, provider: str, region: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.region = region


class TechnicalError(ProviderError):
    """About the vendor's or the network's health (the circuit breaker counts these)."""


class ProviderConnectError(TechnicalError):
    retryable = True


class ProviderProxyError(ProviderConnectError):
    """The outbound proxy refused or failed; the vendor was never reached. The message
    names the proxy (scheme, host, port; never its credentials)."""


class ProviderTimeout(TechnicalError):
    retryable = True


class ProviderServerError(TechnicalError):
    def __init__(
        self,
        message: str,
        *,
        provider: str,
        region: str | None = None,
        status: int,
        vendor_code: str | None = None,
    ) -> None:
        super().__init__(message, provider=provider, region=region)
        self.status = status
        self.vendor_code = vendor_code
        self.retryable = status in RETRYABLE_STATUSES


class ProviderRateLimited(TechnicalError):
    """The vendor answered 429. Never retried; the client is told when to come back."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        region: str | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, region=region)
        self.retry_after_seconds = retry_after_seconds


class ProviderUnavailable(TechnicalError):
    """Refused by the broker itself (circuit open, concurrency bound) without calling the vendor."""

    def __init__(
        self, message: str, *, provider: str, region: str | None = None, retry_after_seconds: float
    ) -> None:
        super().__init__(message, provider=provider, region=region)
        self.retry_after_seconds = retry_after_seconds


class LogicalError(ProviderError):
    """The vendor's considered answer: the same call gets the same answer."""


class VendorRefusal(LogicalError):
    """The vendor answered 4xx: its status and, where it sends one, its error code."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        region: str | None = None,
        status: int,
        vendor_code: str | None = None,
    ) -> None:
        super().__init__(message, provider=provider, region=region)
        self.status = status
        self.vendor_code = vendor_code


class ProviderRejected(VendorRefusal):
    """The request was refused (api.md ``upstream_rejected``)."""


class ProviderAuthFailed(VendorRefusal):
    """The broker's credential was refused (api.md ``upstream_auth_failed``)."""


class ProviderBadResponse(LogicalError):
    pass
