"""Per-user and per-tenant rate limits (operations.md "Rate limits").

The `limits` library's sliding-window-counter strategy does the counting, over its
Redis storage when Redis is configured (limits hold across replicas; the storage uses
the process's one Redis client, whatever its topology: :class:`SharedClientStorage`) and over :class:`InProcessWindowStorage` otherwise,
or while Redis is unavailable (then each replica counts on its own: limits are looser
during an outage, never stricter).

Why :class:`InProcessWindowStorage` instead of ``limits.aio.storage.MemoryStorage``: the
library's storage rescans *every* key in a background task after each hit; measured
here at 100,000 active users that is ~2.2 ms of blocked event loop per request, which
alone breaks the S3 latency target. Ours expires keys from a heap (O(log n) per hit)
and has no await points, so a hit is also atomic. In-process decisions go through its
:meth:`~InProcessWindowStorage.hit_now` (the strategy's arithmetic in one step, ~12 µs
for both limits instead of ~48 µs through the strategy object: S1 has little room).

Keys are hashed before they reach any storage: no user or tenant id appears in a
Redis key name (with ``key_secret`` the hash is keyed, so ids can't be guessed back).

Order of a decision: the user's limit is hit first; when it refuses, the tenant's count
is left alone (one user hammering doesn't drain the tenant). When the tenant refuses,
the user's hit has been counted: a refused request still counts against its user.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from math import floor, inf
from typing import TYPE_CHECKING, Any

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage, SlidingWindowCounterSupport, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage.base import TimestampedSlidingWindow
from pydantic import SecretStr

from app.config.models import LimitsConfig
from app.observability.metrics import Metrics

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

    from app.state.redis import RedisHealth

SCOPE_USER = "user"
SCOPE_TENANT = "tenant"


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The outcome of one hit, with the numbers for the ``RateLimit-*`` headers.

    ``limit == 0`` means no limit is configured: send no ``RateLimit-*`` headers.
    On refusal the numbers are those of the refusing ``scope`` (``remaining == 0`` and
    ``reset_after`` is the estimated wait, for ``Retry-After``); when allowed they are
    those of the applied limit with the fewest hits left.
    """

    allowed: bool
    scope: str | None
    """``"user"`` or ``"tenant"``: which limit refused; None when allowed."""
    limit: int
    remaining: int
    reset_after: float
    """Seconds until the window frees capacity again."""

    @classmethod
    def refused(cls, scope: str, limit: int, reset_after: float) -> RateDecision:
        return cls(allowed=False, scope=scope, limit=limit, remaining=0, reset_after=reset_after)


UNLIMITED = RateDecision(allowed=True, scope=None, limit=0, remaining=0, reset_after=0.0)


class InProcessWindowStorage(Storage, SlidingWindowCounterSupport, TimestampedSlidingWindow):
    """In-process counters for the sliding-window-counter strategy, expired from a heap."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ()

    def __len__(self) -> int:
        return len(self._counts)

    def _purge(self, now: float) -> None:
        heap, expires = self._heap, self._expires
        while heap and heap[0][0] <= now:
            expiry, key = heapq.heappop(heap)
            if expires.get(key) == expiry:
                del expires[key]
                del self._counts[key]

    def _get(self, key: str, now: float) -> int:
        expiry = self._expires.get(key)
        if expiry is None or expiry <= now:
            return 0
        return self._counts[key]

    def _incr(self, key: str, expiry: float, amount: int, now: float) -> int:
        self._purge(now)
        if key in self._counts:
            self._counts[key] += amount
            return self._counts[key]
        expires_at = now + expiry
        self._counts[key] = amount
        self._expires[key] = expires_at
        heapq.heappush(self._heap, (expires_at, key))
        return amount

    def _window(self, key: str, expiry: int, now: float) -> tuple[int, float, int, float, str]:
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        previous_count = self._get(previous_key, now)
        current_count = self._get(current_key, now)
        previous_ttl = (
            0.0 if previous_count == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        )
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous_count, previous_ttl, current_count, current_ttl, current_key

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self._incr(key, expiry, amount, self._clock())

    async def get(self, key: str) -> int:
        return self._get(key, self._clock())

    async def get_expiry(self, key: str) -> float:
        return self._expires.get(key, self._clock())

    async def check(self) -> bool:
        return True

    async def reset(self) -> int | None:
        count = len(self._counts)
        self._counts.clear()
        self._expires.clear()
        self._heap.clear()
        return count

    async def clear(self, key: str) -> None:
        self._counts.pop(key, None)
        self._expires.pop(key, None)

    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        if amount > limit:
            return False
        now = self._clock()
        previous_count, previous_ttl, current_count, _, current_key = self._window(key, expiry, now)
        if floor(previous_count * previous_ttl / expiry + current_count) + amount > limit:
            return False
        # Twice the window: the counter must outlive its own window to be the "previous".
        self._incr(current_key, 2 * expiry, amount, now)
        return True

    def hit_now(self, key: str, limit: int, expiry: int) -> tuple[bool, int, float]:
        """One hit and its window stats in one step: ``(allowed, remaining, reset_after)``.

        The same arithmetic as limits' ``SlidingWindowCounterRateLimiter.hit`` followed by
        ``get_window_stats`` (a test holds them equal), without the strategy's
        per-call key building and two extra storage round trips: this runs on every
        token request, cache hits included.
        """
        now = self._clock()
        previous_count, previous_ttl, current_count, current_ttl, current_key = self._window(
            key, expiry, now
        )
        weighted = previous_count * previous_ttl / expiry + current_count
        allowed = floor(weighted) + 1 <= limit
        if allowed:
            current_count = self._incr(current_key, 2 * expiry, 1, now)
            weighted += 1
        remaining = max(0, limit - floor(weighted))
        reset_after = inf
        if previous_count:
            reset_after = previous_ttl % (expiry / previous_count)
        if current_count:
            reset_after = min(reset_after, current_ttl % expiry)
        return allowed, remaining, 0.0 if reset_after == inf else reset_after

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        previous_count, previous_ttl, current_count, current_ttl, _ = self._window(
            key, expiry, self._clock()
        )
        return previous_count, previous_ttl, current_count, current_ttl

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        previous_key, current_key = self.sliding_window_keys(key, expiry, self._clock())
        await self.clear(previous_key)
        await self.clear(current_key)


class SharedClientStorage(RedisStorage):
    """limits' Redis storage over the process's own redis-py client.

    limits would build a second client (and pool) from a URI; this one shares the
    broker's, so a single node, a Cluster and Sentinel all work the same way and one
    shutdown closes everything. ``configure_bridge`` is the hook limits' own cluster and
    Sentinel storages override to choose their client. The sliding-window keys carry
    limits' own hash tag (``{key}`` and ``{key}/-1``), so its Lua scripts stay within
    one Cluster slot.
    """

    def __init__(self, client: Redis | RedisCluster, *, key_prefix: str) -> None:
        self._shared_client = client
        super().__init__("async+redis://", implementation="redispy", key_prefix=key_prefix)

    def configure_bridge(self) -> None:
        client = self._shared_client
        bridge: Any = self.bridge
        bridge.storage = client
        bridge.connection_getter = lambda _readonly: client


def _key_hasher(secret: SecretStr | str | bytes | None) -> Callable[[str, str], str]:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    if isinstance(secret, str):
        secret = secret.encode()
    key = hashlib.sha256(b"token-broker/rate-limit-key/v1" + (secret or b"")).digest()

    def hash_identifier(scope: str, identifier: str) -> str:
        data = f"{scope}\x00{identifier}".encode()
        return hashlib.blake2b(data, key=key, digest_size=16).hexdigest()

    return hash_identifier


class RateLimiter:
    """One hit per token request against ``limits.per_user`` and ``limits.per_tenant``."""

    def __init__(
        self,
        limits: LimitsConfig,
        *,
        redis: RedisHealth | None,
        metrics: Metrics | None,
        key_prefix: str,
        key_secret: SecretStr | str | bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._hash = _key_hasher(key_secret)
        self._local = InProcessWindowStorage(clock=clock)
        self._shared: SlidingWindowCounterRateLimiter | None = None
        if redis is not None:
            storage = SharedClientStorage(redis.client, key_prefix=key_prefix + "rl")
            self._shared = SlidingWindowCounterRateLimiter(storage)
        self._rules: tuple[tuple[str, RateLimitItem], ...] = ()
        self.configure(limits)

    def configure(self, limits: LimitsConfig) -> None:
        """Apply new limits (policy reload); counts of unchanged limits carry on."""
        rules = [(SCOPE_USER, limits.per_user), (SCOPE_TENANT, limits.per_tenant)]
        self._rules = tuple((scope, parse(rate)) for scope, rate in rules if rate)

    @property
    def enabled(self) -> bool:
        return bool(self._rules)

    async def hit(self, *, user_key: str, tenant_key: str) -> RateDecision:
        """Count one token request; see :class:`RateDecision` for what comes back."""
        rules = self._rules
        if not rules:
            return UNLIMITED
        keys = {SCOPE_USER: user_key, SCOPE_TENANT: tenant_key}
        identifiers = {scope: self._hash(scope, keys[scope]) for scope, _ in rules}
        decision: RateDecision | None = None
        if self._shared is not None and self._redis is not None and self._redis.available:
            try:
                decision = await self._decide_shared(self._shared, rules, identifiers)
            except self._redis.errors as exc:
                self._redis.report_failure("rate_limit", exc)
        if decision is None:
            decision = self._decide_in_process(rules, identifiers)
        if not decision.allowed and self._metrics is not None:
            self._metrics.rate_limited_total.labels(scope=decision.scope).inc()
        return decision

    def _decide_in_process(
        self, rules: tuple[tuple[str, RateLimitItem], ...], identifiers: dict[str, str]
    ) -> RateDecision:
        tightest = UNLIMITED
        for scope, item in rules:
            expiry = item.get_expiry()
            key = f"{scope}/{item.amount}/{expiry}/{identifiers[scope]}"
            allowed, remaining, reset_after = self._local.hit_now(key, item.amount, expiry)
            if not allowed:
                return RateDecision.refused(scope, item.amount, reset_after)
            if tightest is UNLIMITED or remaining < tightest.remaining:
                tightest = RateDecision(
                    allowed=True,
                    scope=None,
                    limit=item.amount,
                    remaining=remaining,
                    reset_after=reset_after,
                )
        return tightest

    async def _decide_shared(
        self,
        limiter: SlidingWindowCounterRateLimiter,
        rules: tuple[tuple[str, RateLimitItem], ...],
        identifiers: dict[str, str],
    ) -> RateDecision:
        tightest = UNLIMITED
        for scope, item in rules:
            identifier = identifiers[scope]
            allowed = await limiter.hit(item, scope, identifier)
            stats = await limiter.get_window_stats(item, scope, identifier)
            # limits stamps reset_time with time.time(), whatever clock the storage uses.
            reset_after = max(0.0, stats.reset_time - time.time())
            if reset_after <= 0.0:
                # Read in the same instant as the window's first hit, limits' TTL modulo
                # the window is 0; the honest answer is a whole window.
                reset_after = float(item.get_expiry())
            if not allowed:
                return RateDecision.refused(scope, item.amount, reset_after)
            if tightest is UNLIMITED or stats.remaining < tightest.remaining:
                tightest = RateDecision(
                    allowed=True,
                    scope=None,
                    limit=item.amount,
                    remaining=stats.remaining,
                    reset_after=reset_after,
                )
        return tightest
