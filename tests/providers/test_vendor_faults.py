"""Every sandbox fault kind, for both vendors, becomes the right ProviderError."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from app.errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from app.providers.base import AnyProvider
from app.providers.databrain import DatabrainConfig, DatabrainProvider
from app.providers.embeddable import EmbeddableConfig, EmbeddableProvider
from app.providers.errors import (
    ProviderBadResponse,
    ProviderConnectError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
)
from app.providers.mapping import to_broker_error
from tests.sandbox.harness import DATABRAIN_KEY, EU_KEY, Sandbox
from tests.support.servers import LOOPBACK, free_port

pytestmark = pytest.mark.anyio

BODIES: Mapping[str, dict[str, Any]] = {
    "embeddable": {"embeddableId": "d", "user": "u"},
    "databrain": {"clientId": "acme", "dataAppName": "opsapp"},
}


def build(
    vendor: str, client: httpx.AsyncClient, base_url: str, *, timeout: float = 3
) -> AnyProvider:
    if vendor == "embeddable":
        config = EmbeddableConfig.model_validate(
            {
                "type": "embeddable",
                "timeout_seconds": timeout,
                "regions": {"eu": {"api_key": EU_KEY, "base_url": f"{base_url}/embeddable/eu"}},
            }
        )
        return EmbeddableProvider("embeddable", config, http_client=client)
    databrain = DatabrainConfig.model_validate(
        {
            "type": "databrain",
            "timeout_seconds": timeout,
            "api_key": DATABRAIN_KEY,
            "base_url": f"{base_url}/databrain",
        }
    )
    return DatabrainProvider("databrain", databrain, http_client=client)


async def issue(provider: AnyProvider) -> None:
    await provider.issue(BODIES[provider.type_name], 60, "eu")


vendors = pytest.mark.parametrize("vendor", ["embeddable", "databrain"])


@vendors
@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_unavailable_and_only_gateway_errors_retryable(
    sandbox: Sandbox, client: httpx.AsyncClient, vendor: str, status: int
) -> None:
    sandbox.fault(vendor=vendor, status=status)

    with pytest.raises(ProviderServerError) as caught:
        await issue(build(vendor, client, sandbox.url))

    assert caught.value.status == status
    assert caught.value.retryable is (status in (502, 503, 504))  # the one retry rule
    assert (caught.value.provider, caught.value.region) == (vendor, "eu")
    broker = to_broker_error(caught.value)
    assert isinstance(broker, UpstreamUnavailable)
    assert (broker.status, broker.headers["Retry-After"]) == (503, "5")


@vendors
async def test_rate_limiting_passes_the_vendor_retry_after_on(
    sandbox: Sandbox, client: httpx.AsyncClient, vendor: str
) -> None:
    sandbox.fault(vendor=vendor, status=429, retry_after=17)

    with pytest.raises(ProviderRateLimited) as caught:
        await issue(build(vendor, client, sandbox.url))

    assert caught.value.retry_after_seconds == 17
    broker = to_broker_error(caught.value)
    assert isinstance(broker, UpstreamUnavailable)
    assert broker.headers["Retry-After"] == "17"


@vendors
async def test_rate_limiting_without_retry_after_uses_the_default(
    sandbox: Sandbox, client: httpx.AsyncClient, vendor: str
) -> None:
    sandbox.fault(vendor=vendor, status=429)

    with pytest.raises(ProviderRateLimited) as caught:
        await issue(build(vendor, client, sandbox.url))

    assert caught.value.retry_after_seconds is None
    assert to_broker_error(caught.value).headers["Retry-After"] == "5"


@vendors
async def test_a_dropped_connection_is_a_connect_error(
    sandbox: Sandbox, client: httpx.AsyncClient, vendor: str
) -> None:
    sandbox.fault(vendor=vendor, drop_connection=True)

    with pytest.raises(ProviderConnectError) as caught:
        await issue(build(vendor, client, sandbox.url))

    assert caught.value.retryable
    assert isinstance(to_broker_error(caught.value), UpstreamUnavailable)
    assert sandbox.last_request(vendor)["fault"] == "drop_connection"


@vendors
async def test_a_malformed_200_is_a_bad_response(
    sandbox: Sandbox, client: httpx.AsyncClient, vendor: str
) -> None:
    sandbox.fault(vendor=vendor, malformed_200=True)

    with pytest.raises(ProviderBadResponse) as caught:
        await issue(build(vendor, client, sandbox.url))

    assert not caught.value.retryable
    broker = to_broker_error(caught.value)
    assert isinstance(broker, UpstreamBadResponse)
    assert (broker.status, broker.code) == (502, "upstream_bad_response")


@vendors
async def test_latency_beyond_the_timeout_is_a_timeout(
    sandbox: Sandbox, client: httpx.AsyncClient, vendor: str
) -> None:
    sandbox.fault(vendor=vendor, latency_ms=1000)

    with pytest.raises(ProviderTimeout) as caught:
        await issue(build(vendor, client, sandbox.url, timeout=0.2))

    assert caught.value.retryable
    broker = to_broker_error(caught.value)
    assert isinstance(broker, UpstreamTimeout)
    assert (broker.status, broker.code) == (504, "upstream_timeout")


@vendors
async def test_latency_within_the_timeout_still_issues(
    sandbox: Sandbox, client: httpx.AsyncClient, vendor: str
) -> None:
    sandbox.fault(vendor=vendor, latency_ms=50)

    await issue(build(vendor, client, sandbox.url))

    assert sandbox.last_request(vendor)["fault"] == "latency"


@vendors
async def test_a_counted_fault_fails_only_that_many_calls(
    sandbox: Sandbox, client: httpx.AsyncClient, vendor: str
) -> None:
    sandbox.fault(vendor=vendor, status=503, count=2)
    provider = build(vendor, client, sandbox.url)

    for _ in range(2):
        with pytest.raises(ProviderServerError):
            await issue(provider)
    await issue(provider)

    assert [r["status"] for r in sandbox.requests(vendor=vendor)] == [503, 503, 200]


@vendors
async def test_nothing_listening_is_a_connect_error(client: httpx.AsyncClient, vendor: str) -> None:
    with pytest.raises(ProviderConnectError) as caught:
        await issue(build(vendor, client, f"http://{LOOPBACK}:{free_port()}"))

    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
