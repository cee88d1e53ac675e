"""The token flow: authorize → rate-limit → cache → single-flight → vendor → audit.

Single-flight has two levels: per process (:class:`SingleFlight`) and, with Redis, per
fleet (:class:`FleetSingleFlight`) inside the process's one shared call, so identical
misses across all replicas make one vendor call (operations.md "Fleet mode").

Everything here is independent of HTTP: the API layer hands in a verified user and
what was asked for, and gets back a :class:`Grant` or a :class:`BrokerError`. Every
decision (granted or denied) emits exactly one audit event and one
``tokens_total`` count, whatever path it took.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from app.config.models import CacheConfig, ServiceConfig
from app.errors import BrokerError, InternalError, RateLimited
from app.observability.metrics import Metrics
from app.observability.tracing import NO_SPANS, Spans, attribute
from app.policy import EmbedRule, Policy, TokenPlan, User
from app.providers.base import AnyProvider, Element
from app.providers.errors import ProviderError
from app.providers.mapping import to_broker_error
from app.resilience import VendorCaller
from app.state.cache import CachedToken, TokenCache, token_cache_key
from app.state.fleet import FleetSingleFlight
from app.state.ratelimit import RateDecision, RateLimiter
from app.state.singleflight import SingleFlight

audit_log = logging.getLogger("token_broker.audit")
log = logging.getLogger("token_broker.issuance")

CacheState = Literal["hit", "miss", "coalesced", "none"]
PLAN_MEMO_ENTRIES = 10_000
# What a trace says of a decision: the audit event minus who (no user id, no issuer).
TRACED_AUDIT_FIELDS = ("tenant", "embed", "provider", "region", "cache", "outcome")


@dataclass(frozen=True, slots=True)
class Grant:
    token: str = field(repr=False)
    rule: EmbedRule
    tenant: str
    region: str
    expires_at: float
    element: Element
    cache: CacheState
    rate: RateDecision | None


@dataclass(frozen=True, slots=True)
class Obtained:
    token: CachedToken
    vendor_status: int | None
    shared: bool = False
    """Another replica's vendor call (fleet single-flight): audited as ``coalesced``."""


def rate_limit_headers(decision: RateDecision | None) -> dict[str, str]:
    """RateLimit-* headers (IETF draft names) for the tightest applied limit."""
    if decision is None or decision.limit <= 0:
        return {}
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(max(0, decision.remaining)),
        "RateLimit-Reset": str(max(0, int(decision.reset_after + 0.999))),
    }


def user_rate_key(user: User) -> str:
    """Per-user limits are per (issuer, user id): two issuers may both have a user "42"."""
    return hashlib.sha256(f"{user.issuer}\0{user.id}".encode()).hexdigest()


class PolicyInForce(Protocol):
    """What the flow needs of the policy in force (``app.runtime.ActivePolicy``): the
    compiled policy and the providers built from the same file."""

    @property
    def policy(self) -> Policy: ...
    @property
    def providers(self) -> Mapping[str, AnyProvider]: ...


@dataclass(frozen=True, slots=True)
class PlanKey:
    """What a session's vendor request depends on, as values: the verified session
    (its token digest fixes every claim), the tenant and the embed."""

    session: bytes
    tenant: str
    embed: str


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """A vendor request reduced to what a cache hit needs."""

    region: str
    cache_key: str


class PlanMemo:
    """Region and cache key of recent session requests, for the policy in force.

    A busy user's repeat request (the common case: every page load) is a cache hit that
    needs only the key; rendering the body and hashing it again would be most of its
    cost. Entries hold no rendered body and no user object, so a full garbage
    collection has little to walk. A new policy empties the memo.
    """

    def __init__(self, max_entries: int = PLAN_MEMO_ENTRIES) -> None:
        self._max_entries = max_entries
        self._policy: Policy | None = None
        self._entries: OrderedDict[PlanKey, PlannedRequest] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, policy: Policy, key: PlanKey) -> PlannedRequest | None:
        if policy is not self._policy:
            return None
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, policy: Policy, key: PlanKey, planned: PlannedRequest) -> None:
        if policy is not self._policy:
            self._policy = policy
            self._entries.clear()
        self._entries[key] = planned
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


def plan_request(
    policy: Policy, provider: AnyProvider, user: User, tenant: str, rule: EmbedRule
) -> tuple[TokenPlan, PlannedRequest]:
    """The vendor request for this user, tenant and embed, rendered but not sent, with
    its region and token-cache key: the step a dry run shares with issuing. The key
    covers the vendor account, the region and the exact body, so two requests share a
    token only when the vendor would mint the same one. Raises MissingClaim."""
    plan = policy.plan(user, tenant, rule)
    key = token_cache_key(
        f"{rule.provider}@{provider.account_fingerprint(plan.region)}",
        plan.region,
        plan.body,
        ttl_seconds=rule.ttl_seconds,
        issuer=user.issuer,  # the same id at two issuers is two users: never one token
    )
    return plan, PlannedRequest(plan.region, key)


class TokenFlow:
    """Process-wide: the cache, rate limits, single-flight and vendor caller outlive
    policy reloads; each call names the policy in force."""

    def __init__(
        self,
        *,
        cache: TokenCache,
        caller: VendorCaller,
        limiter: RateLimiter,
        metrics: Metrics,
        fleet: FleetSingleFlight[Obtained] | None = None,
        clock: Callable[[], float] = time.time,
        spans: Spans = NO_SPANS,
    ) -> None:
        self._spans = spans
        self._cache = cache
        self._fleet = fleet
        self._caller = caller
        self._limiter = limiter
        self._metrics = metrics
        self._clock = clock
        self._flights: SingleFlight[Obtained] = SingleFlight()
        self._plans = PlanMemo()

    async def issue(
        self,
        active: PolicyInForce,
        user: User,
        *,
        embed: str,
        tenant: str | None = None,
        caller: str = "session",
        service: ServiceConfig | None = None,
    ) -> Grant:
        """One token decision for ``user`` (acting through ``service``, if given)."""
        audit: dict[str, Any] = {
            "caller": caller,
            "user_id": user.id,
            "issuer": user.issuer,
            "tenant": tenant,
            "embed": embed,
            "provider": None,
            "region": None,
            "cache": "none",
            "vendor_status": None,
        }
        with self._spans.span("token.issue") as span:
            try:
                return await self._issue(active, user, embed, tenant, service, audit)
            finally:
                self._spans.record(span, audit, TRACED_AUDIT_FIELDS)

    async def _issue(
        self,
        active: PolicyInForce,
        user: User,
        embed: str,
        tenant: str | None,
        service: ServiceConfig | None,
        audit: dict[str, Any],
    ) -> Grant:
        policy = active.policy
        started = time.perf_counter()
        try:
            with self._spans.span("policy.decide"):
                if service is not None:
                    assert tenant is not None
                    policy.authorize_service_tenant(service, tenant)
                chosen = policy.resolve_tenant(user, tenant)
                audit["tenant"] = chosen
                rule = policy.authorize(user, chosen, embed, service)
                audit["provider"] = rule.provider
                provider = active.providers[rule.provider]
                planned, plan = self._plan(policy, provider, user, chosen, rule)
                audit["region"] = planned.region
            decision = await self._limiter.hit(user_key=user_rate_key(user), tenant_key=chosen)
            if not decision.allowed:
                raise RateLimited(
                    f"the {decision.scope} rate limit is exhausted",
                    retry_after_seconds=decision.reset_after,
                    headers=rate_limit_headers(decision),
                )
            obtained, cache_state = await self._obtain(
                lambda: plan if plan is not None else policy.plan(user, chosen, rule),
                provider,
                planned,
                policy.config.cache,
            )
            audit["cache"] = cache_state
            audit["vendor_status"] = obtained.vendor_status
            element = provider.element(rule.element, planned.region)
        except BrokerError as exc:
            self._record("token.denied", exc.code, audit, started)
            raise
        except Exception:
            log.exception("issuance.unexpected_error")
            self._record("token.denied", InternalError.code, audit, started)
            raise InternalError() from None
        self._record("token.issued", "ok", audit, started)
        return Grant(
            token=obtained.token.token,
            rule=rule,
            tenant=chosen,
            region=planned.region,
            expires_at=obtained.token.expires_at,
            element=element,
            cache=cache_state,
            rate=decision,
        )

    def _plan(
        self, policy: Policy, provider: AnyProvider, user: User, tenant: str, rule: EmbedRule
    ) -> tuple[PlannedRequest, TokenPlan | None]:
        """Where this user's vendor request goes and its cache key, plus the rendered
        request when it was rendered now (None when the memo answered)."""
        memo_key = PlanKey(user.session, tenant, rule.name) if user.session is not None else None
        if memo_key is not None:
            found = self._plans.get(policy, memo_key)
            if found is not None:
                return found, None
        plan, planned = plan_request(policy, provider, user, tenant, rule)
        if memo_key is not None:
            self._plans.put(policy, memo_key, planned)
        return planned, plan

    async def _obtain(
        self,
        plan_for_vendor: Callable[[], TokenPlan],
        provider: AnyProvider,
        planned: PlannedRequest,
        cache_config: CacheConfig,
    ) -> tuple[Obtained, CacheState]:
        key, region = planned.cache_key, planned.region

        def fresh(token: CachedToken) -> bool:
            return token.remaining_ratio(self._clock()) >= cache_config.min_remaining_ratio

        if cache_config.enabled:
            with self._spans.span("cache.lookup") as span:
                cached = await self._cache.get(key)
                hit = cached is not None and fresh(cached)
                span.set_attribute(attribute("cache"), "hit" if hit else "miss")
            if hit:
                assert cached is not None
                return Obtained(cached, None), "hit"

        async def mint() -> Obtained:
            with self._spans.span("vendor.call") as span:
                span.set_attribute(attribute("provider"), provider.name)
                span.set_attribute(attribute("region"), region)
                plan = plan_for_vendor()
                ttl_seconds = plan.embed.ttl_seconds
                requested_at = self._clock()
                try:
                    issued = await self._caller.issue(provider, plan.body, ttl_seconds, region)
                except ProviderError as exc:
                    raise to_broker_error(exc) from None
                if issued.vendor_status is not None:  # None: signed locally (Metabase)
                    span.set_attribute("http.response.status_code", issued.vendor_status)
                span.set_attribute(attribute("outcome"), "ok")
                token = CachedToken(issued.token, requested_at, issued.expires_at)
                if cache_config.enabled:
                    await self._cache.put(key, token)
                return Obtained(token, issued.vendor_status)

        fleet = self._fleet
        if fleet is None or not cache_config.enabled:
            # Without a shared cache there is nothing for other replicas to take.
            call_vendor = mint
        else:

            async def call_vendor() -> Obtained:
                obtained, _shared = await fleet.run(
                    key,
                    deadline_seconds=provider.config.timeout_seconds,
                    fresh=fresh,
                    mint=mint,
                    adopt=lambda token: Obtained(token, None, shared=True),
                )
                return obtained

        obtained, coalesced = await self._flights.run(key, call_vendor)
        return obtained, "coalesced" if coalesced or obtained.shared else "miss"

    def _record(self, event: str, outcome: str, audit: dict[str, Any], started: float) -> None:
        audit["outcome"] = outcome
        audit["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        audit_log.info(event, extra=audit)
        provider = audit["provider"] or "-"
        embed = audit["embed"] if audit["provider"] else "-"  # unknown names stay unbounded
        self._metrics.token_counter(provider, embed, outcome, audit["cache"]).inc()
