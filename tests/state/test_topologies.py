"""The token cache and the rate limits on a real Redis Cluster and behind real Sentinels
(operations.md "Fleet mode": the same broker on managed Redis in either form)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from app.config.models import LimitsConfig
from app.state.cache import CachedToken, MemoryTokenCache, RedisTokenCache, token_cache_key
from app.state.ratelimit import RateLimiter
from app.state.redis import RedisHealth
from tests.support.redis import unique_prefix
from tests.support.redis_topologies import ClusterSetup, SentinelSetup

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.slow]

SECRET = "topology-test-encryption-secret-0123456789"


@pytest.fixture(params=["cluster", "sentinel"])
def topology_url(request: pytest.FixtureRequest) -> str:
    if request.param == "cluster":
        cluster: ClusterSetup = request.getfixturevalue("redis_cluster")
        return cluster.url
    sentinel: SentinelSetup = request.getfixturevalue("redis_sentinel")
    return sentinel.url


@pytest.fixture
async def two_replicas(topology_url: str) -> AsyncIterator[tuple[RedisHealth, RedisHealth]]:
    prefix = unique_prefix()
    first = RedisHealth(topology_url, metrics=None, prefix=prefix)
    second = RedisHealth(topology_url, metrics=None, prefix=prefix)
    for health in (first, second):
        await health.start()
    yield first, second
    for health in (first, second):
        await health.aclose()


async def test_replicas_share_encrypted_tokens(
    two_replicas: tuple[RedisHealth, RedisHealth],
) -> None:
    first, second = two_replicas
    assert first.available and second.available
    writer = RedisTokenCache(first, encryption_secret=SECRET, local=MemoryTokenCache(10))
    reader = RedisTokenCache(second, encryption_secret=SECRET, local=MemoryTokenCache(10))
    now = time.time()
    # Many keys, so that on the cluster they land on every node.
    stored = {}
    for number in range(30):
        key = token_cache_key("embeddable", "eu", {"user": f"u{number}"})
        stored[key] = CachedToken(f"vendor-token-{number}", now, now + 600)
        await writer.put(key, stored[key])
    for key, token in stored.items():
        assert await reader.get(key) == token
        raw = await second.client.get(reader.redis_key(key))
        assert isinstance(raw, bytes) and token.token.encode() not in raw
    assert first.available and second.available  # no operation failed on the way


async def test_replicas_share_rate_limits(two_replicas: tuple[RedisHealth, RedisHealth]) -> None:
    limiters = [
        RateLimiter(
            LimitsConfig(per_user="3/day", per_tenant="100/day"),
            redis=health,
            metrics=None,
            key_prefix=health.prefix,
        )
        for health in two_replicas
    ]
    first, second = limiters
    assert (await first.hit(user_key="alice", tenant_key="acme")).remaining == 2
    assert (await second.hit(user_key="alice", tenant_key="acme")).remaining == 1
    assert (await first.hit(user_key="alice", tenant_key="acme")).remaining == 0
    refusal = await second.hit(user_key="alice", tenant_key="acme")
    assert (refusal.allowed, refusal.scope) == (False, "user")
    assert all(health.available for health in two_replicas)  # counted in Redis, not locally
