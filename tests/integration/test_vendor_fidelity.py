"""The vendors as their APIs behave, end to end: POST /v1/tokens over HTTP to the broker,
the broker to the sandbox, and the exact body the vendor received.

Each test names the vendor fact it holds the product to (upstreams.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.config.loader import load_policy_text
from tests.support.policies import BASE_ENV, base_policy
from tests.support.stack import Stack, bearer, running_stack, session_token

DATABRAIN_SCRIPT = "https://cdn.example.com/databrain/web-components.js"


def fidelity_policy() -> dict[str, Any]:
    document = base_policy()
    providers = document["providers"]
    providers["databrain"]["script_url"] = DATABRAIN_SCRIPT
    # A second Embeddable account that forwards fields the broker does not know yet.
    providers["embeddable-next"] = {**providers["embeddable"], "allow_unknown_fields": True}
    providers["databrain-next"] = {**providers["databrain"], "allow_unknown_fields": True}
    embeds = document["embeds"]
    embeds["canvas"] = {
        "provider": "embeddable",
        "allow": {"tenants": ["*"]},
        "request": {
            "embeddableId": "canvas-id",
            "user": "{user.id}",
            "dashboardState": "saved-canvas-{tenant.id}",
            "filters": [
                {"member": "orders.shipped_at", "operator": "set"},
                {"member": "orders.cancelled_at", "operator": "notSet"},
                {
                    "member": "orders.region",
                    "operator": "equals",
                    "values": "{tenant.attributes.regions}",
                },
            ],
        },
    }
    embeds["next"] = {
        "provider": "embeddable-next",
        "allow": {"tenants": ["*"]},
        "request": {
            "embeddableId": "next-id",
            "user": "{user.id}",
            "themeOverride": {"tenant": "{tenant.id}", "dark": True},
        },
    }
    embeds["filters-next"] = {
        "provider": "databrain-next",
        "allow": {"tenants": ["acme"]},
        "element": {"dashboard_id": "sales-dash"},
        "request": {
            "clientId": "{tenant.id}",
            "dataAppName": "sales-dashboard",
            "params": {
                "userIdentifier": "{user.id}",
                "dashboardAppFilters": [
                    {"dashboardId": "sales-dash", "values": "x", "operatorHint": "{tenant.id}"}
                ],
            },
        },
    }
    embeds["sales-app"] = {
        "provider": "databrain",
        "allow": {"tenants": ["acme"]},
        "token_ttl_seconds": 300,
        "element": {"dashboard_id": "sales-dash"},
        "request": {
            "clientId": "{tenant.id}",
            "dataAppName": "Demo Sales Data App",
            "params": {
                "userIdentifier": "{user.id}",
                "allowedEmbeds": ["sales-dash", "{tenant.attributes.environment}"],
                "rlsSettings": [{"metricId": "m-1", "values": {"tenant": "{tenant.id}"}}],
            },
        },
    }
    return document


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("fidelity"), fidelity_policy()) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean(stack: Stack) -> None:
    stack.clear_vendor_requests()
    stack.clear_faults()


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def fresh_user(tenant: str = "acme") -> str:
    """A session whose token is not cached yet, so the vendor is called."""
    return session_token(f"user-{time.monotonic_ns()}", tenant)


def problem(response: httpx.Response, code: str) -> dict[str, Any]:
    assert response.status_code == 502, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    return body


def test_dashboard_state_goes_out_as_custom_canvas_state_and_presence_filters_without_values(
    stack: Stack,
) -> None:
    token = ok(stack.token("canvas", session_token("alice", "acme")))

    [received] = stack.vendor_requests("embeddable")
    assert received["status"] == 200
    assert received["token"] == token["token"]
    assert received["body"] == {
        "embeddableId": "canvas-id",
        "user": "alice",
        "customCanvasState": "saved-canvas-acme",
        "filters": [
            {"member": "orders.shipped_at", "operator": "set"},
            {"member": "orders.cancelled_at", "operator": "notSet"},
            {"member": "orders.region", "operator": "equals", "values": ["eu-west"]},
        ],
        "savedVersion": "production",
        "securityContext": {},
        "expiryInSeconds": 900,
    }


@pytest.mark.parametrize(("tenant", "region"), [("acme", "EU"), ("globex", "US")])
def test_the_element_names_the_regions_loader_script(
    stack: Stack, tenant: str, region: str
) -> None:
    element = ok(stack.token("canvas", session_token("alice", tenant)))["element"]

    assert element["tag"] == "em-beddable"
    assert element["script"] == f"https://embed.embeddable.com/js/v1/?region={region}"


def test_a_databrain_app_named_as_its_demos_name_them_gets_a_token(stack: Stack) -> None:
    issued = ok(stack.token("sales-app", session_token("alice", "acme")))

    [received] = stack.vendor_requests("databrain")
    assert received["status"] == 200
    assert received["token"] == issued["token"]
    assert received["body"] == {
        "clientId": "acme",
        "dataAppName": "Demo Sales Data App",
        "params": {
            "userIdentifier": "alice",
            "allowedEmbeds": ["sales-dash", "acme-prod"],
            "rlsSettings": [{"metricId": "m-1", "values": {"tenant": "acme"}}],
        },
        "expiryTime": 300_000,
    }
    assert issued["element"] == {
        "tag": "dbn-dashboard",
        "attributes": {"dashboard-id": "sales-dash"},
        "script": DATABRAIN_SCRIPT,
    }


def test_unknown_fields_of_a_lenient_provider_are_forwarded_templated(stack: Stack) -> None:
    response = stack.token("next", session_token("alice", "globex"))

    [received] = stack.vendor_requests("embeddable")
    assert received["body"] == {
        "embeddableId": "next-id",
        "user": "alice",
        "themeOverride": {"tenant": "globex", "dark": True},
        "savedVersion": "production",
        "securityContext": {},
        "expiryInSeconds": 900,
    }
    # The sandbox knows only documented fields and answers as the vendor would.
    body = problem(response, "upstream_rejected")
    assert (body["upstream_status"], body["upstream_code"]) == (400, None)
    assert "themeOverride" in body["detail"]


def test_the_sandbox_answers_a_bad_dashboard_filter_as_databrain_does(stack: Stack) -> None:
    # A field Databrain does not know inside a dashboardAppFilters entry, forwarded by
    # the lenient provider: the live API (and so the sandbox) calls that an app filter
    # error, and the client sees Databrain's status and code.
    response = stack.token("filters-next", session_token("alice", "acme"))

    [received] = stack.vendor_requests("databrain")
    assert received["body"]["params"]["dashboardAppFilters"] == [
        {"dashboardId": "sales-dash", "values": "x", "operatorHint": "acme"}
    ]
    body = problem(response, "upstream_rejected")
    assert (body["upstream_status"], body["upstream_code"]) == (400, "APP_FILTER_PARAM_ERROR")


def test_the_openapi_document_describes_element_script(stack: Stack) -> None:
    document = stack.client.get(f"{stack.broker}/openapi.json").json()

    element = document["components"]["schemas"]["ElementOut"]
    assert "script" in element["properties"]
    assert "script" not in element.get("required", [])


def test_invalid_permissions_is_a_rejected_request_not_a_refused_key(stack: Stack) -> None:
    stack.set_fault(
        {
            "vendor": "databrain",
            "status": 403,
            "vendor_code": "INVALID_PERMISSIONS",
            "message": "permissions not allowed for this data app",
            "count": 1,
        }
    )

    body = problem(stack.token("sales-app", fresh_user()), "upstream_rejected")

    assert (body["upstream_status"], body["upstream_code"]) == (403, "INVALID_PERMISSIONS")
    assert "API key" not in body["detail"]


@pytest.mark.parametrize("code", ["AUTHENTICATION_ERROR", "AUTHENTICATION_ERR", "EXPIRED_TOKEN"])
def test_only_databrains_credential_errors_blame_the_key(stack: Stack, code: str) -> None:
    stack.set_fault({"vendor": "databrain", "status": 401, "vendor_code": code, "count": 1})

    body = problem(stack.token("sales-app", fresh_user()), "upstream_auth_failed")

    assert "upstream_status" not in body
    assert code in body["detail"]


def test_a_vendor_body_error_reaches_the_client_with_status_and_code(stack: Stack) -> None:
    stack.set_fault(
        {"vendor": "databrain", "status": 400, "vendor_code": "APP_FILTER_PARAM_ERROR", "count": 1}
    )

    body = problem(stack.token("sales-app", fresh_user()), "upstream_rejected")

    assert (body["upstream_status"], body["upstream_code"]) == (400, "APP_FILTER_PARAM_ERROR")


# --- a policy written from the vendors' docs, as a new user writes it ---------------------

# Field names, values and shapes as the vendors' documentation and demos show them:
# Databrain's demo app name with spaces, a hyphenated one, allowedEmbeds, the legacy
# rlsSettings; Embeddable's older docs' dashboardState, a `set` filter, roles.
FROM_THE_DOCS = """\
version: 1
session:
  issuers:
    - issuer: app-backend
      audiences: [analytics-web]
      algorithms: [HS256]
      secret: ${SESSION_HS256_SECRET}
  claims: {user_id: sub, tenants: org_id, roles: roles}
tenants:
  acme: {region: eu, attributes: {plan: enterprise}}
providers:
  embeddable:
    type: embeddable
    regions:
      eu: {api_key: "${EMBEDDABLE_EU_API_KEY}", base_url: "${EMBEDDABLE_EU_URL}"}
  databrain:
    type: databrain
    api_key: ${DATABRAIN_API_KEY}
    base_url: ${DATABRAIN_URL}
embeds:
  customer-dashboard:
    provider: embeddable
    allow: {tenants: ["*"]}
    request:
      embeddableId: 0f2b6c1e-3a4d-4e5f-8a9b-0c1d2e3f4a5b
      savedVersion: production
      user: "{user.id}"
      environment: default
      roles: [default]
      dashboardState: my-saved-canvas
      securityContext: {tenantId: "{tenant.id}"}
      filters:
        - {member: customers.email, operator: set}
        - {member: customers.plan, operator: equals, values: ["{tenant.attributes.plan}"]}
  sales-dashboard:
    provider: databrain
    allow: {tenants: ["*"]}
    element: {dashboard_id: sales-dashboard}
    request:
      clientId: "{tenant.id}"
      dataAppName: Demo Sales Data App
      params:
        userIdentifier: "{user.id}"
        timezone: Europe/Berlin
        allowedEmbeds: [sales-dashboard]
        hideDashboardFilters: [country]
        dashboardAppFilters:
          - dashboardId: sales-dashboard
            values:
              country: [Germany, France]
              createdAt: {startDate: "2024-01-01", endDate: "2024-12-31"}
            isShowOnUrl: false
        appFilters:
          - metricId: revenue-metric
            values: {amount: {min: 0, max: 1000}}
        rlsSettings:
          - metricId: revenue-metric
            values: {client: "{tenant.id}"}
      permissions:
        isEnableArchiveMetrics: false
        isEnableManageMetrics: false
        isEnableCreateDashboardView: false
        isEnableMetricUpdation: false
        isEnableCustomizeLayout: false
        isEnableUnderlyingData: false
        isEnableDownloadMetrics: true
        isShowSideBar: false
        isShowDashboardName: true
        isDisableMetricCreation: true
  revenue-metric:
    provider: databrain
    allow: {tenants: ["*"]}
    element: {metric_id: revenue-metric}
    request:
      clientId: "{tenant.id}"
      dataAppName: sales-dashboard-app
"""


def test_a_policy_written_from_the_vendors_docs_gets_tokens_without_edits(
    tmp_path: Path,
) -> None:
    urls = {"EMBEDDABLE_EU_URL": "https://api.eu.embeddable.com", "DATABRAIN_URL": "https://x.test"}
    load_policy_text(FROM_THE_DOCS, environ={**BASE_ENV, **urls})  # the text itself loads
    user = bearer(session_token("alice", "acme"))

    with running_stack(tmp_path, yaml.safe_load(FROM_THE_DOCS)) as running:
        for embed in ("customer-dashboard", "sales-dashboard", "revenue-metric"):
            response = running.client.post(
                f"{running.broker}/v1/tokens", json={"embed": embed}, headers=user
            )
            assert response.status_code == 200, (embed, response.text)
        received = {
            request["body"].get("embeddableId") or request["body"]["dataAppName"]: request
            for request in running.vendor_requests()
        }

    assert all(request["status"] == 200 for request in received.values())
    embeddable = received["0f2b6c1e-3a4d-4e5f-8a9b-0c1d2e3f4a5b"]["body"]
    assert embeddable["customCanvasState"] == "my-saved-canvas"
    assert "dashboardState" not in embeddable
    assert embeddable["filters"][0] == {"member": "customers.email", "operator": "set"}
    databrain = received["Demo Sales Data App"]["body"]
    assert databrain["params"]["allowedEmbeds"] == ["sales-dashboard"]
    assert databrain["params"]["rlsSettings"] == [
        {"metricId": "revenue-metric", "values": {"client": "acme"}}
    ]
    assert databrain["expiryTime"] == 900_000
    assert received["sales-dashboard-app"]["body"]["clientId"] == "acme"


def test_forwarded_unknown_fields_are_logged_once_at_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="token_broker.runtime")

    with running_stack(tmp_path, fidelity_policy()) as running:
        assert running.client.get(f"{running.broker}/healthz").status_code == 200

    warnings = [r for r in caplog.records if r.getMessage() == "config.unknown_fields_forwarded"]
    assert len(warnings) == 1
    assert warnings[0].fields == [  # type: ignore[attr-defined]
        "embeds.next.request.themeOverride",
        "embeds.filters-next.request.params.dashboardAppFilters.0.operatorHint",
    ]
