"""EmbeddableProvider against the sandbox over real HTTP."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import pytest
from jose import jwt
from pydantic import ValidationError

from app.errors import UpstreamAuthFailed, UpstreamRejected
from app.providers.base import Element, EmbedElementConfig
from app.providers.embeddable import EmbeddableConfig, EmbeddableProvider
from app.providers.errors import ProviderAuthFailed, ProviderRejected
from app.providers.mapping import to_broker_error
from tests.sandbox.harness import EU_KEY, TOKEN_SECRET, US_KEY, Sandbox

pytestmark = pytest.mark.anyio

FULL_BODY: dict[str, Any] = {
    "embeddableId": "c2b1a0de-0000-4000-8000-000000000001",
    "savedVersion": "v3",
    "securityContext": {"userId": "alice", "tenantId": "acme", "regions": ["eu-west", "eu-n"]},
    "user": "alice",
    "environment": "acme-prod",
    "roles": ["analyst", "viewer"],
    "customCanvasState": "state-1",
    "customCanvasReadOnly": True,
    "filters": [
        {"member": "orders.country", "operator": "equals", "values": ["FR", "DE"]},
        {"member": "orders.shipped_at", "operator": "set"},
        {"member": "orders.cancelled_at", "operator": "notSet"},
    ],
    "dataProvider": "warehouse",
}


def provider(
    sandbox: Sandbox, client: httpx.AsyncClient, *, keys: dict[str, str] | None = None
) -> EmbeddableProvider:
    keys = keys or {"us": US_KEY, "eu": EU_KEY}
    config = EmbeddableConfig.model_validate(
        {
            "type": "embeddable",
            "timeout_seconds": 3,
            "regions": {
                region: {"api_key": key, "base_url": sandbox.embeddable_url(region)}
                for region, key in keys.items()
            },
        }
    )
    return EmbeddableProvider("embeddable", config, http_client=client)


async def test_every_documented_field_reaches_the_vendor_with_its_type(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    issued = await provider(sandbox, client).issue(FULL_BODY, 600, "eu")

    received = sandbox.last_request("embeddable")
    assert received["body"] == {**FULL_BODY, "expiryInSeconds": 600}
    assert received["status"] == 200
    assert received["authorized"] is True
    assert received["token"] == issued.token
    assert received["headers"]["authorization"] == "Bearer ***"
    assert received["headers"]["content-type"] == "application/json"
    assert received["headers"]["accept"] == "application/json"
    assert issued.vendor_status == 200


async def test_the_broker_always_sends_version_context_and_expiry(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    body = {"embeddableId": "dash-1", "user": "bob", "environment": None}

    await provider(sandbox, client).issue(body, 900, "us")

    assert sandbox.last_request("embeddable")["body"] == {
        "embeddableId": "dash-1",
        "user": "bob",
        "savedVersion": "production",
        "securityContext": {},
        "expiryInSeconds": 900,
    }


async def test_the_old_dashboard_state_name_is_sent_as_custom_canvas_state(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    body = {"embeddableId": "dash-1", "user": "bob", "dashboardState": "s"}
    EmbeddableProvider.validate_request(body)

    issued = await provider(sandbox, client).issue(body, 60, "us")

    received = sandbox.last_request("embeddable")
    assert received["body"] == {
        "embeddableId": "dash-1",
        "user": "bob",
        "customCanvasState": "s",
        "savedVersion": "production",
        "securityContext": {},
        "expiryInSeconds": 60,
    }
    assert received["token"] == issued.token


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        ({"member": "m", "operator": "set", "values": []}, "takes no values"),
        ({"member": "m", "operator": "notSet", "values": ["x"]}, "takes no values"),
        ({"member": "m", "operator": "set", "values": None}, "takes no values"),
        ({"member": "m", "operator": "equals"}, "needs values"),
        ({"member": "m", "operator": "equals", "values": None}, "needs values"),
        ({"member": "m", "operator": "", "values": ["x"]}, "operator"),
        ({"operator": "set"}, "member"),
    ],
)
def test_filter_values_must_fit_the_operator_at_load(written: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        EmbeddableProvider.validate_request(
            {"embeddableId": "d", "user": "u", "filters": [written]}
        )
    assert "filters.0" in str(caught.value)


async def test_a_presence_filter_reaches_the_vendor_without_values(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    filters = [
        {"member": "customers.email", "operator": "set"},
        {"member": "customers.country", "operator": "equals", "values": ["FR"]},
    ]
    body = {"embeddableId": "d", "user": "u", "filters": filters}
    EmbeddableProvider.validate_request(body)

    await provider(sandbox, client).issue(body, 60, "eu")

    received = sandbox.last_request("embeddable")
    assert received["status"] == 200
    assert received["body"]["filters"] == filters


async def test_a_forbidden_answer_is_about_the_request_not_the_key(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    sandbox.fault(vendor="embeddable", status=403, message="embeddable not shared", count=1)

    with pytest.raises(ProviderRejected) as caught:
        await provider(sandbox, client).issue({"embeddableId": "d", "user": "u"}, 60, "eu")

    broker = to_broker_error(caught.value)
    assert isinstance(broker, UpstreamRejected)
    assert broker.extra == {"upstream_status": 403, "upstream_code": None}
    assert "embeddable not shared" in broker.detail


def test_unknown_fields_fail_at_load_unless_the_provider_allows_them() -> None:
    body = {"embeddableId": "d", "user": "u", "themeOverride": {"dark": True}}

    with pytest.raises(ValueError, match=r"themeOverride: unknown field.*allow_unknown_fields"):
        EmbeddableProvider.validate_request(body)
    assert EmbeddableProvider.validate_request(body, allow_unknown_fields=True) == (
        "themeOverride",
    )
    # The model's own rules still hold for the fields it knows.
    with pytest.raises(ValueError, match="takes no values"):
        EmbeddableProvider.validate_request(
            {**body, "filters": [{"member": "m", "operator": "set", "values": ["x"]}]},
            allow_unknown_fields=True,
        )


def test_the_allow_unknown_fields_switch_is_off_by_default() -> None:
    config = EmbeddableConfig.model_validate(
        {"type": "embeddable", "regions": {"eu": {"api_key": "k"}}}
    )
    assert config.allow_unknown_fields is False


async def test_the_token_is_the_vendor_jwt_and_expires_no_later_than_asked(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    before = time.time()
    issued = await provider(sandbox, client).issue({"embeddableId": "d", "user": "u"}, 300, "eu")

    claims = jwt.decode(issued.token, TOKEN_SECRET, algorithms=["HS256"])
    assert claims["exp"] == claims["iat"] + 300
    assert issued.expires_at <= claims["exp"]
    assert before + 298 <= issued.expires_at <= time.time() + 300


@pytest.mark.parametrize("region", ["us", "eu"])
async def test_each_region_is_called_at_its_url_with_its_key(
    sandbox: Sandbox, client: httpx.AsyncClient, region: str
) -> None:
    await provider(sandbox, client).issue({"embeddableId": "d", "user": "u"}, 60, region)

    received = sandbox.requests(vendor="embeddable")
    assert [(r["region"], r["path"], r["authorized"]) for r in received] == [
        (region, f"/embeddable/{region}/api/v1/security-token", True)
    ]


async def test_a_key_the_region_refuses_is_upstream_auth_failed(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    swapped = provider(sandbox, client, keys={"eu": US_KEY})

    with pytest.raises(ProviderAuthFailed) as caught:
        await swapped.issue({"embeddableId": "d", "user": "u"}, 60, "eu")

    assert caught.value.status == 401
    assert (caught.value.provider, caught.value.region) == ("embeddable", "eu")
    broker = to_broker_error(caught.value)
    assert isinstance(broker, UpstreamAuthFailed)
    assert (broker.status, broker.code) == (502, "upstream_auth_failed")
    assert US_KEY not in repr(caught.value) + broker.detail


async def test_a_body_the_vendor_rejects_is_upstream_rejected_with_its_message(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    body = {"embeddableId": "d", "user": "u", "savedVersion": "latest"}

    with pytest.raises(ProviderRejected) as caught:
        await provider(sandbox, client).issue(body, 60, "eu")

    assert (caught.value.status, caught.value.vendor_code) == (400, None)
    assert "savedVersion" in caught.value.message
    broker = to_broker_error(caught.value)
    assert isinstance(broker, UpstreamRejected)
    assert broker.status == 502
    assert broker.extra == {"upstream_status": 400, "upstream_code": None}
    assert "savedVersion" in broker.detail


@pytest.mark.parametrize("region", [None, "ap"])
async def test_a_missing_or_unknown_region_is_a_config_bug(
    sandbox: Sandbox, client: httpx.AsyncClient, region: str | None
) -> None:
    with pytest.raises(ValueError, match="region"):
        await provider(sandbox, client).issue({"embeddableId": "d", "user": "u"}, 60, region)
    with pytest.raises(ValueError, match="region"):
        provider(sandbox, client).element(None, region)
    assert sandbox.requests() == []


@pytest.mark.parametrize("ttl", [0, -5])
async def test_a_ttl_that_is_not_positive_is_refused(
    sandbox: Sandbox, client: httpx.AsyncClient, ttl: int
) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        await provider(sandbox, client).issue({"embeddableId": "d", "user": "u"}, ttl, "eu")


async def test_the_element_is_em_beddable_with_the_region_base_url(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    assert provider(sandbox, client).element(None, "eu") == Element(
        "em-beddable",
        {"base-url": f"{sandbox.embeddable_url('eu')}/"},
        "https://embed.embeddable.com/js/v1/?region=EU",
    )


def test_the_loader_script_follows_the_region_and_is_configurable() -> None:
    config = EmbeddableConfig.model_validate(
        {
            "type": "embeddable",
            "regions": {
                "us": {"api_key": "k1"},
                "eu": {"api_key": "k2", "script_url": "https://cdn.example.com/em.js"},
                "ap": {"api_key": "k3", "base_url": "https://api.ap.example.com"},
                "dev": {"api_key": "k4", "base_url": "http://127.0.0.1:9", "script_url": None},
            },
        }
    )
    built = EmbeddableProvider(
        "embeddable", config, http_client=httpx.AsyncClient()
    )  # no call made

    assert built.element(None, "us").script == "https://embed.embeddable.com/js/v1/?region=US"
    assert built.element(None, "eu").script == "https://cdn.example.com/em.js"
    assert built.element(None, "ap").script is None  # no known loader for a custom region
    assert built.element(None, "dev").script is None  # null: the app bundles the loader
    with pytest.raises(ValidationError, match="script over plain http"):
        EmbeddableConfig.model_validate(
            {
                "type": "embeddable",
                "regions": {"eu": {"api_key": "k", "script_url": "http://cdn.example.com/em.js"}},
            }
        )
    with pytest.raises(ValidationError, match="must not carry a user name or password"):
        EmbeddableConfig.model_validate(
            {
                "type": "embeddable",
                "regions": {
                    "eu": {"api_key": "k", "script_url": "https://u:p@cdn.example.com/e.js"}
                },
            }
        )


async def test_default_base_urls_follow_the_region(client: httpx.AsyncClient) -> None:
    config = EmbeddableConfig.model_validate(
        {"type": "embeddable", "regions": {"us": {"api_key": "k1"}, "eu": {"api_key": "k2"}}}
    )
    built = EmbeddableProvider("embeddable", config, http_client=client)
    assert built.element(EmbedElementConfig(), "us").attributes == {
        "base-url": "https://api.us.embeddable.com/"
    }
    assert built.element(None, "eu").attributes == {"base-url": "https://api.eu.embeddable.com/"}


def test_a_region_without_a_default_url_needs_one_at_load() -> None:
    with pytest.raises(ValidationError, match=r"regions\.ap\.base_url"):
        EmbeddableConfig.model_validate({"type": "embeddable", "regions": {"ap": {"api_key": "k"}}})
    EmbeddableConfig.model_validate(
        {"type": "embeddable", "regions": {"ap": {"api_key": "k", "base_url": "https://x.test"}}}
    )


def test_both_canvas_state_names_at_once_fail_at_load() -> None:
    with pytest.raises(ValueError, match="customCanvasState and dashboardState"):
        EmbeddableProvider.validate_request(
            {"embeddableId": "d", "user": "u", "customCanvasState": "a", "dashboardState": "b"}
        )


async def test_the_api_key_is_not_in_the_repr(client: httpx.AsyncClient) -> None:
    config = EmbeddableConfig.model_validate(
        {"type": "embeddable", "regions": {"eu": {"api_key": EU_KEY}}}
    )
    built = EmbeddableProvider("embeddable", config, http_client=client)
    assert EU_KEY not in repr(built) + repr(config) + str(config)


async def test_no_key_or_token_reaches_the_logs(
    sandbox: Sandbox, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        issued = await provider(sandbox, client).issue({"embeddableId": "d", "user": "u"}, 60, "eu")
        with pytest.raises(ProviderAuthFailed):
            await provider(sandbox, client, keys={"eu": US_KEY}).issue(
                {"embeddableId": "d", "user": "u"}, 60, "eu"
            )

    assert caplog.records  # httpx and httpcore do log at this level
    for secret in (EU_KEY, US_KEY, issued.token):
        assert secret not in caplog.text
