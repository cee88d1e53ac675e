"""The vendors' request bodies, as strictly as their docs allow (upstreams.md).

Written independently of the broker's request models on purpose: the sandbox is the
oracle the broker is tested against, so a mistake in one must not hide in the other.
Stricter than the broker in every way the docs permit: no type coercion, no nulls for
documented types, unknown fields rejected (``dashboardState`` included: the current docs
know only ``customCanvasState``), Embeddable's expiry required and positive. Databrain's
``expiryTime`` is optional, as at the vendor (without it the token never expires).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Required

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    with_config,
)
from typing_extensions import TypedDict

STRICT = ConfigDict(extra="forbid", strict=True)

NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
PositiveInt = Annotated[int, Field(gt=0)]
SavedVersion = Annotated[str, StringConstraints(pattern=r"^(production|staging|development|v\d+)$")]
DataAppName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 _-]+$")]
"""Letters, digits, spaces, ``-`` and ``_``: what Databrain's own examples and demos use."""


@dataclass(frozen=True, slots=True)
class BodyError:
    field: str
    """Dotted path of the offending field; ``body`` for the whole body."""
    message: str


# --- Embeddable ----------------------------------------------------------------------


VALUELESS_OPERATORS = frozenset({"set", "notSet"})


@with_config(STRICT)
class EmbeddableFilterFields(TypedDict, total=False):
    member: Required[NonEmptyStr]
    operator: Required[NonEmptyStr]
    values: list[Any]


def _values_fit_the_operator(value: EmbeddableFilterFields) -> EmbeddableFilterFields:
    if value["operator"] in VALUELESS_OPERATORS:
        if "values" in value:
            raise ValueError(f"values must be omitted for operator {value['operator']}")
    elif "values" not in value:
        raise ValueError(f"values is required for operator {value['operator']}")
    return value


EmbeddableFilter = Annotated[EmbeddableFilterFields, AfterValidator(_values_fit_the_operator)]


@with_config(STRICT)
class EmbeddableSecurityTokenRequest(TypedDict, total=False):
    embeddableId: Required[NonEmptyStr]
    expiryInSeconds: Required[PositiveInt]
    savedVersion: SavedVersion
    securityContext: dict[str, Any]
    user: NonEmptyStr
    environment: NonEmptyStr
    roles: list[NonEmptyStr]
    customCanvasState: str
    customCanvasReadOnly: bool
    filters: list[EmbeddableFilter]
    dataProvider: NonEmptyStr


_EMBEDDABLE = TypeAdapter(EmbeddableSecurityTokenRequest)


def validate_embeddable(body: Any) -> BodyError | None:
    try:
        _EMBEDDABLE.validate_python(body)
    except ValidationError as exc:
        return _first_error(exc)
    return None


# --- Databrain -----------------------------------------------------------------------


def _is_filter_value(value: Any) -> bool:
    if isinstance(value, bool | str):
        return True
    if isinstance(value, int | float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(isinstance(item, str) for item in value)
    if isinstance(value, dict):
        keys = set(value)
        if keys == {"startDate", "endDate"} or keys == {"sql", "columnName"}:
            return all(isinstance(item, str) and item for item in value.values())
        if keys == {"min", "max"}:
            return all(
                isinstance(item, int | float) and not isinstance(item, bool)
                for item in value.values()
            )
    return False


def _filter_values(value: Any) -> Any:
    """One filter value, or an object of filter name → value."""
    if _is_filter_value(value):
        return value
    if isinstance(value, dict) and value and all(_is_filter_value(v) for v in value.values()):
        return value
    raise ValueError(
        "must be a boolean, number, string, list of strings, {startDate, endDate}, "
        "{min, max} or {sql, columnName} (or an object of filter name to such a value)"
    )


FilterValues = Annotated[Any, AfterValidator(_filter_values)]


@with_config(STRICT)
class AppFilter(TypedDict):
    metricId: NonEmptyStr
    values: FilterValues


@with_config(STRICT)
class DashboardAppFilter(TypedDict, total=False):
    dashboardId: Required[NonEmptyStr]
    values: Required[FilterValues]
    isShowOnUrl: bool


@with_config(STRICT)
class RlsSetting(TypedDict):
    metricId: NonEmptyStr
    values: FilterValues


@with_config(STRICT)
class GuestTokenParams(TypedDict, total=False):
    appFilters: list[AppFilter]
    dashboardAppFilters: list[DashboardAppFilter]
    hideDashboardFilters: list[NonEmptyStr]
    userIdentifier: NonEmptyStr
    timezone: NonEmptyStr
    allowedEmbeds: list[NonEmptyStr]
    rlsSettings: list[RlsSetting]


@with_config(STRICT)
class GuestTokenPermissions(TypedDict, total=False):
    isEnableArchiveMetrics: bool
    isEnableManageMetrics: bool
    isEnableCreateDashboardView: bool
    isEnableMetricUpdation: bool
    isEnableCustomizeLayout: bool
    isEnableUnderlyingData: bool
    isEnableDownloadMetrics: bool
    isShowSideBar: bool
    isShowDashboardName: bool
    isDisableMetricCreation: bool


@with_config(STRICT)
class GuestTokenRequest(TypedDict, total=False):
    clientId: Required[NonEmptyStr]
    dataAppName: Required[DataAppName]
    expiryTime: PositiveInt
    """Optional: without it the token never expires (the broker always sends it)."""
    params: GuestTokenParams
    permissions: GuestTokenPermissions
    datasourceName: NonEmptyStr


_DATABRAIN = TypeAdapter(GuestTokenRequest)

# The most specific documented code for an error at a field path (longest prefix wins).
# An invalid dashboardAppFilters entry is APP_FILTER_PARAM_ERROR: that is what the live
# API answers, whatever DASHBOARD_PARAM_ERROR's name suggests.
_DATABRAIN_CODES: Mapping[tuple[str, ...], str] = {
    ("clientId",): "CLIENT_ID_ERROR",
    ("params", "dashboardAppFilters"): "APP_FILTER_PARAM_ERROR",
    ("params", "appFilters"): "APP_FILTER_PARAM_ERROR",
    ("params", "rlsSettings"): "RLS_SETTINGS_PARAM_ERROR",
}
INVALID_REQUEST_BODY = "INVALID_REQUEST_BODY"


def validate_databrain(body: Any) -> BodyError | None:
    try:
        _DATABRAIN.validate_python(body)
    except ValidationError as exc:
        return _first_error(exc)
    return None


def databrain_code(error: BodyError) -> str:
    path = tuple(error.field.split("."))
    for length in (2, 1):
        code = _DATABRAIN_CODES.get(path[:length])
        if code is not None:
            return code
    return INVALID_REQUEST_BODY


def _first_error(exc: ValidationError) -> BodyError:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "body"
    message = error["msg"].removeprefix("Value error, ")
    return BodyError(where, f"{where}: {message}")


# --- Superset and Preset -------------------------------------------------------------
#
# Superset's guest-token schema (superset/security/api.py): ``user`` and ``rls`` entries
# are marshmallow objects, ``resources`` and ``rls`` are required (``rls`` may be []),
# a resource's ``type`` is ``dashboard`` and its ``id`` the embedded uuid (a string).
# Superset itself ignores unknown fields; the sandbox refuses them, so a broker typo
# cannot pass here and be silently dropped by the vendor.


@with_config(STRICT)
class SupersetLogin(TypedDict, total=False):
    username: Required[str]
    password: Required[str]
    provider: Required[str]
    refresh: bool


@with_config(STRICT)
class GuestUser(TypedDict, total=False):
    username: str
    first_name: str
    last_name: str


@with_config(STRICT)
class GuestResource(TypedDict):
    type: Annotated[str, StringConstraints(pattern=r"^dashboard$")]
    id: NonEmptyStr


@with_config(STRICT)
class GuestRlsRule(TypedDict, total=False):
    clause: Required[NonEmptyStr]
    dataset: int


@with_config(STRICT)
class SupersetGuestTokenRequest(TypedDict, total=False):
    user: GuestUser
    resources: Required[list[GuestResource]]
    rls: Required[list[GuestRlsRule]]


@with_config(STRICT)
class PresetAuth(TypedDict):
    name: NonEmptyStr
    secret: NonEmptyStr


_SUPERSET_LOGIN = TypeAdapter(SupersetLogin)
_SUPERSET_GUEST = TypeAdapter(SupersetGuestTokenRequest)
_PRESET_AUTH = TypeAdapter(PresetAuth)


def superset_field_errors(adapter: str, body: Any) -> dict[str, list[str]] | None:
    """Marshmallow's shape of a 400: ``{"field": ["reason"]}``; None when valid.

    ``adapter`` is ``login``, ``guest_token`` or ``preset_auth``.
    """
    validators: dict[str, TypeAdapter[Any]] = {
        "login": _SUPERSET_LOGIN,
        "guest_token": _SUPERSET_GUEST,
        "preset_auth": _PRESET_AUTH,
    }
    validator = validators[adapter]
    try:
        validator.validate_python(body)
    except ValidationError as exc:
        errors: dict[str, list[str]] = {}
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(part) for part in error["loc"]) or "_schema"
            reason = (
                "Missing data for required field."
                if error["type"] == "missing"
                else "Unknown field."
                if error["type"] == "extra_forbidden"
                else error["msg"].removeprefix("Value error, ")
            )
            errors.setdefault(where, []).append(reason)
        return errors
    return None
