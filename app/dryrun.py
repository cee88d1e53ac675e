"""Dry runs of the token flow: the decision and the exact vendor request, nothing sent.

``token-broker explain`` and ``token-broker test`` answer "what would this user get,
and what would the vendor receive?". The answer is only worth something if it comes
from the code that serves real requests, so a dry run is not a model of the flow: it
drives the real :meth:`TokenFlow.issue <app.issuance.TokenFlow.issue>` with the real
:class:`~app.policy.Policy`, the real provider modules and the real vendor caller.
Only the outbound transport differs: :class:`CapturingTransport` receives the
``httpx.Request`` the provider built, exactly as the connection pool would, and
stops the flow right there by raising :class:`VendorRequestCaptured`.

That exception derives from ``BaseException`` for the reason ``CancelledError`` does:
nothing after the send point may run or mistake it for a vendor failure. No retry,
no circuit-breaker count, no cached token, no audit event, no token — the flow
unwinds the way a request whose client went away unwinds.

Everything a dry run prints is masked: configured secrets (vendor keys, session
secrets) never appear, and credential headers show only their scheme.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from app.auth.session import ClaimPath, SessionUser
from app.config.models import PolicyConfig, ServiceConfig
from app.errors import BrokerError, EmbedNotAllowed, MissingClaim, TenantNotAllowed
from app.issuance import TokenFlow
from app.observability.metrics import Metrics
from app.outbound import USER_AGENT, NoCookies
from app.policy import Policy, ServiceUser, User
from app.providers.base import AnyProvider, IssuedToken
from app.providers.registry import provider_class
from app.resilience import VendorCaller
from app.state.cache import MemoryTokenCache
from app.state.ratelimit import RateLimiter

MASK = "********"
# Headers whose value is a credential: shown as "<scheme> ********" whatever it holds.
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-auth-token"}
)
# Secrets shorter than this are not searched for in output: "abc" would mask every word.
MIN_MASKED_SECRET_CHARS = 4
ALLOWED = "allowed"
DRY_RUN_CALLER = "dry-run"


class VendorRequestCaptured(BaseException):
    """The flow reached the network: here is the request it would have sent."""

    def __init__(self, request: httpx.Request) -> None:
        super().__init__("vendor request captured (dry run)")
        self.request = request


class CapturingTransport(httpx.AsyncBaseTransport):
    """An outbound transport that never connects: it hands the request back instead."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        raise VendorRequestCaptured(request)


@dataclass(frozen=True, slots=True)
class VendorCall:
    """Which account a flow asked the vendor caller for (provider name, region, TTL),
    and with which body (what a signer signs: it never reaches the transport)."""

    provider: str
    region: str | None
    ttl_seconds: int
    body: Mapping[str, Any] | None = None


class _NotingCaller(VendorCaller):
    """The real vendor caller (breaker, concurrency bound, retry loop), noting its call."""

    def __init__(self) -> None:
        super().__init__(metrics=None)
        self.calls: list[VendorCall] = []

    async def issue(
        self,
        provider: AnyProvider,
        body: Mapping[str, Any],
        ttl_seconds: int,
        region: str | None,
    ) -> IssuedToken:
        self.calls.append(VendorCall(provider.name, region, ttl_seconds, body))
        return await super().issue(provider, body, ttl_seconds, region)


# --- what is asked ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DryRunRequest:
    """One token request, as a browser session or an internal service would make it.

    ``tenants`` are the session's tenants (a service acts for exactly one);
    ``tenant`` is the request's ``tenant`` field (None: the session's only tenant).
    ``claims`` are further session claims (``{user.claims.*}``), as nested JSON values.
    """

    user_id: str
    tenants: tuple[str, ...]
    embed: str
    roles: tuple[str, ...] = ()
    email: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    tenant: str | None = None
    service: str | None = None


class DryRunInputError(ValueError):
    """The request names something the policy does not have; the message says what.

    ``field`` is the request field at fault (``embed``, ``tenants``, ``tenant``,
    ``service``, ``claims``), for messages that point at a YAML path.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# --- what comes out -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VendorRequest:
    """The request the provider built, masked for printing; ``content`` is the exact body."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    content: bytes = field(repr=False)
    content_masked: bool

    @property
    def body(self) -> Any:
        return orjson.loads(self.content)

    @property
    def content_sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True, slots=True)
class Decision:
    """What the broker would answer, and what it would have sent to get there."""

    outcome: str
    """``allowed`` or the api.md error code of the denial."""
    status: int
    detail: str | None
    """The broker's own ``detail`` (what the browser would read), for a denial."""
    reason: str | None
    """Why, in terms of the policy file (YAML paths), for the person running the dry run."""
    caller: str
    user: User
    embed: str
    tenant: str | None
    region: str | None
    provider: str | None
    provider_type: str | None
    ttl_seconds: int | None
    request: VendorRequest | None
    payload: Mapping[str, Any] | None = None
    """The token's own body where it is not ``request``: what a signer (Metabase) signs,
    without the broker's expiry, or the guest-token body Superset and Preset get after
    the login that ``request`` shows."""

    @property
    def allowed(self) -> bool:
        return self.outcome == ALLOWED


# --- the engine ---------------------------------------------------------------------------


class DryRun:
    """The real token flow over one policy, with a transport that captures instead of sending.

    Build it once per policy; :meth:`decide` may be called many times. Each decision
    gets a fresh flow (empty token cache, fresh rate-limit counts and circuit
    breakers): one decision never depends on another.
    """

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.policy = Policy(config)
        self._transport = CapturingTransport()
        # The outbound client's own defaults, over a transport that only captures.
        self._client = httpx.AsyncClient(
            transport=self._transport,
            cookies=NoCookies(),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )
        self.providers: Mapping[str, AnyProvider] = {
            name: provider_class(block.type)(name, block, http_client=self._client)
            for name, block in config.providers.items()
        }
        self._metrics = Metrics.create()
        self._secrets = configured_secrets(config)

    # -- input ----------------------------------------------------------------------------

    def user_for(self, request: DryRunRequest) -> tuple[User, ServiceConfig | None]:
        """The verified user the broker would hold for ``request``; DryRunInputError on
        a name the policy does not have (a typo must not pass for a denial)."""
        config = self.config
        if request.embed not in config.embeds:
            raise DryRunInputError(
                "embed",
                f"unknown embed {request.embed!r} (the policy has: {_names(config.embeds)})",
            )
        named = [("tenants", tenant) for tenant in request.tenants]
        if request.tenant is not None:
            named.append(("tenant", request.tenant))
        for where, tenant in named:
            if tenant not in config.tenants:
                raise DryRunInputError(
                    where,
                    f"unknown tenant {tenant!r} (the policy has: {_names(config.tenants)})",
                )
        if not request.tenants:
            raise DryRunInputError("tenants", "the user needs a tenant")
        if request.service is not None:
            service = config.services.get(request.service)
            if service is None:
                known = _names(config.services) if config.services else "none"
                raise DryRunInputError(
                    "service", f"unknown service {request.service!r} (the policy has: {known})"
                )
            if len(request.tenants) != 1:
                raise DryRunInputError("tenants", "a service acts for exactly one tenant")
            user: User = ServiceUser(
                id=request.user_id,
                tenants=request.tenants,
                roles=request.roles,
                email=request.email,
                claims=dict(request.claims),
                issuer=f"service:{request.service}",
            )
            return user, service
        return self._session_user(request), None

    def _session_user(self, request: DryRunRequest) -> SessionUser:
        """A SessionUser as the verifier maps it: the mapped claims sit at their
        configured paths (so ``{user.claims.sub}`` works as it would live)."""
        session = self.config.session
        payload: dict[str, Any] = copy.deepcopy(dict(request.claims))
        mapped: list[tuple[str, str | None, Any]] = [
            ("user id", session.claims.user_id, request.user_id),
            ("tenants", session.claims.tenants, list(request.tenants)),
            ("roles", session.claims.roles, list(request.roles)),
            ("email", session.claims.email, request.email),
        ]
        for what, path, value in mapped:
            if path is None or value is None:
                continue
            try:
                ClaimPath(path).place(payload, value)
            except ValueError:
                raise DryRunInputError(
                    "claims",
                    f"claim {path!r} holds the user's {what} (session.claims); "
                    f"give the {what} on its own, not as a claim",
                ) from None
        return SessionUser(
            id=request.user_id,
            tenants=tuple(dict.fromkeys(request.tenants)),
            roles=tuple(dict.fromkeys(request.roles)),
            email=request.email,
            claims=payload,
            issuer=session.issuers[0].issuer,
            expires_at=float("inf"),
        )

    # -- the run --------------------------------------------------------------------------

    def decide(self, request: DryRunRequest) -> Decision:
        """Run the request through the token flow; raises DryRunInputError for bad input."""
        user, service = self.user_for(request)
        return asyncio.run(self.decide_async(request, user, service))

    async def decide_async(
        self, request: DryRunRequest, user: User, service: ServiceConfig | None
    ) -> Decision:
        caller = _NotingCaller()
        flow = TokenFlow(
            cache=MemoryTokenCache(self.config.cache.max_entries),
            caller=caller,
            limiter=RateLimiter(self.config.limits, redis=None, metrics=None, key_prefix="dry:"),
            metrics=self._metrics,
        )
        requested = request.tenant
        if service is not None and requested is None:
            requested = request.tenants[0]  # the service endpoint's user.tenant
        who = f"service:{request.service}" if service is not None else "session"
        try:
            # This object is the policy in force: the Policy and providers of one file.
            grant = await flow.issue(
                self, user, embed=request.embed, tenant=requested, caller=who, service=service
            )
        except VendorRequestCaptured as captured:
            call = caller.calls[-1]
            provider = self.providers[call.provider]
            return self._allowed(
                who,
                user,
                request.embed,
                tenant=self.policy.resolve_tenant(user, requested),
                region=call.region,
                provider=call.provider,
                ttl_seconds=call.ttl_seconds,
                sent=self._masked(captured.request),
                payload=None if call.body is None else provider.preview(call.body),
            )
        except BrokerError as exc:
            return self._denied(request, user, service, requested, who, exc)
        # A provider that signs tokens itself answers without any vendor request; the
        # token it signed is dropped here, never shown, but what it signed is kept.
        noted = caller.calls[-1] if caller.calls else None
        signed = None
        if noted is not None and noted.body is not None:
            signed = self.providers[noted.provider].preview(noted.body)
        return self._allowed(
            who,
            user,
            request.embed,
            tenant=grant.tenant,
            region=grant.region,
            provider=grant.rule.provider,
            ttl_seconds=grant.rule.ttl_seconds,
            sent=None,
            payload=signed,
        )

    def _allowed(
        self,
        who: str,
        user: User,
        embed: str,
        *,
        tenant: str,
        region: str | None,
        provider: str,
        ttl_seconds: int,
        sent: VendorRequest | None,
        payload: Mapping[str, Any] | None = None,
    ) -> Decision:
        return Decision(
            outcome=ALLOWED,
            status=200,
            detail=None,
            reason=None,
            caller=who,
            user=user,
            embed=embed,
            tenant=tenant,
            region=region,
            provider=provider,
            provider_type=self.config.providers[provider].type,
            ttl_seconds=ttl_seconds,
            request=sent,
            payload=payload,
        )

    def _denied(
        self,
        request: DryRunRequest,
        user: User,
        service: ServiceConfig | None,
        requested: str | None,
        who: str,
        exc: BrokerError,
    ) -> Decision:
        embed = self.config.embeds.get(request.embed)
        return Decision(
            outcome=exc.code,
            status=exc.status,
            detail=self.mask(exc.detail),
            reason=self.mask(denial_reason(self.config, request, user, service, requested, exc)),
            caller=who,
            user=user,
            embed=request.embed,
            tenant=requested if requested is not None else _only(user.tenants),
            region=None,
            provider=embed.provider if embed is not None else None,
            provider_type=None,
            ttl_seconds=None,
            request=None,
        )

    # -- masking --------------------------------------------------------------------------

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def _masked(self, request: httpx.Request) -> VendorRequest:
        headers = []
        for raw_name, raw_value in request.headers.raw:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            if name.lower() in CREDENTIAL_HEADERS:
                scheme, _, credential = value.partition(" ")
                value = f"{scheme} {MASK}" if credential else MASK
            headers.append((name, self.mask(value)))
        content = request.content
        text = content.decode("utf-8")
        masked_text = self.mask(text)
        return VendorRequest(
            method=request.method,
            url=self.mask(str(request.url)),
            headers=tuple(headers),
            content=masked_text.encode("utf-8") if masked_text != text else content,
            content_masked=masked_text != text,
        )


def configured_secrets(config: PolicyConfig) -> tuple[str, ...]:
    """Every secret value the policy holds, longest first (a key containing another)."""
    values: list[str] = []
    for provider in config.providers.values():
        values.extend(secret.get_secret_value() for secret in provider.secrets())
    for issuer in config.session.issuers:
        if issuer.secret is not None:
            values.append(issuer.secret.get_secret_value())
    found = set()
    for value in values:
        if len(value) >= MIN_MASKED_SECRET_CHARS:
            found.add(value)
            # In a JSON body a quote or backslash is escaped: a password holding one is
            # printed in its escaped form (Superset's login sends it in the body).
            found.add(orjson.dumps(value).decode("utf-8")[1:-1])
    return tuple(sorted(found, key=len, reverse=True))


# --- why a denial -------------------------------------------------------------------------


def denial_reason(
    config: PolicyConfig,
    request: DryRunRequest,
    user: User,
    service: ServiceConfig | None,
    requested: str | None,
    exc: BrokerError,
) -> str:
    """The policy rule behind a denial, named by its YAML path.

    The broker's own ``detail`` stays vague on purpose (a browser must not learn which
    embeds exist); the operator running a dry run holds the policy file and needs the
    rule that said no. This never decides anything: the flow already has.
    """
    if isinstance(exc, TenantNotAllowed):
        return "; ".join(_tenant_reasons(config, user, service, requested)) or exc.detail
    if isinstance(exc, EmbedNotAllowed):
        tenant = requested if requested is not None else _only(user.tenants)
        return "; ".join(_embed_reasons(config, request.embed, tenant, user, service)) or exc.detail
    if isinstance(exc, MissingClaim):
        return f"{exc.detail}; embeds.{request.embed}.request (or a role's additions) refers to it"
    return exc.detail


def _tenant_reasons(
    config: PolicyConfig, user: User, service: ServiceConfig | None, requested: str | None
) -> Iterator[str]:
    if service is not None and requested is not None:
        name = user.issuer.removeprefix("service:")
        allowed = service.allow.tenants
        if "*" not in allowed and requested not in allowed:
            yield f"services.{name}.allow.tenants is {_list(allowed)}; not {requested!r}"
    elif requested is not None and requested not in user.tenants:
        yield f"the session grants tenants {_list(user.tenants)}; the request asks for {requested!r}"
    tenant = requested if requested is not None else _only(user.tenants)
    if tenant is not None and tenant not in config.tenants:
        yield f"tenant {tenant!r} is not under tenants: in the policy"


def _embed_reasons(
    config: PolicyConfig,
    name: str,
    tenant: str | None,
    user: User,
    service: ServiceConfig | None,
) -> Iterator[str]:
    embed = config.embeds.get(name)
    if embed is None:
        yield f"there is no embed {name!r} under embeds:"
        return
    allow = embed.allow
    if tenant is not None and "*" not in allow.tenants and tenant not in allow.tenants:
        yield f"embeds.{name}.allow.tenants is {_list(allow.tenants)}; not {tenant!r}"
    if allow.roles is not None and not set(allow.roles) & set(user.roles):
        roles = _list(user.roles) if user.roles else "none"
        yield f"embeds.{name}.allow.roles is {_list(allow.roles)}; the user's roles are {roles}"
    if service is not None:
        service_name = user.issuer.removeprefix("service:")
        embeds = service.allow.embeds
        if "*" not in embeds and name not in embeds:
            yield f"services.{service_name}.allow.embeds is {_list(embeds)}; not {name!r}"


# --- helpers ------------------------------------------------------------------------------


def _names(mapping: Mapping[str, Any]) -> str:
    return ", ".join(sorted(mapping))


def _list(values: Sequence[str]) -> str:
    return "[" + ", ".join(values) + "]"


def _only(values: Sequence[str]) -> str | None:
    return values[0] if len(values) == 1 else None


__all__ = [
    "ALLOWED",
    "Decision",
    "DryRun",
    "DryRunInputError",
    "DryRunRequest",
    "VendorRequest",
    "VendorRequestCaptured",
    "configured_secrets",
]
