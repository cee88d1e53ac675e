"""Everything the process holds while it serves, created by the lifespan in ``app.main``.

:class:`Runtime` lives for the whole process: the HTTP client, metrics, JWKS caches,
Redis, the token cache, rate-limit counters, circuit breakers. Everything derived from
one policy file is bundled into an immutable :class:`ActivePolicy`; a reload builds a
new one and swaps a single reference, so a request (which reads ``runtime.active``
once) sees either the old policy or the new one, never a mix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.auth import JwksStore, SessionVerifier
from app.config.models import PolicyConfig
from app.issuance import Obtained, TokenFlow
from app.observability.metrics import Metrics
from app.observability.tracing import NO_SPANS, Tracing
from app.outbound import outbound_description
from app.policy import Policy
from app.providers.base import AnyProvider
from app.providers.registry import provider_class
from app.resilience import VendorCaller
from app.settings import Settings
from app.state.cache import MemoryTokenCache, RedisTokenCache, TokenCache
from app.state.fleet import FleetSingleFlight
from app.state.ratelimit import RateLimiter
from app.state.redis import RedisHealth

log = logging.getLogger("token_broker.runtime")


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    """One validated policy file and everything built from it."""

    config: PolicyConfig
    policy: Policy
    verifier: SessionVerifier
    providers: Mapping[str, AnyProvider]
    loaded_at: float


@dataclass(eq=False)
class Runtime:
    settings: Settings
    http: httpx.AsyncClient
    """The one outbound client: every vendor and JWKS call (app.outbound)."""
    metrics: Metrics
    jwks: JwksStore
    redis: RedisHealth | None
    local_cache: MemoryTokenCache
    token_cache: TokenCache
    limiter: RateLimiter
    caller: VendorCaller
    flow: TokenFlow
    tracing: Tracing = field(default_factory=Tracing.off)
    active: ActivePolicy = field(init=False)
    started_at: float = field(default_factory=time.time)

    @classmethod
    async def start(
        cls,
        settings: Settings,
        config: PolicyConfig,
        http: httpx.AsyncClient,
        metrics: Metrics,
        tracing: Tracing | None = None,
    ) -> Runtime:
        """``http`` carries every outbound call; the caller owns (and closes) it."""
        redis: RedisHealth | None = None
        local_cache = MemoryTokenCache(config.cache.max_entries)
        token_cache: TokenCache = local_cache
        fleet: FleetSingleFlight[Obtained] | None = None
        if settings.redis_url is not None:
            redis = RedisHealth(
                settings.redis_url.get_secret_value(),
                metrics=metrics,
                prefix=settings.redis_key_prefix,
            )
            shared_cache = RedisTokenCache(
                redis, encryption_secret=settings.cache_encryption_key, local=local_cache
            )
            token_cache = shared_cache
            fleet = FleetSingleFlight(shared_cache, redis, metrics=metrics)
            await redis.start()
        limiter = RateLimiter(
            config.limits,
            redis=redis,
            metrics=metrics,
            key_prefix=settings.redis_key_prefix,
            key_secret=settings.cache_encryption_key,
        )
        caller = VendorCaller(metrics=metrics)
        runtime = cls(
            settings=settings,
            http=http,
            metrics=metrics,
            jwks=JwksStore(http, metrics),
            redis=redis,
            local_cache=local_cache,
            token_cache=token_cache,
            limiter=limiter,
            caller=caller,
            flow=TokenFlow(
                cache=token_cache,
                caller=caller,
                limiter=limiter,
                metrics=metrics,
                fleet=fleet,
                spans=tracing.spans if tracing is not None else NO_SPANS,
            ),
            tracing=tracing if tracing is not None else Tracing.off(),
        )
        runtime.active = await runtime.build(config)
        metrics.prepare(config)
        return runtime

    async def build(self, config: PolicyConfig) -> ActivePolicy:
        """Everything a policy file implies; started, but not yet in force."""
        if config.forwarded_unknown_fields:
            # Once per load: these reach the vendor unchecked (allow_unknown_fields).
            log.warning(
                "config.unknown_fields_forwarded",
                extra={"fields": list(config.forwarded_unknown_fields)},
            )
        verifier = SessionVerifier(config.session, self.jwks, metrics=self.metrics)
        await verifier.start()
        providers = {
            name: provider_class(block.type)(name, block, http_client=self.http)
            for name, block in config.providers.items()
        }
        return ActivePolicy(
            config=config,
            policy=Policy(config),
            verifier=verifier,
            providers=providers,
            loaded_at=time.time(),
        )

    def activate(self, active: ActivePolicy) -> None:
        """Put a built policy in force (one reference swap)."""
        self.limiter.configure(active.config.limits)
        self.local_cache.resize(active.config.cache.max_entries)
        self.metrics.prepare(active.config)
        self.active = active

    async def aclose(self) -> None:
        await self.jwks.aclose()
        if self.redis is not None:
            await self.redis.aclose()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {"config": "ok"}
        missing = self.active.verifier.not_ready()
        checks["jwks"] = {
            issuer.issuer: ("no keys yet" if issuer.issuer in missing else "ok")
            for issuer in self.active.config.session.issuers
            if issuer.secret is None
        }
        # A Redis outage degrades to in-process state; it must not take every replica
        # out of the load balancer (operations.md), so it is reported, not failed.
        checks["redis"] = self.redis.status if self.redis is not None else "not configured"
        # Which proxy (never its credentials) and transport carry vendor and JWKS calls.
        checks["outbound"] = outbound_description(self.http)
        return not missing, checks
