from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from limits import WindowStats, parse
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from app.config.models import LimitsConfig
from app.observability.metrics import Metrics
from app.state.ratelimit import UNLIMITED, InProcessWindowStorage, RateDecision, RateLimiter
from app.state.redis import RedisHealth
from tests.support.redis import RedisServer

pytestmark = pytest.mark.anyio

# Mid-window on a fixed clock: in-process tests never straddle a window boundary.
MID_MINUTE = 1_800_000_030.0


class FakeClock:
    def __init__(self, now: float = MID_MINUTE) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limiter(
    per_user: str | None = None,
    per_tenant: str | None = None,
    *,
    metrics: Metrics | None = None,
    clock: FakeClock | None = None,
) -> RateLimiter:
    return RateLimiter(
        LimitsConfig(per_user=per_user, per_tenant=per_tenant),
        redis=None,
        metrics=metrics,
        key_prefix="p:",
        clock=clock or FakeClock(),
    )


def refused(metrics: Metrics, scope: str) -> float | None:
    return metrics.registry.get_sample_value("token_broker_rate_limited_total", {"scope": scope})


class TestInProcess:
    async def test_no_limits_is_always_allowed_without_numbers(self) -> None:
        unlimited = limiter()
        assert not unlimited.enabled
        for _ in range(100):
            assert await unlimited.hit(user_key="alice", tenant_key="acme") == UNLIMITED
        assert UNLIMITED.allowed
        assert UNLIMITED.limit == 0

    async def test_user_limit_counts_down_then_refuses(self, metrics: Metrics) -> None:
        rl = limiter("3/minute", metrics=metrics)
        decisions = [await rl.hit(user_key="alice", tenant_key="acme") for _ in range(3)]
        assert [d.allowed for d in decisions] == [True, True, True]
        assert [d.remaining for d in decisions] == [2, 1, 0]
        assert {d.limit for d in decisions} == {3}
        assert all(d.scope is None for d in decisions)

        refusal = await rl.hit(user_key="alice", tenant_key="acme")
        assert refusal == RateDecision(
            allowed=False, scope="user", limit=3, remaining=0, reset_after=refusal.reset_after
        )
        assert 0 < refusal.reset_after <= 60
        assert refused(metrics, "user") == 1
        assert (await rl.hit(user_key="bob", tenant_key="acme")).allowed

    async def test_tenant_limit_is_shared_by_its_users(self, metrics: Metrics) -> None:
        rl = limiter("100/minute", "3/minute", metrics=metrics)
        for user in ("a", "b", "c"):
            assert (await rl.hit(user_key=user, tenant_key="acme")).allowed
        refusal = await rl.hit(user_key="d", tenant_key="acme")
        assert (refusal.allowed, refusal.scope, refusal.limit) == (False, "tenant", 3)
        assert refused(metrics, "tenant") == 1
        assert refused(metrics, "user") == 0  # present from start-up
        assert (await rl.hit(user_key="d", tenant_key="globex")).allowed

    async def test_a_user_refusal_does_not_drain_the_tenant(self) -> None:
        rl = limiter("1/minute", "2/minute")
        assert (await rl.hit(user_key="a", tenant_key="acme")).allowed
        for _ in range(5):
            assert (await rl.hit(user_key="a", tenant_key="acme")).scope == "user"
        assert (await rl.hit(user_key="b", tenant_key="acme")).allowed
        assert (await rl.hit(user_key="c", tenant_key="acme")).scope == "tenant"

    async def test_headers_show_the_tightest_limit(self) -> None:
        rl = limiter("10/minute", "3/minute")
        decision = await rl.hit(user_key="a", tenant_key="acme")
        assert (decision.limit, decision.remaining) == (3, 2)
        assert 0 < decision.reset_after <= 60
        other = limiter("2/minute", "30/minute")
        decision = await other.hit(user_key="a", tenant_key="acme")
        assert (decision.limit, decision.remaining) == (2, 1)

    async def test_the_window_slides(self) -> None:
        clock = FakeClock()
        rl = limiter("2/minute", clock=clock)
        for _ in range(2):
            assert (await rl.hit(user_key="a", tenant_key="t")).allowed
        assert not (await rl.hit(user_key="a", tenant_key="t")).allowed
        clock.now += 120  # two windows later nothing of those hits is left
        assert (await rl.hit(user_key="a", tenant_key="t")).allowed

    async def test_reconfigure(self) -> None:
        rl = limiter("1/minute")
        assert (await rl.hit(user_key="a", tenant_key="t")).allowed
        assert not (await rl.hit(user_key="a", tenant_key="t")).allowed
        rl.configure(LimitsConfig())
        assert (await rl.hit(user_key="a", tenant_key="t")) == UNLIMITED


class TestInProcessWindowStorage:
    async def test_fast_path_matches_the_limits_strategy(self) -> None:
        clock = FakeClock()
        fast = InProcessWindowStorage(clock=clock)
        reference = SlidingWindowCounterRateLimiter(InProcessWindowStorage(clock=clock))
        item = parse("7/minute")
        rng = random.Random(6)
        for _ in range(400):
            clock.now += rng.choice([0.0, 0.5, 3.0, 11.0, 29.0])
            allowed, remaining, reset_after = fast.hit_now("k", 7, 60)
            assert allowed == await reference.hit(item, "k")
            stats = await reference.get_window_stats(item, "k")
            assert remaining == stats.remaining
            assert reset_after == pytest.approx(stats.reset_time - time.time(), abs=0.05)

    async def test_expired_counters_are_purged(self) -> None:
        clock = FakeClock()
        storage = InProcessWindowStorage(clock=clock)
        for i in range(1000):
            assert await storage.acquire_sliding_window_entry(f"k{i}", 5, 60)
        assert len(storage) == 1000
        clock.now += 121
        assert await storage.acquire_sliding_window_entry("fresh", 5, 60)
        assert len(storage) == 1

    async def test_counter_operations(self) -> None:
        clock = FakeClock()
        storage = InProcessWindowStorage(clock=clock)
        assert await storage.incr("k", 10) == 1
        assert await storage.incr("k", 10, amount=2) == 3
        assert await storage.get("k") == 3
        assert await storage.get_expiry("k") == clock.now + 10
        clock.now += 10
        assert await storage.get("k") == 0
        assert await storage.incr("k", 10) == 1
        await storage.clear("k")
        assert await storage.get("k") == 0
        assert await storage.check()
        assert not await storage.acquire_sliding_window_entry("k", 1, 10, amount=2)
        await storage.incr("x", 10)
        assert await storage.reset() == 1


@pytest.mark.redis
@contextlib.asynccontextmanager
async def limiter_counted_once_on_redis(
    server: RedisServer, metrics: Metrics
) -> AsyncIterator[tuple[RedisHealth, RateLimiter]]:
    """A limiter of 2 a day per user on ``server``, with user ``a`` counted once there."""
    health = RedisHealth(server.url, metrics=metrics, prefix="p:", probe_interval=60)
    await health.start()
    try:
        rl = RateLimiter(
            LimitsConfig(per_user="2/day"), redis=health, metrics=metrics, key_prefix="p:"
        )
        assert (await rl.hit(user_key="a", tenant_key="t")).remaining == 1
        yield health, rl
    finally:
        await health.aclose()


def rate_limit_redis_errors(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value(
        "token_broker_redis_errors_total", {"operation": "rate_limit"}
    )


class TestRedis:
    @pytest.fixture
    async def health(self, redis_url: str, redis_prefix: str) -> AsyncIterator[RedisHealth]:
        health = RedisHealth(redis_url, metrics=None, prefix=redis_prefix)
        await health.start()
        yield health
        await health.aclose()

    @pytest.fixture
    async def second_health(self, redis_url: str, redis_prefix: str) -> AsyncIterator[RedisHealth]:
        health = RedisHealth(redis_url, metrics=None, prefix=redis_prefix)
        await health.start()
        yield health
        await health.aclose()

    @staticmethod
    def shared(
        health: RedisHealth, per_user: str | None, per_tenant: str | None = None
    ) -> RateLimiter:
        # Per day: a test never straddles a window boundary (except at midnight UTC).
        return RateLimiter(
            LimitsConfig(per_user=per_user, per_tenant=per_tenant),
            redis=health,
            metrics=None,
            key_prefix=health.prefix,
        )

    async def test_two_replicas_share_counts(
        self, health: RedisHealth, second_health: RedisHealth
    ) -> None:
        first, second = self.shared(health, "3/day"), self.shared(second_health, "3/day")
        assert (await first.hit(user_key="alice", tenant_key="acme")).remaining == 2
        assert (await second.hit(user_key="alice", tenant_key="acme")).remaining == 1
        assert (await first.hit(user_key="alice", tenant_key="acme")).remaining == 0
        refusal = await second.hit(user_key="alice", tenant_key="acme")
        assert (refusal.allowed, refusal.scope, refusal.limit) == (False, "user", 3)
        assert refusal.reset_after > 0

    async def test_first_hit_of_a_window_reports_a_positive_reset(
        self, health: RedisHealth
    ) -> None:
        # limits reports a reset of "now" when its stats are read in the same instant as
        # the window's first hit (TTL modulo window = 0); pin that case down.
        rl = self.shared(health, "2/minute")
        assert rl._shared is not None

        async def stats_at_window_start(*_: object) -> WindowStats:
            return WindowStats(reset_time=time.time(), remaining=1)

        rl._shared.get_window_stats = stats_at_window_start  # type: ignore[method-assign,assignment]
        decision = await rl.hit(user_key="fresh", tenant_key="acme")
        assert decision.reset_after == 60

    async def test_tenant_scope_over_redis(self, health: RedisHealth) -> None:
        rl = self.shared(health, "50/day", "2/day")
        assert (await rl.hit(user_key="a", tenant_key="acme")).allowed
        assert (await rl.hit(user_key="b", tenant_key="acme")).allowed
        assert (await rl.hit(user_key="c", tenant_key="acme")).scope == "tenant"

    async def test_key_names_carry_no_ids(
        self, health: RedisHealth, redis_url: str, redis_prefix: str
    ) -> None:
        rl = self.shared(health, "5/day", "50/day")
        await rl.hit(user_key="alice@acme.test", tenant_key="acme-corp")
        raw = redis.asyncio.Redis.from_url(redis_url)
        try:
            names = [name async for name in raw.scan_iter(match=f"{redis_prefix}*")]
        finally:
            await raw.aclose()
        assert len(names) == 2  # one counter per limit: the limits really live in Redis
        for name in names:
            assert b"alice" not in name
            assert b"acme" not in name

    async def test_a_closed_transport_mid_failover_falls_back_too(
        self, private_redis: RedisServer, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Seen in the Sentinel failover test under uvloop: redis-py reconnecting to the
        # old master wrote to a transport uvloop had closed, which raises RuntimeError
        # (not a RedisError); the request was answered 500 internal_error.
        async with limiter_counted_once_on_redis(private_redis, metrics) as (health, rl):

            async def closed_transport(*args: object, **kwargs: object) -> object:
                raise RuntimeError(
                    "unable to perform operation on <TCPTransport closed=True reading=False>; "
                    "the handler is closed"
                )

            monkeypatch.setattr(health.client, "execute_command", closed_transport)
            decision = await rl.hit(user_key="a", tenant_key="t")
            assert decision.allowed  # the in-process limiter, counting from zero
            assert rate_limit_redis_errors(metrics) == 1

    async def test_outage_falls_back_to_in_process_limits(
        self, private_redis: RedisServer, metrics: Metrics
    ) -> None:
        async with limiter_counted_once_on_redis(private_redis, metrics) as (health, rl):
            private_redis.stop(kill=True)
            # The in-process limiter starts counting from zero: looser, never an error.
            after = [await rl.hit(user_key="a", tenant_key="t") for _ in range(3)]
            assert [d.allowed for d in after] == [True, True, False]
            assert not health.available
            assert rate_limit_redis_errors(metrics) == 1
