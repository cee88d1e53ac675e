"""The one interface every vendor module implements, and the shapes they share.

A vendor module subclasses :class:`BaseProvider` with its config model as the type
argument (``class EmbeddableProvider(BaseProvider[EmbeddableConfig])``). A provider
object is one ``providers.<name>`` block bound to the process's outbound client
(``http_client=``, injected by the runtime; tests inject their own). It makes one
vendor call per :meth:`~BaseProvider.issue`; retries, breakers and concurrency bounds
are :mod:`app.resilience`'s, from :attr:`ProviderError.retryable`.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import httpx
from pydantic import AfterValidator, AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr

from app.providers.http import CallContext, VendorEndpoint

# Fields that carry the token's lifetime. The broker owns them (from token_ttl_seconds);
# a policy file that writes one in a request is rejected at load.
BROKER_OWNED_FIELDS = frozenset({"expiryInSeconds", "expiryTime", "exp"})


BodyPath = tuple[str | int, ...]
"""A field's place in a request body: keys and list indexes."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def check_vendor_url(url: AnyHttpUrl) -> AnyHttpUrl:
    """Plain http would send the API key in cleartext: allowed only to loopback and to
    single-label hosts (a compose or cluster-internal service such as the sandbox)."""
    if url.scheme == "https":
        return url
    host = url.host or ""
    if host in LOOPBACK_HOSTS or "." not in host:
        return url
    raise ValueError("plain http to a public host would send the API key in cleartext; use https")


VendorUrl = Annotated[AnyHttpUrl, AfterValidator(check_vendor_url)]


def check_browser_url(url: AnyHttpUrl) -> AnyHttpUrl:
    """A URL handed to every browser (a script, an SDK domain, an iframe) carries no
    user name or password: they would reach every viewer."""
    if url.username or url.password:
        raise ValueError("the browser is given this URL: it must not carry a user name or password")
    return url


def check_script_url(url: AnyHttpUrl) -> AnyHttpUrl:
    """A loader script runs in the user's page: over plain http anyone on the path could
    replace it. Allowed only where VendorUrl allows http (loopback, single-label hosts)."""
    check_browser_url(url)
    host = url.host or ""
    if url.scheme == "https" or host in LOOPBACK_HOSTS or "." not in host:
        return url
    raise ValueError("a script over plain http can be altered on the way; use https")


ScriptUrl = Annotated[AnyHttpUrl, AfterValidator(check_script_url)]
BrowserUrl = Annotated[AnyHttpUrl, AfterValidator(check_browser_url)]
"""The URL of a vendor's web-component loader, given to the front end as element.script."""


def check_api_key(key: SecretStr) -> SecretStr:
    """An API key goes into an ``Authorization`` header: printable ASCII without spaces.

    A control character (a YAML ``\\n``, a secret file saved with an extra newline) would
    otherwise pass ``check-config`` and fail every vendor call locally, be retried and
    trip the breaker. The message never shows the key.
    """
    value = key.get_secret_value()
    for char in value:
        if char < " " or char == "\x7f":
            raise ValueError(
                "contains a control character (a newline or tab?); check for an extra "
                "newline in the secret file or an escape in the YAML"
            )
        if char == " " or char > "~":
            raise ValueError("must be printable ASCII without spaces")
    return key


ApiKey = Annotated[SecretStr, Field(min_length=1), AfterValidator(check_api_key)]
"""A vendor API key as the policy file gives it (checked at load, never shown)."""


class ProviderConfigBase(StrictModel):
    """Settings every provider type has."""

    type: str
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    """Deadline for one token call, retries included."""
    max_concurrency: int = Field(default=64, ge=1, le=10_000)
    """Vendor calls in flight at once for this provider; beyond it calls wait, then 503."""
    allow_unknown_fields: bool = False
    """Forward request fields the broker's model does not know yet (templated, listed
    at load) instead of refusing the policy. Strict by default: a typo must not pass."""

    def region_names(self) -> frozenset[str] | None:
        """The regions this provider serves, or None when it is not region-based."""
        return None

    def secrets(self) -> list[SecretStr]:
        """Every secret in this block (for leak tests and scrubbing)."""
        return []


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A vendor token and its absolute expiry (UNIX seconds)."""

    token: str = field(repr=False)
    expires_at: float
    vendor_status: int | None = 200
    """The vendor's HTTP status; None for a signer, which calls no vendor."""


@dataclass(frozen=True, slots=True)
class Element:
    """What the front end renders with a token: one of three kinds (api.md ``element``).

    - a custom element: ``tag`` and its ``attributes`` besides ``token``; ``script`` is
      the URL of the vendor's loader that defines it, when the provider knows one (the
      front end may also bundle the vendor's npm package instead);
    - an SDK (Superset, Preset): ``sdk`` names the package, ``options`` what to pass it
      besides the token fetcher (the embedded dashboard id, the Superset domain);
    - a signed URL (Metabase): ``iframe`` builds the URL to load from the token, which
      is part of it (and names the resource the URL's path needs).
    """

    tag: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    script: str | None = None
    sdk: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    iframe: Callable[[str], str] | None = None

    def describe(self, token: str) -> dict[str, Any]:
        """The response's ``element`` object for ``token``."""
        if self.iframe is not None:
            return {"iframe": self.iframe(token)}
        if self.sdk is not None:
            return {"sdk": self.sdk, "options": dict(self.options)}
        described: dict[str, Any] = {"tag": self.tag, "attributes": dict(self.attributes)}
        if self.script is not None:
            described["script"] = self.script
        return described


class EmbedElementConfig(StrictModel):
    """``embeds.*.element``: what the front end needs to render a Databrain embed."""

    dashboard_id: str | None = Field(default=None, min_length=1, max_length=256)
    metric_id: str | None = Field(default=None, min_length=1, max_length=256)


ConfigT = TypeVar("ConfigT", bound=ProviderConfigBase, covariant=True)


class BaseProvider(abc.ABC, Generic[ConfigT]):
    """One configured vendor; the registry maps ``type:`` to subclasses of this."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[ProviderConfigBase]]
    token_path: ClassVar[str]
    """Appended to the account's base URL: the vendor's token endpoint."""

    def __init__(self, name: str, config: ConfigT, *, http_client: httpx.AsyncClient) -> None:
        self.name = name
        self.config: ConfigT = config
        self._http = http_client
        self._fingerprints: dict[str | None, str] = {}
        self._endpoints: dict[str | None, VendorEndpoint] = {}

    @classmethod
    @abc.abstractmethod
    def validate_request(
        cls, body: Mapping[str, Any], *, allow_unknown_fields: bool = False
    ) -> tuple[str, ...]:
        """Raise ValueError naming the field when ``body`` (without expiry) is not valid
        (at load time); return the unknown fields let through (only with
        ``allow_unknown_fields``)."""

    @classmethod
    @abc.abstractmethod
    def validate_element(cls, element: EmbedElementConfig | None) -> None:
        """Raise ValueError when an embed's ``element`` block does not fit this vendor."""

    @classmethod
    def check_templates(
        cls, templates: Iterable[tuple[BodyPath, frozenset[str]]]
    ) -> Iterable[tuple[BodyPath, str]]:
        """Problems with where a request's templates put values: given each templated
        field (its path in the body, the roots it references: user, tenant, embed),
        yield (path, reason). A vendor whose body holds code (Superset's SQL clauses)
        refuses session values there. None by default."""
        return ()

    @classmethod
    def check_static_value(cls, where: BodyPath, value: object) -> str | None:
        """A problem with a tenant or embed value that a template places inside longer
        text at ``where`` (checked at load, for every tenant the embed allows), or None.
        A vendor whose body holds code checks that a value cannot end the literal it is
        written into. None by default."""
        return None

    def preview(self, body: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """For a dry run, the token's own body when it is not the first request the
        provider sends: what a signer signs, or the guest-token body a vendor gets after
        a login. None (the default): the first request is the token request."""
        return None

    @abc.abstractmethod
    async def issue(
        self, body: Mapping[str, Any], ttl_seconds: int, region: str | None
    ) -> IssuedToken:
        """Call the vendor once; raise only :class:`~app.providers.errors.ProviderError`."""

    @abc.abstractmethod
    def element(self, element: EmbedElementConfig | None, region: str | None) -> Element:
        """The web component the front end renders for a token of ``region``."""

    @abc.abstractmethod
    def account(self, region: str | None) -> tuple[str, SecretStr]:
        """The endpoint and API key a token for ``region`` comes from."""

    def endpoint(self, region: str | None) -> VendorEndpoint:
        """The token endpoint of ``region``'s account, prepared on first use."""
        found = self._endpoints.get(region)
        if found is None:
            base_url, api_key = self.account(region)
            found = self._endpoints[region] = VendorEndpoint.prepare(
                base_url + self.token_path,
                api_key=api_key,
                timeout_seconds=self.config.timeout_seconds,
                context=CallContext(self.name, region, (api_key,)),
            )
        return found

    def account_fingerprint(self, region: str | None) -> str:
        """Names the vendor account (endpoint + key) without revealing the key.

        Part of the token-cache key: after a reload that points a provider at another
        endpoint or key, tokens of the old account are never handed out again.
        """
        found = self._fingerprints.get(region)
        if found is None:
            base_url, key = self.account(region)
            digest = hashlib.sha256(f"{base_url}\0{key.get_secret_value()}".encode())
            found = self._fingerprints[region] = digest.hexdigest()[:32]
        return found


AnyProvider = BaseProvider[ProviderConfigBase]
"""A provider of any vendor (what the runtime, issuance and resilience layers hold)."""
