"""The token flow: authorize → rate-limit → cache → single-flight → vendor → audit.

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
from typing import Any, Literal

from app.config.models import CacheConfig, ServiceConfig
from app.errors import BrokerError, InternalError, RateLimited
from app.observability.metrics import Metrics
from app.policy import EmbedRule, Policy, TokenPlan, User
from app.providers.base import BaseProvider, Element
from app.providers.errors import ProviderError
from app.providers.mapping import to_broker_error
from app.resilience import VendorCaller
from app.state.cache import CachedToken, TokenCache, token_cache_key
from app.state.ratelimit import RateDecision, RateLimiter
from app.state.singleflight import SingleFlight

audit_log = logging.getLogger("token_broker.audit")
log = logging.getLogger("token_broker.issuance")

CacheState = Literal["hit", "miss", "coalesced", "none"]
PLAN_MEMO_ENTRIES = 10_000


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


class TokenFlow:
    """Process-wide: the cache, single-flight and vendor caller outlive policy reloads."""

    def __init__(
        self,
        *,
        cache: TokenCache,
        caller: VendorCaller,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cache = cache
        self._caller = caller
        self._metrics = metrics
        self._clock = clock
        self._flights: SingleFlight[Obtained] = SingleFlight()
        self._plans: OrderedDict[tuple[int, int, str, str], tuple[Policy, User, str, str]]
        self._plans = OrderedDict()

    async def issue(
        self,
        *,
        policy: Policy,
        providers: Mapping[str, BaseProvider],
        limiter: RateLimiter,
        user: User,
        tenant: str | None,
        embed: str,
        caller: str,
        service: ServiceConfig | None = None,
    ) -> Grant:
        started = time.perf_counter()
        audit: dict[str, Any] = {
            "caller": caller,
            "user_id": user.id,
            "tenant": tenant,
            "embed": embed,
            "provider": None,
            "region": None,
            "cache": "none",
            "vendor_status": None,
        }
        try:
            if service is not None:
                assert tenant is not None
                policy.authorize_service_tenant(service, tenant)
            chosen = policy.resolve_tenant(user, tenant)
            audit["tenant"] = chosen
            rule = policy.authorize(user, chosen, embed, service)
            audit["provider"] = rule.provider
            region, cache_key, plan = self._plan(
                policy, providers, user, chosen, rule, memo=service is None
            )
            audit["region"] = region
            decision = await limiter.hit(user_key=user_rate_key(user), tenant_key=chosen)
            if not decision.allowed:
                raise RateLimited(
                    f"the {decision.scope} rate limit is exhausted",
                    retry_after_seconds=decision.reset_after,
                    headers=rate_limit_headers(decision),
                )
            provider = providers[rule.provider]
            obtained, cache_state = await self._obtain(
                lambda: plan if plan is not None else policy.plan(user, chosen, rule),
                provider,
                cache_key,
                region,
                policy.config.cache,
            )
            audit["cache"] = cache_state
            audit["vendor_status"] = obtained.vendor_status
            element = provider.element(rule.element, region)
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
            region=region,
            expires_at=obtained.token.expires_at,
            element=element,
            cache=cache_state,
            rate=decision,
        )

    def _plan(
        self,
        policy: Policy,
        providers: Mapping[str, BaseProvider],
        user: User,
        tenant: str,
        rule: EmbedRule,
        *,
        memo: bool,
    ) -> tuple[str, str, TokenPlan | None]:
        """The region and cache key of this user's vendor request, and the rendered
        request when it was rendered now (None when both came from the memo).

        A session user object comes from the verified-session cache, so a busy user's
        repeat requests reuse it; the memo holds the objects it was computed from and
        compares them by identity, so it can never answer for another user or policy.
        It keeps no rendered request: a repeat request is a cache hit, which needs only
        the key, and a small entry keeps full garbage collections short.
        """
        memo_key = (id(policy), id(user), tenant, rule.name)
        if memo:
            hit = self._plans.get(memo_key)
            if hit is not None and hit[0] is policy and hit[1] is user:
                self._plans.move_to_end(memo_key)
                return hit[2], hit[3], None
        plan = policy.plan(user, tenant, rule)
        provider = providers[rule.provider]
        key = token_cache_key(
            f"{rule.provider}@{provider.account_fingerprint(plan.region)}",
            plan.region,
            plan.body,
            ttl_seconds=rule.ttl_seconds,
        )
        if memo:
            self._plans[memo_key] = (policy, user, plan.region, key)
            if len(self._plans) > PLAN_MEMO_ENTRIES:
                self._plans.popitem(last=False)
        return plan.region, key, plan

    async def _obtain(
        self,
        plan_for_vendor: Callable[[], TokenPlan],
        provider: BaseProvider,
        key: str,
        region: str,
        cache_config: CacheConfig,
    ) -> tuple[Obtained, CacheState]:
        if cache_config.enabled:
            cached = await self._cache.get(key)
            if (
                cached is not None
                and cached.remaining_ratio(self._clock()) >= cache_config.min_remaining_ratio
            ):
                return Obtained(cached, None), "hit"

        async def call_vendor() -> Obtained:
            plan = plan_for_vendor()
            ttl_seconds = plan.embed.ttl_seconds
            requested_at = self._clock()
            try:
                issued = await self._caller.issue(provider, plan.body, ttl_seconds, region)
            except ProviderError as exc:
                raise to_broker_error(exc) from None
            token = CachedToken(issued.token, requested_at, issued.expires_at)
            if cache_config.enabled:
                await self._cache.put(key, token)
            return Obtained(token, issued.vendor_status)

        obtained, coalesced = await self._flights.run(key, call_vendor)
        return obtained, "coalesced" if coalesced else "miss"

    def _record(self, event: str, outcome: str, audit: dict[str, Any], started: float) -> None:
        audit["outcome"] = outcome
        audit["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        audit_log.info(event, extra=audit)
        provider = audit["provider"] or "-"
        embed = audit["embed"] if audit["provider"] else "-"  # unknown names stay unbounded
        self._metrics.token_counter(provider, embed, outcome, audit["cache"]).inc()
