"""Databrain: ``POST {base_url}/api/v2/guest-token/create``.

Docs: docs.usedatabrain.com "Guest token"; the databrainhq demo repositories.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError

from app.providers.base import (
    BaseProvider,
    Element,
    EmbedElementConfig,
    IssuedToken,
    ProviderConfigBase,
    StrictModel,
)
from app.providers.embeddable import _first_error

TYPE_NAME = "databrain"
DEFAULT_BASE_URL = "https://api.usedatabrain.com"
TOKEN_PATH = "/api/v2/guest-token/create"
DASHBOARD_TAG = "dbn-dashboard"
METRIC_TAG = "dbn-metric"


class DatabrainConfig(ProviderConfigBase):
    type: Literal["databrain"]
    base_url: AnyHttpUrl = AnyHttpUrl(DEFAULT_BASE_URL)
    api_key: SecretStr = Field(min_length=1)

    def secrets(self) -> list[SecretStr]:
        return [self.api_key]


class DateRange(StrictModel):
    startDate: str
    endDate: str


class NumberRange(StrictModel):
    min: float
    max: float


class SqlFilter(StrictModel):
    sql: str
    columnName: str


FilterValue = bool | int | float | str | list[str] | DateRange | NumberRange | SqlFilter


class AppFilter(StrictModel):
    metricId: str
    values: dict[str, FilterValue] | FilterValue


class DashboardAppFilter(StrictModel):
    dashboardId: str
    values: dict[str, FilterValue] | FilterValue
    isShowOnUrl: bool | None = None


class DatabrainParams(StrictModel):
    appFilters: list[AppFilter] | None = None
    dashboardAppFilters: list[DashboardAppFilter] | None = None
    hideDashboardFilters: list[str] | None = None
    userIdentifier: str | None = None
    timezone: str | None = None


class DatabrainPermissions(StrictModel):
    isEnableArchiveMetrics: bool | None = None
    isEnableManageMetrics: bool | None = None
    isEnableCreateDashboardView: bool | None = None
    isEnableMetricUpdation: bool | None = None
    isEnableCustomizeLayout: bool | None = None
    isEnableUnderlyingData: bool | None = None
    isEnableDownloadMetrics: bool | None = None
    isShowSideBar: bool | None = None
    isShowDashboardName: bool | None = None
    isDisableMetricCreation: bool | None = None


class DatabrainRequest(StrictModel):
    clientId: str = Field(min_length=1)
    dataAppName: str = Field(min_length=1, pattern=r"^[A-Za-z0-9]+$")
    params: DatabrainParams | None = None
    permissions: DatabrainPermissions | None = None
    datasourceName: str | None = None


class DatabrainProvider(BaseProvider):
    type_name: ClassVar[str] = TYPE_NAME
    config_model: ClassVar[type[ProviderConfigBase]] = DatabrainConfig

    config: DatabrainConfig

    def __repr__(self) -> str:
        return f"DatabrainProvider(name={self.name!r}, base_url={str(self.config.base_url)!r})"

    @classmethod
    def validate_request(cls, body: Mapping[str, Any]) -> None:
        try:
            DatabrainRequest.model_validate(body)
        except ValidationError as exc:
            raise ValueError(_first_error(exc)) from None

    @classmethod
    def validate_element(cls, element: EmbedElementConfig | None) -> None:
        if element is None or (element.dashboard_id is None) == (element.metric_id is None):
            raise ValueError(
                "a Databrain embed needs element.dashboard_id or element.metric_id (exactly one)"
            )

    async def issue(
        self, body: Mapping[str, Any], ttl_seconds: int, region: str | None
    ) -> IssuedToken:
        raise NotImplementedError("issue 4")

    def element(self, element: EmbedElementConfig | None, region: str | None) -> Element:
        raise NotImplementedError("issue 4")
