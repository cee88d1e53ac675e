"""Apache Superset and Preset: guest tokens for Superset's embedded SDK.

Superset's ``@superset-ui/embedded-sdk`` asks the host app for a guest token
(``fetchGuestToken``); the broker is that backend. Self-hosted Superset takes three
calls (upstreams.md):

1. ``POST {base_url}/api/v1/security/login`` → an access token (a JWT). It is reused
   until shortly before its ``exp`` and renewed after a 401 (or the 422 flask-jwt-
   extended answers for a token it cannot read); concurrent misses share one login.
2. ``GET {base_url}/api/v1/security/csrf_token/`` → a CSRF token and a ``session``
   cookie: Superset's CSRF protection refuses the next call without both (400 "The CSRF
   token is missing."). The cookie is kept for that one call only, never in a shared
   jar: the outbound client is the whole process's.
3. ``POST {base_url}/api/v1/security/guest_token/`` with ``user``, ``resources`` and
   ``rls`` → ``{"token": <JWT>}``. Its lifetime is Superset's server-wide
   ``GUEST_TOKEN_JWT_EXP_SECONDS``: the broker reads ``exp`` from the token.

Preset (hosted Superset) trades an API token and secret for an access token at
``POST {api_url}/v1/auth/`` and asks
``POST {api_url}/v1/teams/{team}/workspaces/{workspace}/guest-token/`` with the same
body; both answers are wrapped in ``payload``. No CSRF step.

The RLS clauses are the security context here: SQL that Superset adds to every query
of the guest. They come only from the policy's templates, are validated at load and
again before each call (one statement, no comments, balanced quotes), and may use
``{tenant.*}`` and ``{embed.name}`` only: a session claim pasted into SQL could rewrite
the clause, so the loader refuses ``{user.*}`` inside one (:meth:`check_templates`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import httpx
import orjson
from pydantic import AfterValidator, AnyHttpUrl, Field, SecretStr, StrictInt, model_validator

from app.masking import mask_url
from app.providers.base import (
    ApiKey,
    BaseProvider,
    BodyPath,
    BrowserUrl,
    Element,
    EmbedElementConfig,
    IssuedToken,
    ProviderConfigBase,
    StrictModel,
    VendorUrl,
    check_browser_url,
)
from app.providers.embeddable import unverified_exp
from app.providers.errors import ProviderAuthFailed, ProviderError, ProviderRejected
from app.providers.http import (
    CallContext,
    VendorEndpoint,
    VendorResponse,
    raise_for_failure,
    require_positive_ttl,
    send,
    short_string,
    token_from_body,
)
from app.providers.validation import validate_body

log = logging.getLogger("token_broker.providers.superset")

SDK_PACKAGE = "@superset-ui/embedded-sdk"
LOGIN_PATH = "/api/v1/security/login"
CSRF_PATH = "/api/v1/security/csrf_token/"
GUEST_TOKEN_PATH = "/api/v1/security/guest_token/"
PRESET_API_URL = "https://api.app.preset.io"
PRESET_AUTH_PATH = "/v1/auth/"
ACCESS_RENEW_MARGIN_SECONDS = 30.0
"""An access token this close to its ``exp`` is renewed rather than sent."""
ACCESS_FALLBACK_SECONDS = 300.0
"""How long an access token without a readable ``exp`` is trusted."""
LOGIN_REFUSED_HOLD_SECONDS = 10.0
"""After the vendor refuses the broker's credentials, how long calls get that refusal
without another login: under steady traffic every call would otherwise try the wrong
password again, back to back, and a directory that locks accounts after a few failures
locks the service account. A fixed account is noticed within this time."""
REFUSED_ACCESS_STATUSES = frozenset({401, 422})
"""flask-jwt-extended: 401 for a missing, expired or revoked token, 422 for one it
cannot read (a rotated SECRET_KEY). Either way: log in again, once."""
MAX_CLAUSE_CHARS = 4096
_CLAUSE_FORBIDDEN = (";", "--", "/*", "*/", "\\")
_VALUE_FORBIDDEN = ("'", '"', "`", "\\")
"""In a value templated into a clause: what could end or escape the literal around it."""


# --- configuration -----------------------------------------------------------------------


def _printable_secret(secret: SecretStr) -> SecretStr:
    if any(unicodedata.category(char) == "Cc" for char in secret.get_secret_value()):
        raise ValueError(
            "contains a control character (a newline?); check the secret file or the YAML"
        )
    return secret


Password = Annotated[SecretStr, Field(min_length=1), AfterValidator(_printable_secret)]


class SupersetConfig(ProviderConfigBase):
    type: Literal["superset"]
    base_url: VendorUrl
    """Superset's root URL, e.g. https://bi.example.com."""
    username: str = Field(min_length=1, max_length=256)
    password: Password
    login_provider: Literal["db", "ldap"] = "db"
    """The login's ``provider`` field: Superset's own users (db) or LDAP."""
    superset_domain: BrowserUrl | None = None
    """What the browser's SDK loads the dashboard from (element ``supersetDomain``);
    defaults to base_url. Set it when the broker reaches Superset by another name."""

    @model_validator(mode="after")
    def _domain_for_browsers(self) -> SupersetConfig:
        if self.superset_domain is None:
            try:
                check_browser_url(self.base_url)
            except ValueError:
                raise ValueError(
                    "base_url carries a user name or password and is the SDK's "
                    "supersetDomain, given to every browser: set superset_domain"
                ) from None
        return self

    def secrets(self) -> list[SecretStr]:
        return [self.password]


class PresetConfig(ProviderConfigBase):
    type: Literal["preset"]
    api_url: VendorUrl = AnyHttpUrl(PRESET_API_URL)
    api_token: ApiKey
    api_secret: ApiKey
    team: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
    workspace: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
    superset_domain: BrowserUrl
    """The workspace's URL (e.g. https://abc123.us1a.app.preset.io): the SDK's
    ``supersetDomain``."""

    def secrets(self) -> list[SecretStr]:
        return [self.api_token, self.api_secret]


# --- the guest-token body ----------------------------------------------------------------


def _safe_clause(clause: str) -> str:
    """One SQL predicate, as Superset ANDs into the guest's queries: no statement
    separator, comment, backslash escape or control character, and balanced quotes (an
    odd count means a value broke out of its literal)."""
    if not clause.strip():
        raise ValueError("must not be empty")
    if len(clause) > MAX_CLAUSE_CHARS:
        raise ValueError(f"longer than {MAX_CLAUSE_CHARS} characters")
    if any(unicodedata.category(char) == "Cc" for char in clause):
        raise ValueError("must not contain control characters (write it on one line)")
    for token in _CLAUSE_FORBIDDEN:
        if token in clause:
            raise ValueError(f"must not contain {token!r} (one predicate, no comments)")
    if clause.count("'") % 2 or clause.count('"') % 2:
        raise ValueError("has an unbalanced quote")
    return clause


RlsClause = Annotated[str, AfterValidator(_safe_clause)]


class GuestUser(StrictModel):
    username: str | None = Field(default=None, max_length=256)
    first_name: str | None = Field(default=None, max_length=256)
    last_name: str | None = Field(default=None, max_length=256)


class GuestResource(StrictModel):
    type: Literal["dashboard"]
    id: str = Field(min_length=1, max_length=64)
    """The dashboard's embedded uuid (Superset: Embed dashboard)."""


class RlsRule(StrictModel):
    clause: RlsClause
    dataset: StrictInt | None = Field(default=None, gt=0)
    """The dataset the clause applies to; without it, every dataset of the dashboard."""


class GuestTokenRequest(StrictModel):
    user: GuestUser | None = None
    resources: list[GuestResource] = Field(min_length=1)
    rls: list[RlsRule] = Field(default_factory=list)


def vendor_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The guest-token request as sent: ``rls`` always present (Superset requires it)."""
    sent = {key: value for key, value in body.items() if value is not None}
    sent.setdefault("rls", [])
    return sent


# --- errors ------------------------------------------------------------------------------


def error_fields(payload: Any) -> tuple[str | None, str | None]:
    """Superset answers ``{"message": str | {field: [reasons]}}``, flask-jwt-extended
    ``{"msg": str}``, its generic handler ``{"errors": [{"message", "error_type"}]}``;
    Preset the same or ``{"errors": [...]}``. Other shapes are tolerated."""
    if isinstance(payload, str):
        return None, short_string(payload)
    if not isinstance(payload, dict):
        return None, None
    message = payload.get("message")
    if isinstance(message, dict):
        parts = [f"{name}: {_first(reasons)}" for name, reasons in message.items()]
        return None, short_string("; ".join(parts))
    if short_string(message) is not None:
        return None, short_string(message)
    if short_string(payload.get("msg")) is not None:
        return None, short_string(payload.get("msg"))
    errors = payload.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return short_string(first.get("error_type")), short_string(first.get("message"))
    return None, None


def _first(reasons: Any) -> str:
    if isinstance(reasons, list) and reasons:
        return str(reasons[0])
    return str(reasons)


def _credential_refused(status: int, code: str | None) -> bool:
    """At login every refusal is about the broker's credentials."""
    return 400 <= status < 500 and status != 429


def _guest_refused(status: int, code: str | None) -> bool:
    """After a fresh login, an access token still refused means the account is wrong."""
    return status in REFUSED_ACCESS_STATUSES


# --- the providers -----------------------------------------------------------------------


@dataclass(slots=True)
class AccessToken:
    token: str = field(repr=False)
    renew_at: float


GuestConfigT = TypeVar("GuestConfigT", bound=SupersetConfig | PresetConfig)


class _GuestTokenProvider(BaseProvider[GuestConfigT]):
    """What Superset and Preset share: the access token's reuse and single-flight
    renewal, the body, the SDK element, and the token's expiry."""

    token_path: ClassVar[str] = ""

    def __init__(self, name: str, config: GuestConfigT, *, http_client: httpx.AsyncClient) -> None:
        super().__init__(name, config, http_client=http_client)
        self._access: AccessToken | None = None
        self._login_lock = asyncio.Lock()
        self._logins_finished = 0
        self._login_failure: ProviderError | None = None
        self._refused_until = 0.0
        """The last login's failure, for the calls that waited on it."""
        self._elements: dict[str, Element] = {}
        self.logins = 0
        """Logins made (for metrics and tests: reuse is the point)."""

    @classmethod
    def validate_request(
        cls, body: Mapping[str, Any], *, allow_unknown_fields: bool = False
    ) -> tuple[str, ...]:
        return validate_body(GuestTokenRequest, body, allow_unknown_fields=allow_unknown_fields)

    @classmethod
    def validate_element(cls, element: EmbedElementConfig | None) -> None:
        if element is None or element.dashboard_id is None or element.metric_id is not None:
            raise ValueError(
                "a Superset or Preset embed needs element.dashboard_id: the embedded "
                "dashboard's uuid, which the front end's SDK loads"
            )

    @classmethod
    def check_templates(
        cls, templates: Iterable[tuple[BodyPath, frozenset[str]]]
    ) -> Iterable[tuple[BodyPath, str]]:
        """RLS clauses may use tenant and embed values (known and checked at load), never
        a session value: a claim inside SQL could rewrite the clause."""
        for where, roots in templates:
            in_clause = len(where) >= 3 and where[0] == "rls" and where[2] == "clause"
            if in_clause and "user" in roots:
                yield (
                    where,
                    "an RLS clause may use {tenant.*} and {embed.name} only: a session "
                    "value inside SQL could change the clause",
                )

    @classmethod
    def check_static_value(cls, where: BodyPath, value: object) -> str | None:
        """A tenant or embed value inside an RLS clause holds no quote or backslash: the
        clause's own check sees only the finished SQL, where ``x' OR '1'='1`` pasted
        into ``'...'`` leaves the quotes balanced and reads every tenant's rows."""
        in_clause = len(where) >= 3 and where[0] == "rls" and where[2] == "clause"
        if in_clause and isinstance(value, str) and any(c in value for c in _VALUE_FORBIDDEN):
            return (
                "a value inside an RLS clause must not contain a quote or a backslash: "
                "it could end the SQL literal it is written into"
            )
        return None

    def element(self, element: EmbedElementConfig | None, region: str | None) -> Element:
        if element is None or element.dashboard_id is None:
            raise ValueError("a Superset or Preset embed needs element.dashboard_id")
        found = self._elements.get(element.dashboard_id)
        if found is None:
            found = self._elements[element.dashboard_id] = Element(
                sdk=SDK_PACKAGE,
                options={"id": element.dashboard_id, "supersetDomain": self.superset_domain()},
            )
        return found

    def superset_domain(self) -> str:
        raise NotImplementedError

    def preview(self, body: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The guest-token body (the first request is the login)."""
        return vendor_body(body)

    async def issue(
        self, body: Mapping[str, Any], ttl_seconds: int, region: str | None
    ) -> IssuedToken:
        require_positive_ttl(ttl_seconds)
        # Checked again here, not only at load: the body now holds the session's values.
        try:
            validate_body(GuestTokenRequest, body)
        except ValueError as exc:
            raise ProviderRejected(
                f"refused before sending: {exc}", provider=self.name, region=region, status=400
            ) from None
        sent = vendor_body(body)
        started = time.time()
        for attempt in (1, 2):
            access = await self._access_token(region)
            response = await self._guest_token(access, sent, region)
            if response.status in REFUSED_ACCESS_STATUSES and attempt == 1:
                # Expired early, revoked, or the server's key rotated: log in again once.
                self._forget(access)
                continue
            break
        context = self._context(region)
        raise_for_failure(response, context, error_fields, _guest_refused)
        token = self._token(response, context)
        expires_at = started + ttl_seconds
        token_exp = unverified_exp(token)
        if token_exp is None:
            log.warning("provider.token_without_exp", extra={"provider": self.name})
        elif token_exp <= time.time():
            raise context.bad_response("the guest token is already expired")
        else:
            expires_at = min(expires_at, token_exp)
        return IssuedToken(token=token, expires_at=expires_at, vendor_status=response.status)

    def _token(self, response: VendorResponse, context: CallContext) -> str:
        return token_from_body(response, context)

    # --- the access token ------------------------------------------------------------

    async def _access_token(self, region: str | None) -> AccessToken:
        current = self._access
        if current is not None and current.renew_at > time.time():
            return current
        finished = self._logins_finished
        async with self._login_lock:
            current = self._access  # a login that finished while this one waited
            if current is not None and current.renew_at > time.time():
                return current
            failure = self._login_failure
            held = isinstance(failure, ProviderAuthFailed) and (
                time.monotonic() < self._refused_until
            )
            if failure is not None and (finished != self._logins_finished or held):
                # A login that failed while this call waited, or refused credentials
                # within the hold: its answer, not one more try. N misses with a wrong
                # password would otherwise be N failed logins, enough to lock the
                # account out (LDAP, an IdP policy).
                raise failure
            self._login_failure = None  # only this attempt's outcome is shared
            try:
                token = await self._login(region)
            except ProviderError as exc:
                self._login_failure = exc
                self._refused_until = time.monotonic() + LOGIN_REFUSED_HOLD_SECONDS
                raise
            finally:
                self._logins_finished += 1
            self.logins += 1
            exp = unverified_exp(token)
            lifetime_end = exp if exp is not None else time.time() + ACCESS_FALLBACK_SECONDS
            self._access = AccessToken(token, lifetime_end - ACCESS_RENEW_MARGIN_SECONDS)
            return self._access

    def _forget(self, access: AccessToken) -> None:
        if self._access is access:
            self._access = None

    async def _login(self, region: str | None) -> str:
        raise NotImplementedError

    async def _guest_token(
        self, access: AccessToken, body: Mapping[str, Any], region: str | None
    ) -> VendorResponse:
        raise NotImplementedError

    def _context(self, region: str | None) -> CallContext:
        return CallContext(self.name, region, tuple(self.config.secrets()))

    async def _send(
        self,
        method: str,
        url: str,
        region: str | None,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> VendorResponse:
        endpoint = VendorEndpoint.prepare(
            url,
            api_key=SecretStr("unused"),
            timeout_seconds=self.config.timeout_seconds,
            context=self._context(region),
        )
        prepared = httpx.Headers(endpoint.headers)
        del prepared["authorization"]
        if body is None:
            del prepared["content-type"]
        prepared.update(headers or {})
        request = httpx.Request(
            method,
            endpoint.url,
            headers=prepared,
            content=None if body is None else orjson.dumps(body),
            extensions={"timeout": endpoint.timeouts},
        )
        return await send(self._http, request, endpoint)


class SupersetProvider(_GuestTokenProvider[SupersetConfig]):
    type_name: ClassVar[str] = "superset"
    config_model: ClassVar[type[ProviderConfigBase]] = SupersetConfig

    def __repr__(self) -> str:
        return f"SupersetProvider(name={self.name!r}, base_url={mask_url(self.config.base_url)!r})"

    def _root(self) -> str:
        return str(self.config.base_url).rstrip("/")

    def superset_domain(self) -> str:
        domain = self.config.superset_domain or self.config.base_url
        return str(domain).rstrip("/")

    def account(self, region: str | None) -> tuple[str, SecretStr]:
        # The account is the user at that Superset: both are in the fingerprint.
        return f"{self._root()}\0{self.config.username}", self.config.password

    async def _login(self, region: str | None) -> str:
        response = await self._send(
            "POST",
            self._root() + LOGIN_PATH,
            region,
            body={
                "username": self.config.username,
                "password": self.config.password.get_secret_value(),
                "provider": self.config.login_provider,
                "refresh": False,
            },
        )
        context = self._context(region)
        raise_for_failure(response, context, error_fields, _credential_refused)
        token = _text_at(response.json(), "access_token")
        if token is None:
            raise context.bad_response("the login answered no access_token")
        return token

    async def _guest_token(
        self, access: AccessToken, body: Mapping[str, Any], region: str | None
    ) -> VendorResponse:
        bearer = {"Authorization": f"Bearer {access.token}"}
        answer = await self._send("GET", self._root() + CSRF_PATH, region, headers=bearer)
        if answer.status in REFUSED_ACCESS_STATUSES:
            return answer  # the caller logs in again
        context = self._context(region)
        raise_for_failure(answer, context, error_fields, _guest_refused)
        csrf = _text_at(answer.json(), "result")
        if csrf is None:
            raise context.bad_response("the CSRF call answered no result")
        cookie = session_cookie(answer.headers)
        if cookie is None:
            raise context.bad_response("the CSRF call set no session cookie")
        headers = {**bearer, "X-CSRFToken": csrf, "Cookie": cookie, "Referer": self._root()}
        return await self._send(
            "POST", self._root() + GUEST_TOKEN_PATH, region, body=body, headers=headers
        )


class PresetProvider(_GuestTokenProvider[PresetConfig]):
    type_name: ClassVar[str] = "preset"
    config_model: ClassVar[type[ProviderConfigBase]] = PresetConfig

    def __repr__(self) -> str:
        return (
            f"PresetProvider(name={self.name!r}, team={self.config.team!r}, "
            f"workspace={self.config.workspace!r})"
        )

    def _root(self) -> str:
        return str(self.config.api_url).rstrip("/")

    def superset_domain(self) -> str:
        return str(self.config.superset_domain).rstrip("/")

    def account(self, region: str | None) -> tuple[str, SecretStr]:
        where = f"{self._root()}\0{self.config.team}\0{self.config.workspace}"
        secret = self.config.api_token.get_secret_value() + "\0"
        return where, SecretStr(secret + self.config.api_secret.get_secret_value())

    async def _login(self, region: str | None) -> str:
        response = await self._send(
            "POST",
            self._root() + PRESET_AUTH_PATH,
            region,
            body={
                "name": self.config.api_token.get_secret_value(),
                "secret": self.config.api_secret.get_secret_value(),
            },
        )
        context = self._context(region)
        raise_for_failure(response, context, error_fields, _credential_refused)
        token = _text_at(response.json(), "payload", "access_token")
        if token is None:
            raise context.bad_response("the auth call answered no payload.access_token")
        return token

    async def _guest_token(
        self, access: AccessToken, body: Mapping[str, Any], region: str | None
    ) -> VendorResponse:
        url = (
            f"{self._root()}/v1/teams/{self.config.team}/workspaces/"
            f"{self.config.workspace}/guest-token/"
        )
        headers = {"Authorization": f"Bearer {access.token}"}
        return await self._send("POST", url, region, body=body, headers=headers)

    def _token(self, response: VendorResponse, context: CallContext) -> str:
        # Preset wraps the answer: {"payload": {"token": ...}}.
        payload = response.json()
        inner = payload.get("payload") if isinstance(payload, dict) else None
        unwrapped = VendorResponse(
            response.status,
            response.headers,
            orjson.dumps(inner) if isinstance(inner, dict) else b"",
            response.complete,
        )
        return token_from_body(unwrapped, context)


def _text_at(answer: object, *path: str) -> str | None:
    """The non-empty string at ``path`` (object keys) in a parsed JSON answer, or None."""
    for name in path:
        answer = answer.get(name) if isinstance(answer, dict) else None
    return answer if isinstance(answer, str) and answer else None


_COOKIE_RE = re.compile(r"^\s*([A-Za-z0-9_.-]+)=([^;]*)")


def session_cookie(headers: httpx.Headers) -> str | None:
    """The ``Cookie`` header that returns what the CSRF answer set (name=value pairs)."""
    pairs = []
    for value in headers.get_list("set-cookie"):
        match = _COOKIE_RE.match(value)
        if match:
            pairs.append(f"{match[1]}={match[2]}")
    return "; ".join(pairs) or None
