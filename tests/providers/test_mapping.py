"""ProviderError → api.md error codes."""

from __future__ import annotations

import pytest
from typing_extensions import TypedDict

from app.errors import (
    BrokerError,
    UpstreamAuthFailed,
    UpstreamBadResponse,
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
    ProviderRateLimited,
    ProviderRejected,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
    TechnicalError,
)
from app.providers.mapping import to_broker_error


class Where(TypedDict):
    provider: str
    region: str


WHERE: Where = {"provider": "databrain", "region": "eu"}


@pytest.mark.parametrize(
    ("error", "expected", "status", "code"),
    [
        (
            ProviderRejected(
                "HTTP 404 DATA_APP_ID_ERROR", **WHERE, status=404, vendor_code="DATA_APP_ID_ERROR"
            ),
            UpstreamRejected,
            502,
            "upstream_rejected",
        ),
        (
            ProviderAuthFailed("HTTP 403", **WHERE, status=403),
            UpstreamAuthFailed,
            502,
            "upstream_auth_failed",
        ),
        (
            ProviderBadResponse("no token", **WHERE),
            UpstreamBadResponse,
            502,
            "upstream_bad_response",
        ),
        (
            ProviderServerError("HTTP 502", **WHERE, status=502),
            UpstreamUnavailable,
            503,
            "upstream_unavailable",
        ),
        (
            ProviderConnectError("refused", **WHERE),
            UpstreamUnavailable,
            503,
            "upstream_unavailable",
        ),
        (
            ProviderRateLimited("HTTP 429", **WHERE),
            UpstreamUnavailable,
            503,
            "upstream_unavailable",
        ),
        (
            ProviderUnavailable("circuit open", **WHERE, retry_after_seconds=30),
            UpstreamUnavailable,
            503,
            "upstream_unavailable",
        ),
        (ProviderTimeout("slow", **WHERE), UpstreamTimeout, 504, "upstream_timeout"),
    ],
)
def test_each_provider_error_has_its_api_code(
    error: ProviderError, expected: type[BrokerError], status: int, code: str
) -> None:
    broker = to_broker_error(error)

    assert type(broker) is expected
    assert (broker.status, broker.code) == (status, code)
    assert broker.detail.startswith("databrain")


def test_rejected_carries_the_vendor_status_and_code() -> None:
    error = ProviderRejected(
        "HTTP 404 DATA_APP_ID_ERROR: no app", **WHERE, status=404, vendor_code="DATA_APP_ID_ERROR"
    )

    problem = to_broker_error(error).problem("req-1")

    assert problem["upstream_status"] == 404
    assert problem["upstream_code"] == "DATA_APP_ID_ERROR"
    assert "DATA_APP_ID_ERROR: no app" in problem["detail"]


@pytest.mark.parametrize(
    ("error", "retry_after"),
    [
        (ProviderServerError("HTTP 500", **WHERE, status=500), "5"),
        (ProviderConnectError("refused", **WHERE), "5"),
        (ProviderRateLimited("HTTP 429", **WHERE), "5"),
        (ProviderRateLimited("HTTP 429", **WHERE, retry_after_seconds=12.2), "13"),
        (ProviderRateLimited("HTTP 429", **WHERE, retry_after_seconds=0), "1"),
        (ProviderRateLimited("HTTP 429", **WHERE, retry_after_seconds=86_400), "300"),
        (ProviderUnavailable("circuit open", **WHERE, retry_after_seconds=30), "30"),
    ],
)
def test_unavailable_always_says_when_to_retry(error: ProviderError, retry_after: str) -> None:
    assert to_broker_error(error).headers == {"Retry-After": retry_after}


def test_an_unknown_subclass_keeps_the_retryable_split() -> None:
    class NewLogical(LogicalError):
        pass

    class NewTechnical(TechnicalError):
        pass

    assert isinstance(to_broker_error(NewLogical("x", **WHERE)), UpstreamBadResponse)
    assert isinstance(to_broker_error(NewTechnical("x", **WHERE)), UpstreamUnavailable)


def test_account_fingerprints_name_endpoint_and_key_without_revealing_them() -> None:
    import httpx

    from app.providers.databrain import DatabrainConfig, DatabrainProvider

    def provider(key: str, url: str = "https://api.usedatabrain.com") -> DatabrainProvider:
        config = DatabrainConfig.model_validate(
            {"type": "databrain", "api_key": key, "base_url": url}
        )
        return DatabrainProvider(
            "databrain",
            config,
            http_client=httpx.AsyncClient(
                transport=httpx.MockTransport(lambda _: httpx.Response(500))
            ),
        )

    first = provider("key-one-secret").account_fingerprint(None)
    assert first == provider("key-one-secret").account_fingerprint(None)
    assert first != provider("key-two-secret").account_fingerprint(None)
    assert first != provider("key-one-secret", "https://bi.example.com").account_fingerprint(None)
    assert "key-one-secret" not in first
