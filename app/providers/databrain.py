"""Databrain: ``POST {base_url}/api/v2/guest-token/create``.

Docs: docs.usedatabrain.com "Guest token"; the databrainhq demo repositories.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, AnyHttpUrl, Field, SecretStr

from app.masking import mask_url
from app.providers.base import (
    ApiKey,
    BaseProvider,
    Element,
    EmbedElementConfig,
    IssuedToken,
    ProviderConfigBase,
    ScriptUrl,
    StrictModel,
    VendorUrl,
)
from app.providers.http import (
    post_json,
    raise_for_failure,
    require_positive_ttl,
    short_string,
    token_from_body,
)
from app.providers.validation import validate_body

TYPE_NAME = "databrain"
DEFAULT_BASE_URL = "https://api.usedatabrain.com"
TOKEN_PATH = "/api/v2/guest-token/create"
DASHBOARD_TAG = "dbn-dashboard"
METRIC_TAG = "dbn-metric"
CREDENTIAL_ERROR_CODES = frozenset({"AUTHENTICATION_ERROR", "AUTHENTICATION_ERR", "EXPIRED_TOKEN"})
"""The codes that mean the broker's API token is wrong (``AUTHENTICATION_ERR`` is what
the live API has been seen to send). Every other 4xx is about the request body."""


class DatabrainConfig(ProviderConfigBase):
    type: Literal["databrain"]
    base_url: VendorUrl = AnyHttpUrl(DEFAULT_BASE_URL)
    api_key: ApiKey
    script_url: ScriptUrl | None = None
    """Where the front end loads Databrain's web components from (element.script); none
    by default: most apps bundle the ``@databrainhq/plugin`` package."""

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


class RlsSetting(StrictModel):
    """Legacy row-level security (before ``appFilters``); Databrain still accepts it."""

    metricId: str
    values: dict[str, FilterValue] | FilterValue


class DatabrainParams(StrictModel):
    appFilters: list[AppFilter] | None = None
    dashboardAppFilters: list[DashboardAppFilter] | None = None
    hideDashboardFilters: list[str] | None = None
    userIdentifier: str | None = None
    timezone: str | None = None
    allowedEmbeds: list[Annotated[str, Field(min_length=1)]] | None = None
    """Embed ids the token may open; every other embed is inaccessible to it."""
    rlsSettings: list[RlsSetting] | None = None


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


def _printable_name(value: str) -> str:
    # The docs say "alphanumeric", but Databrain's own examples and demos use names
    # such as "sales-dashboard" and "Demo Sales Data App": any visible name is passed on.
    if not value.strip():
        raise ValueError("must not be empty or only spaces")
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError("must not contain control characters")
    return value


DataAppName = Annotated[str, AfterValidator(_printable_name)]


class DatabrainRequest(StrictModel):
    clientId: str = Field(min_length=1)
    dataAppName: DataAppName
    params: DatabrainParams | None = None
    permissions: DatabrainPermissions | None = None
    datasourceName: str | None = None


class DatabrainProvider(BaseProvider[DatabrainConfig]):
    type_name: ClassVar[str] = TYPE_NAME
    config_model: ClassVar[type[ProviderConfigBase]] = DatabrainConfig
    token_path: ClassVar[str] = TOKEN_PATH

    def __repr__(self) -> str:
        return f"DatabrainProvider(name={self.name!r}, base_url={mask_url(self.config.base_url)!r})"

    @classmethod
    def validate_request(
        cls, body: Mapping[str, Any], *, allow_unknown_fields: bool = False
    ) -> tuple[str, ...]:
        return validate_body(DatabrainRequest, body, allow_unknown_fields=allow_unknown_fields)

    @classmethod
    def validate_element(cls, element: EmbedElementConfig | None) -> None:
        if element is None or (element.dashboard_id is None) == (element.metric_id is None):
            raise ValueError(
                "a Databrain embed needs element.dashboard_id or element.metric_id (exactly one)"
            )

    async def issue(
        self, body: Mapping[str, Any], ttl_seconds: int, region: str | None
    ) -> IssuedToken:
        """``region`` is the tenant's; Databrain is not region-based, so it only labels errors."""
        require_positive_ttl(ttl_seconds)
        endpoint = self.endpoint(region)
        context = endpoint.context
        started = time.time()
        response = await post_json(self._http, endpoint, vendor_body(body, ttl_seconds))
        raise_for_failure(response, context, error_fields, is_credential_error)
        payload = response.json()
        if isinstance(payload, dict) and payload.get("error") is not None:
            code, _ = error_fields(payload)
            raise context.bad_response(f"a 2xx body carrying error {code or 'of unknown shape'}")
        token = token_from_body(response, context)
        # A guest token is opaque: the expiry we asked for is all we know.
        return IssuedToken(
            token=token, expires_at=started + ttl_seconds, vendor_status=response.status
        )

    def account(self, region: str | None) -> tuple[str, SecretStr]:
        return str(self.config.base_url).rstrip("/"), self.config.api_key

    def element(self, element: EmbedElementConfig | None, region: str | None) -> Element:
        script = None if self.config.script_url is None else str(self.config.script_url)
        if element is not None and element.dashboard_id is not None:
            return Element(DASHBOARD_TAG, {"dashboard-id": element.dashboard_id}, script)
        if element is not None and element.metric_id is not None:
            return Element(METRIC_TAG, {"metric-id": element.metric_id}, script)
        raise ValueError("a Databrain embed needs element.dashboard_id or element.metric_id")


def vendor_body(body: Mapping[str, Any], ttl_seconds: int) -> dict[str, Any]:
    """The guest-token request as sent. Without ``expiryTime`` the token never expires."""
    sent = {key: value for key, value in body.items() if value is not None}
    sent["expiryTime"] = ttl_seconds * 1000
    return sent


def is_credential_error(status: int, code: str | None) -> bool:
    """Whether a 4xx means the broker's API token was refused (upstreams.md).

    Every 401 Databrain documents is a credential code, and a 401 says so by HTTP's
    own meaning; a credential code is believed whatever its status. A 403
    ``INVALID_PERMISSIONS`` is about the request's permissions, not the key.
    """
    return status == 401 or code in CREDENTIAL_ERROR_CODES


def error_fields(payload: Any) -> tuple[str | None, str | None]:
    """``{"error": {"code", "message"}}`` as documented; other shapes are tolerated."""
    if isinstance(payload, str):
        return None, short_string(payload)
    if not isinstance(payload, dict):
        return None, None
    error = payload.get("error")
    if isinstance(error, dict):
        code = short_string(error.get("code"))
        message = short_string(error.get("message"))
    else:
        code = short_string(payload.get("code"))
        message = short_string(error)
    message = message or short_string(payload.get("message"))
    return code, message
