"""The sandbox's body validation: each documented rule, for both vendors."""

from __future__ import annotations

from typing import Any

import pytest

from app.sandbox.schemas import databrain_code, validate_databrain, validate_embeddable

EMBEDDABLE_OK: dict[str, Any] = {"embeddableId": "d-1", "expiryInSeconds": 900}
DATABRAIN_OK: dict[str, Any] = {"clientId": "acme", "dataAppName": "opsapp", "expiryTime": 60000}


def embeddable(**changes: Any) -> dict[str, Any]:
    body = {**EMBEDDABLE_OK, **changes}
    return {k: v for k, v in body.items() if v is not ...}


def databrain(**changes: Any) -> dict[str, Any]:
    body = {**DATABRAIN_OK, **changes}
    return {k: v for k, v in body.items() if v is not ...}


# --- Embeddable ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        EMBEDDABLE_OK,
        embeddable(
            savedVersion="production",
            securityContext={"userId": "a", "nested": {"x": [1, None]}},
            user="alice",
            environment="prod",
            roles=["a", "b"],
            customCanvasState="s",
            customCanvasReadOnly=False,
            filters=[
                {"member": "m", "operator": "equals", "values": ["x", 1]},
                {"member": "n", "operator": "set"},
                {"member": "o", "operator": "notSet"},
            ],
            dataProvider="dp",
        ),
        embeddable(savedVersion="staging"),
        embeddable(savedVersion="development"),
        embeddable(savedVersion="v12"),
    ],
)
def test_embeddable_accepts_documented_bodies(body: dict[str, Any]) -> None:
    assert validate_embeddable(body) is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (embeddable(embeddableId=...), "embeddableId"),
        (embeddable(embeddableId=""), "embeddableId"),
        (embeddable(embeddableId=7), "embeddableId"),
        (embeddable(expiryInSeconds=...), "expiryInSeconds"),
        (embeddable(expiryInSeconds=0), "expiryInSeconds"),
        (embeddable(expiryInSeconds=-1), "expiryInSeconds"),
        (embeddable(expiryInSeconds="900"), "expiryInSeconds"),
        (embeddable(expiryInSeconds=900.0), "expiryInSeconds"),
        (embeddable(expiryInSeconds=True), "expiryInSeconds"),
        (embeddable(savedVersion="prod"), "savedVersion"),
        (embeddable(savedVersion="v"), "savedVersion"),
        (embeddable(securityContext=["a"]), "securityContext"),
        (embeddable(securityContext=None), "securityContext"),
        (embeddable(user=3), "user"),
        (embeddable(user=None), "user"),
        (embeddable(environment=None), "environment"),
        (embeddable(roles="analyst"), "roles"),
        (embeddable(roles=["a", 1]), "roles.1"),
        (embeddable(customCanvasState=1), "customCanvasState"),
        (embeddable(customCanvasReadOnly="true"), "customCanvasReadOnly"),
        (embeddable(filters=[{"member": "m", "values": []}]), "filters.0.operator"),
        (
            embeddable(filters=[{"member": "m", "operator": "o", "values": [], "x": 1}]),
            "filters.0.x",
        ),
        (embeddable(filters=[{"member": "m", "operator": "o", "values": "v"}]), "filters.0.values"),
        (embeddable(filters=[{"member": "m", "operator": "equals"}]), "filters.0"),
        (embeddable(filters=[{"member": "m", "operator": "set", "values": []}]), "filters.0"),
        (
            embeddable(filters=[{"member": "m", "operator": "notSet", "values": None}]),
            "filters.0.values",
        ),
        (embeddable(dataProvider=[]), "dataProvider"),
        (embeddable(expiryTime=5), "expiryTime"),
        # The current docs know only customCanvasState: the old name is an unknown field.
        (embeddable(dashboardState="b"), "dashboardState"),
    ],
)
def test_embeddable_rejects(body: dict[str, Any], field: str) -> None:
    error = validate_embeddable(body)
    assert error is not None
    assert error.field == field
    assert error.message.startswith(f"{field}: ")


@pytest.mark.parametrize("body", [[], "x", None, 3])
def test_embeddable_body_must_be_an_object(body: Any) -> None:
    error = validate_embeddable(body)
    assert error is not None
    assert error.field == "body"


# --- Databrain ----------------------------------------------------------------------------


FILTER_VALUES = [
    True,
    3,
    2.5,
    "FR",
    ["FR", "DE"],
    [],
    {"startDate": "2026-01-01", "endDate": "2026-02-01"},
    {"min": 0, "max": 9.5},
    {"sql": "x = 1", "columnName": "x"},
    {"country": "FR", "period": {"startDate": "a", "endDate": "b"}, "n": {"min": 1, "max": 2}},
]


@pytest.mark.parametrize("values", FILTER_VALUES)
def test_databrain_accepts_each_documented_filter_value(values: Any) -> None:
    body = databrain(
        params={
            "appFilters": [{"metricId": "m", "values": values}],
            "dashboardAppFilters": [{"dashboardId": "d", "values": values, "isShowOnUrl": True}],
        }
    )
    assert validate_databrain(body) is None


def test_databrain_accepts_every_documented_field() -> None:
    body = databrain(
        params={
            "hideDashboardFilters": ["a"],
            "userIdentifier": "alice",
            "timezone": "UTC",
            "appFilters": [],
            "dashboardAppFilters": [],
            "allowedEmbeds": ["dash-1", "metric-2"],
            "rlsSettings": [{"metricId": "m", "values": {"tenant": "acme"}}],
        },
        permissions=dict.fromkeys(
            (
                "isEnableArchiveMetrics",
                "isEnableManageMetrics",
                "isEnableCreateDashboardView",
                "isEnableMetricUpdation",
                "isEnableCustomizeLayout",
                "isEnableUnderlyingData",
                "isEnableDownloadMetrics",
                "isShowSideBar",
                "isShowDashboardName",
                "isDisableMetricCreation",
            ),
            True,
        ),
        datasourceName="wh",
    )
    assert validate_databrain(body) is None


@pytest.mark.parametrize(
    "name", ["opsapp", "sales-dashboard", "Demo Sales Data App", "my_app", "App 2"]
)
def test_databrain_accepts_the_data_app_names_its_examples_use(name: str) -> None:
    assert validate_databrain(databrain(dataAppName=name)) is None


def test_databrain_expiry_is_optional_as_at_the_vendor() -> None:
    # Without it the vendor's token never expires; the broker always sends it.
    assert validate_databrain(databrain(expiryTime=...)) is None


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        (databrain(clientId=...), "clientId", "CLIENT_ID_ERROR"),
        (databrain(clientId=""), "clientId", "CLIENT_ID_ERROR"),
        (databrain(clientId=12), "clientId", "CLIENT_ID_ERROR"),
        (databrain(dataAppName=...), "dataAppName", "INVALID_REQUEST_BODY"),
        (databrain(dataAppName="ops.app"), "dataAppName", "INVALID_REQUEST_BODY"),
        (databrain(dataAppName="ops/app"), "dataAppName", "INVALID_REQUEST_BODY"),
        (databrain(dataAppName="ops\napp"), "dataAppName", "INVALID_REQUEST_BODY"),
        (databrain(dataAppName="Ventes été"), "dataAppName", "INVALID_REQUEST_BODY"),
        (databrain(dataAppName=""), "dataAppName", "INVALID_REQUEST_BODY"),
        (databrain(dataAppName=7), "dataAppName", "INVALID_REQUEST_BODY"),
        (databrain(expiryTime=0), "expiryTime", "INVALID_REQUEST_BODY"),
        (databrain(expiryTime=1.5), "expiryTime", "INVALID_REQUEST_BODY"),
        (databrain(expiryTime="60000"), "expiryTime", "INVALID_REQUEST_BODY"),
        (databrain(expiryTime=False), "expiryTime", "INVALID_REQUEST_BODY"),
        (databrain(expiryInSeconds=60), "expiryInSeconds", "INVALID_REQUEST_BODY"),
        (databrain(datasourceName=None), "datasourceName", "INVALID_REQUEST_BODY"),
        (databrain(params=[]), "params", "INVALID_REQUEST_BODY"),
        (
            databrain(params={"rlsSettings": {"metricId": "m", "values": "x"}}),
            "params.rlsSettings",
            "RLS_SETTINGS_PARAM_ERROR",
        ),
        (
            databrain(params={"rlsSettings": [{"values": "x"}]}),
            "params.rlsSettings.0.metricId",
            "RLS_SETTINGS_PARAM_ERROR",
        ),
        (
            databrain(params={"rlsSettings": [{"metricId": "m", "values": [1]}]}),
            "params.rlsSettings.0.values",
            "RLS_SETTINGS_PARAM_ERROR",
        ),
        (
            databrain(params={"allowedEmbeds": "dash-1"}),
            "params.allowedEmbeds",
            "INVALID_REQUEST_BODY",
        ),
        (
            databrain(params={"allowedEmbeds": ["dash-1", ""]}),
            "params.allowedEmbeds.1",
            "INVALID_REQUEST_BODY",
        ),
        (databrain(params={"newParam": 1}), "params.newParam", "INVALID_REQUEST_BODY"),
        (databrain(params={"userIdentifier": 1}), "params.userIdentifier", "INVALID_REQUEST_BODY"),
        (databrain(params={"timezone": None}), "params.timezone", "INVALID_REQUEST_BODY"),
        (
            databrain(params={"hideDashboardFilters": [1]}),
            "params.hideDashboardFilters.0",
            "INVALID_REQUEST_BODY",
        ),
        (
            databrain(params={"appFilters": [{"values": "x"}]}),
            "params.appFilters.0.metricId",
            "APP_FILTER_PARAM_ERROR",
        ),
        (
            databrain(params={"appFilters": [{"metricId": "m", "values": None}]}),
            "params.appFilters.0.values",
            "APP_FILTER_PARAM_ERROR",
        ),
        (
            databrain(params={"dashboardAppFilters": [{"values": "x"}]}),
            "params.dashboardAppFilters.0.dashboardId",
            "APP_FILTER_PARAM_ERROR",
        ),
        (
            databrain(params={"dashboardAppFilters": [{"dashboardId": "d", "values": [1, 2]}]}),
            "params.dashboardAppFilters.0.values",
            "APP_FILTER_PARAM_ERROR",
        ),
        (
            databrain(
                params={
                    "dashboardAppFilters": [
                        {"dashboardId": "d", "values": "x", "isShowOnUrl": "yes"}
                    ]
                }
            ),
            "params.dashboardAppFilters.0.isShowOnUrl",
            "APP_FILTER_PARAM_ERROR",
        ),
        (
            databrain(
                params={"appFilters": [{"metricId": "m", "values": {"p": {"startDate": "a"}}}]}
            ),
            "params.appFilters.0.values",
            "APP_FILTER_PARAM_ERROR",
        ),
        (
            databrain(
                params={"appFilters": [{"metricId": "m", "values": {"n": {"min": True, "max": 2}}}]}
            ),
            "params.appFilters.0.values",
            "APP_FILTER_PARAM_ERROR",
        ),
        (
            databrain(params={"appFilters": [{"metricId": "m", "values": {}}]}),
            "params.appFilters.0.values",
            "APP_FILTER_PARAM_ERROR",
        ),
        (
            databrain(permissions={"isShowSideBar": "false"}),
            "permissions.isShowSideBar",
            "INVALID_REQUEST_BODY",
        ),
        (
            databrain(permissions={"isAdmin": True}),
            "permissions.isAdmin",
            "INVALID_REQUEST_BODY",
        ),
        (databrain(extra=1), "extra", "INVALID_REQUEST_BODY"),
    ],
)
def test_databrain_rejects(body: dict[str, Any], field: str, code: str) -> None:
    error = validate_databrain(body)
    assert error is not None
    assert error.field == field
    assert databrain_code(error) == code


@pytest.mark.parametrize("body", [[], "x", None])
def test_databrain_body_must_be_an_object(body: Any) -> None:
    error = validate_databrain(body)
    assert error is not None
    assert (error.field, databrain_code(error)) == ("body", "INVALID_REQUEST_BODY")
