"""What a vendor call can fail with.

Providers raise only these; the issuance layer decides about retries from the split
between *technical* failures (the call may work if tried again) and *logical* ones
(trying again gives the same answer), and the API layer maps them to api.md codes.

    ProviderError
    ├── TechnicalError              retryable
    │   ├── ProviderConnectError        could not connect / connection dropped before an answer
    │   ├── ProviderTimeout             no answer within the timeout
    │   ├── ProviderServerError         5xx                      (status)
    │   ├── ProviderRateLimited         429                      (retry_after_seconds)
    │   └── ProviderUnavailable         broker-side: circuit open, too many calls in flight
    └── LogicalError                not retryable
        ├── ProviderRejected            any other 4xx but 429: the body was refused (status, vendor_code)
        ├── ProviderAuthFailed          the vendor's credential error: the API key was refused
        │                               (Embeddable 401; Databrain AUTHENTICATION_ERROR, ...)
        └── ProviderBadResponse         2xx without a usable token

Messages are short and scrubbed: never an API key, a token, or a raw vendor body.
"""

from __future__ import annotations


class ProviderError(Exception):
    """A vendor token call failed."""

    retryable: bool = False

    def __init__(self, message: str, *, provider: str, region: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.region = region


class TechnicalError(ProviderError):
    retryable = True


class ProviderConnectError(TechnicalError):
    pass


class ProviderTimeout(TechnicalError):
    pass


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
    retryable = False


class ProviderRejected(LogicalError):
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


class ProviderAuthFailed(LogicalError):
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


class ProviderBadResponse(LogicalError):
    pass
