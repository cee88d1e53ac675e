"""DatabrainProvider against the sandbox over real HTTP."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from app.errors import BrokerError, UpstreamAuthFailed, UpstreamRejected, UpstreamUnavailable
from app.providers.base import Element, EmbedElementConfig
from app.providers.databrain import DatabrainConfig, DatabrainProvider
from app.providers.errors import (
    ProviderAuthFailed,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderServerError,
)
from app.providers.mapping import to_broker_error
from tests.sandbox.harness import DATABRAIN_KEY, Sandbox

pytestmark = pytest.mark.anyio

PERMISSIONS = {
    "isEnableArchiveMetrics": False,
    "isEnableManageMetrics": False,
    "isEnableCreateDashboardView": True,
    "isEnableMetricUpdation": False,
    "isEnableCustomizeLayout": True,
    "isEnableUnderlyingData": True,
    "isEnableDownloadMetrics": False,
    "isShowSideBar": False,
    "isShowDashboardName": True,
    "isDisableMetricCreation": True,
}
FULL_BODY: dict[str, Any] = {
    "clientId": "acme",
    "dataAppName": "Demo Sales Data App",
    "datasourceName": "acme-warehouse",
    "params": {
        "appFilters": [
            {"metricId": "m-1", "values": {"country": "FR"}},
            {"metricId": "m-2", "values": ["FR", "DE"]},
        ],
        "dashboardAppFilters": [
            {
                "dashboardId": "ops-dash",
                "isShowOnUrl": False,
                "values": {
                    "active": True,
                    "threshold": 2.5,
                    "count": 3,
                    "name": "x",
                    "regions": ["eu-west"],
                    "period": {"startDate": "2026-01-01", "endDate": "2026-02-01"},
                    "amount": {"min": 0, "max": 100.5},
                    "custom": {"sql": "region = 'eu'", "columnName": "region"},
                },
            }
        ],
        "hideDashboardFilters": ["region"],
        "userIdentifier": "alice",
        "timezone": "Europe/Paris",
        "allowedEmbeds": ["ops-dash", "m-1"],
        "rlsSettings": [{"metricId": "m-3", "values": {"tenant": "acme"}}],
    },
    "permissions": PERMISSIONS,
}
MINIMAL = {"clientId": "acme", "dataAppName": "opsapp"}


def provider(
    sandbox: Sandbox, client: httpx.AsyncClient, *, api_key: str = DATABRAIN_KEY
) -> DatabrainProvider:
    config = DatabrainConfig.model_validate(
        {
            "type": "databrain",
            "api_key": api_key,
            "base_url": sandbox.databrain_url,
            "timeout_seconds": 3,
        }
    )
    return DatabrainProvider("databrain", config, http_client=client)


async def test_every_documented_field_reaches_the_vendor_with_its_type(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    before = time.time()
    issued = await provider(sandbox, client).issue(FULL_BODY, 600, "eu")

    received = sandbox.last_request("databrain")
    assert received["body"] == {**FULL_BODY, "expiryTime": 600_000}
    assert received["path"] == "/databrain/api/v2/guest-token/create"
    assert received["authorized"] is True
    assert received["headers"]["authorization"] == "Bearer ***"
    assert received["headers"]["content-type"] == "application/json"
    assert received["token"] == issued.token
    assert uuid.UUID(issued.token).version == 4
    assert before + 600 <= issued.expires_at <= time.time() + 600


async def test_the_expiry_is_always_set_in_milliseconds(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    await provider(sandbox, client).issue({**MINIMAL, "datasourceName": None}, 45, None)

    assert sandbox.last_request("databrain")["body"] == {**MINIMAL, "expiryTime": 45_000}


async def test_a_wrong_key_is_upstream_auth_failed(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    with pytest.raises(ProviderAuthFailed) as caught:
        await provider(sandbox, client, api_key="not-the-key").issue(MINIMAL, 60, "eu")

    assert (caught.value.status, caught.value.provider, caught.value.region) == (
        401,
        "databrain",
        "eu",
    )
    assert isinstance(to_broker_error(caught.value), UpstreamAuthFailed)


async def test_an_unknown_data_app_is_upstream_rejected_with_the_vendor_code(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await provider(sandbox, client).issue({**MINIMAL, "dataAppName": "nosuchapp"}, 60, None)

    broker = to_broker_error(caught.value)
    assert isinstance(broker, UpstreamRejected)
    assert broker.extra == {"upstream_status": 404, "upstream_code": "DATA_APP_ID_ERROR"}
    assert "DATA_APP_ID_ERROR" in broker.detail


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({**MINIMAL, "clientId": ""}, "CLIENT_ID_ERROR"),
        ({**MINIMAL, "dataAppName": "ops.app"}, "INVALID_REQUEST_BODY"),
        # The live API answers a bad dashboardAppFilters entry with the appFilters code.
        (
            {**MINIMAL, "params": {"dashboardAppFilters": [{"values": {"a": "b"}}]}},
            "APP_FILTER_PARAM_ERROR",
        ),
        (
            {**MINIMAL, "params": {"appFilters": [{"metricId": "m", "values": [1]}]}},
            "APP_FILTER_PARAM_ERROR",
        ),
        (
            {**MINIMAL, "params": {"rlsSettings": [{"metricId": "m"}]}},
            "RLS_SETTINGS_PARAM_ERROR",
        ),
        ({**MINIMAL, "params": {"allowedEmbeds": [""]}}, "INVALID_REQUEST_BODY"),
    ],
)
async def test_bodies_the_vendor_rejects_carry_its_code(
    sandbox: Sandbox, client: httpx.AsyncClient, body: dict[str, Any], code: str
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await provider(sandbox, client).issue(body, 60, None)

    assert (caught.value.status, caught.value.vendor_code) == (400, code)
    assert to_broker_error(caught.value).extra == {"upstream_status": 400, "upstream_code": code}


# Every documented error code (and one the docs do not know) → the exception and api.md code.
DOCUMENTED_ERRORS = [
    (401, "AUTHENTICATION_ERROR", ProviderAuthFailed, "upstream_auth_failed"),
    (401, "AUTHENTICATION_ERR", ProviderAuthFailed, "upstream_auth_failed"),
    (401, "EXPIRED_TOKEN", ProviderAuthFailed, "upstream_auth_failed"),
    # About the request's permissions, not the key: operators must not rotate a good key.
    (403, "INVALID_PERMISSIONS", ProviderRejected, "upstream_rejected"),
    (401, "SOMETHING_NEW", ProviderAuthFailed, "upstream_auth_failed"),
    (403, "AUTHENTICATION_ERROR", ProviderAuthFailed, "upstream_auth_failed"),
    (400, "INVALID_REQUEST_BODY", ProviderRejected, "upstream_rejected"),
    (400, "CLIENT_ID_ERROR", ProviderRejected, "upstream_rejected"),
    (400, "DASHBOARD_PARAM_ERROR", ProviderRejected, "upstream_rejected"),
    (400, "APP_FILTER_PARAM_ERROR", ProviderRejected, "upstream_rejected"),
    (400, "RLS_SETTINGS_PARAM_ERROR", ProviderRejected, "upstream_rejected"),
    (404, "DATA_APP_ID_ERROR", ProviderRejected, "upstream_rejected"),
    (404, "WORKSPACE_ID_ERROR", ProviderRejected, "upstream_rejected"),
    (422, "SOMETHING_NEW", ProviderRejected, "upstream_rejected"),
    (429, "RATE_LIMIT_EXCEEDED", ProviderRateLimited, "upstream_unavailable"),
    (500, "INTERNAL_SERVER_ERROR", ProviderServerError, "upstream_unavailable"),
]


@pytest.mark.parametrize(("status", "code", "raised", "broker_code"), DOCUMENTED_ERRORS)
async def test_every_vendor_error_code_maps_to_its_broker_code(
    sandbox: Sandbox,
    client: httpx.AsyncClient,
    status: int,
    code: str,
    raised: type[ProviderError],
    broker_code: str,
) -> None:
    sandbox.fault(vendor="databrain", status=status, vendor_code=code, message="no")

    with pytest.raises(raised) as caught:
        await provider(sandbox, client).issue(MINIMAL, 60, None)

    broker: BrokerError = to_broker_error(caught.value)
    assert broker.code == broker_code
    if isinstance(caught.value, ProviderRejected):
        assert broker.extra == {"upstream_status": status, "upstream_code": code}
    if isinstance(caught.value, ProviderAuthFailed):
        assert caught.value.status == status
        assert f"HTTP {status} {code}" in broker.detail
    if isinstance(caught.value, ProviderServerError):
        assert caught.value.vendor_code == code
    if isinstance(broker, UpstreamUnavailable):
        assert broker.headers["Retry-After"] == "5"


def test_the_element_is_a_dashboard_or_a_metric() -> None:
    dashboard = EmbedElementConfig(dashboard_id="ops-dash")
    metric = EmbedElementConfig(metric_id="m-7")
    config = DatabrainConfig.model_validate({"type": "databrain", "api_key": DATABRAIN_KEY})
    built = DatabrainProvider("databrain", config, http_client=httpx.AsyncClient())  # no call made

    assert built.element(dashboard, "eu") == Element("dbn-dashboard", {"dashboard-id": "ops-dash"})
    assert built.element(metric, None) == Element("dbn-metric", {"metric-id": "m-7"})
    assert built.element(metric, None).script is None
    with pytest.raises(ValueError, match=r"dashboard_id or element\.metric_id"):
        built.element(None, None)
    assert DATABRAIN_KEY not in repr(built) + repr(config)


def test_a_script_url_is_given_to_the_front_end_with_the_element() -> None:
    script = "https://cdn.example.com/databrain/web-components.js"
    config = DatabrainConfig.model_validate(
        {"type": "databrain", "api_key": DATABRAIN_KEY, "script_url": script}
    )
    built = DatabrainProvider("databrain", config, http_client=httpx.AsyncClient())  # no call made

    assert built.element(EmbedElementConfig(metric_id="m-7"), None) == Element(
        "dbn-metric", {"metric-id": "m-7"}, script
    )
    with pytest.raises(ValidationError, match="script over plain http"):
        DatabrainConfig.model_validate(
            {"type": "databrain", "api_key": "k", "script_url": "http://cdn.example.com/x.js"}
        )


@pytest.mark.parametrize(
    "name", ["opsapp", "sales-dashboard", "Demo Sales Data App", "my_app", "Ventes été 2026", "a.b"]
)
def test_any_visible_data_app_name_is_accepted_at_load(name: str) -> None:
    assert DatabrainProvider.validate_request({**MINIMAL, "dataAppName": name}) == ()


@pytest.mark.parametrize("name", ["", "   ", "ops\napp", "ops\tapp", "ops\x7fapp", "ops\x85app"])
def test_an_empty_name_or_one_with_control_characters_fails_at_load(name: str) -> None:
    with pytest.raises(ValueError, match="dataAppName"):
        DatabrainProvider.validate_request({**MINIMAL, "dataAppName": name})


async def test_a_hyphenated_data_app_name_gets_a_token(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    body = {**MINIMAL, "dataAppName": "sales-dashboard"}

    issued = await provider(sandbox, client).issue(body, 60, None)

    received = sandbox.last_request("databrain")
    assert received["body"] == {**body, "expiryTime": 60_000}
    assert received["token"] == issued.token


@pytest.mark.parametrize(
    "params",
    [
        {"allowedEmbeds": "ops-dash"},
        {"allowedEmbeds": [1]},
        {"rlsSettings": {"metricId": "m", "values": "x"}},
        {"rlsSettings": [{"metricId": "m"}]},
        {"rlsSettings": [{"metricId": "m", "values": "x", "extra": 1}]},
    ],
)
def test_malformed_allowed_embeds_or_rls_settings_fail_at_load(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"params\.(allowedEmbeds|rlsSettings)"):
        DatabrainProvider.validate_request({**MINIMAL, "params": params})


def test_unknown_fields_fail_at_load_unless_the_provider_allows_them() -> None:
    body = {**MINIMAL, "newTopLevel": 1, "params": {"newParam": ["x"], "userIdentifier": "u"}}

    with pytest.raises(ValueError, match="allow_unknown_fields") as caught:
        DatabrainProvider.validate_request(body)
    assert "newTopLevel" in str(caught.value)
    assert "params.newParam" in str(caught.value)
    assert DatabrainProvider.validate_request(body, allow_unknown_fields=True) == (
        "newTopLevel",
        "params.newParam",
    )


def test_allowing_unknown_fields_still_checks_the_known_ones() -> None:
    body = {**MINIMAL, "newField": 1, "dataAppName": "bad\nname"}

    with pytest.raises(ValueError, match="dataAppName") as caught:
        DatabrainProvider.validate_request(body, allow_unknown_fields=True)
    assert "newField" not in str(caught.value)


async def test_unknown_fields_are_forwarded_as_written(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    body = {**MINIMAL, "params": {"userIdentifier": "alice", "newParam": {"k": ["v"]}}}

    # The sandbox knows only the documented fields: it answers as the vendor would.
    with pytest.raises(ProviderRejected) as caught:
        await provider(sandbox, client).issue(body, 60, None)

    assert sandbox.last_request("databrain")["body"] == {**body, "expiryTime": 60_000}
    assert (caught.value.status, caught.value.vendor_code) == (400, "INVALID_REQUEST_BODY")
