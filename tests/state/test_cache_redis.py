"""RedisTokenCache against a real Redis (shared server, own prefix; private server for outages)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from app.observability.metrics import Metrics
from app.state.cache import CachedToken, MemoryTokenCache, RedisTokenCache, token_cache_key
from app.state.redis import RedisHealth
from tests.support.eventually import eventually_async
from tests.support.redis import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

SECRET = "s" * 32
OTHER_SECRET = "o" * 32
TOKEN_TEXT = "eyJhbGciOiJIUzI1NiJ9.vendor-token-for-alice"
BODY = {"user": "alice@acme.test", "securityContext": {"userId": "alice", "tenantId": "acme"}}


def fresh_token(lifetime: float = 600) -> CachedToken:
    now = time.time()
    return CachedToken(token=TOKEN_TEXT, issued_at=now, expires_at=now + lifetime)


def make_cache(health: RedisHealth, secret: str = SECRET) -> RedisTokenCache:
    return RedisTokenCache(health, encryption_secret=secret, local=MemoryTokenCache(100))


@pytest.fixture
async def health(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisHealth]:
    health = RedisHealth(redis_url, metrics=None, prefix=redis_prefix)
    await health.start()
    yield health
    await health.aclose()


@pytest.fixture
async def second_health(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisHealth]:
    """Another process's view: its own client and its own in-process cache."""
    health = RedisHealth(redis_url, metrics=None, prefix=redis_prefix)
    await health.start()
    yield health
    await health.aclose()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_two_instances_share_tokens(health: RedisHealth, second_health: RedisHealth) -> None:
    writer, reader = make_cache(health), make_cache(second_health)
    key = token_cache_key("embeddable", "eu", BODY)
    stored = fresh_token()
    await writer.put(key, stored)
    assert await reader.get(key) == stored
    assert await reader.get(token_cache_key("embeddable", "us", BODY)) is None


async def test_values_are_encrypted_and_keys_carry_no_user_data(
    health: RedisHealth, raw: redis.asyncio.Redis, redis_prefix: str
) -> None:
    cache = make_cache(health)
    key = token_cache_key("embeddable", "eu", BODY)
    await cache.put(key, fresh_token())
    names = [name async for name in raw.scan_iter(match=f"{redis_prefix}*")]
    assert names == [cache.redis_key(key).encode()]
    assert names[0].startswith(f"{redis_prefix}tok:{{".encode())  # the hash tag: fleet.py
    # The cache key is a plain hash of the body: anyone could compute it for a guessed
    # user and look for it. The name must be a keyed hash (the encryption secret's).
    for forbidden in (b"alice", b"acme", b"embeddable", key.encode()):
        assert forbidden not in names[0]
    assert make_cache(health, OTHER_SECRET).redis_key(key) != cache.redis_key(key)
    value = await raw.get(names[0])
    assert value is not None
    assert TOKEN_TEXT.encode() not in value
    assert b"vendor-token" not in value


async def test_entries_expire_with_the_token(health: RedisHealth, raw: redis.asyncio.Redis) -> None:
    cache = make_cache(health)
    key = token_cache_key("embeddable", "eu", BODY)
    await cache.put(key, fresh_token(lifetime=300))
    ttl_ms = await raw.pttl(cache.redis_key(key))
    assert 0 < ttl_ms <= 300_000


async def test_an_expired_token_is_not_written(
    health: RedisHealth, raw: redis.asyncio.Redis
) -> None:
    cache = make_cache(health)
    key = token_cache_key("embeddable", "eu", BODY)
    now = time.time()
    await cache.put(key, CachedToken(token=TOKEN_TEXT, issued_at=now - 20, expires_at=now - 10))
    assert await raw.exists(cache.redis_key(key)) == 0


async def test_a_tampered_value_is_a_miss(
    health: RedisHealth, second_health: RedisHealth, raw: redis.asyncio.Redis
) -> None:
    writer, reader = make_cache(health), make_cache(second_health)
    key = token_cache_key("embeddable", "eu", BODY)
    await writer.put(key, fresh_token())
    value = await raw.get(writer.redis_key(key))
    assert isinstance(value, bytes)
    flipped = value[:-1] + bytes([value[-1] ^ 1])
    await raw.set(writer.redis_key(key), flipped, px=60_000)
    assert await reader.get(key) is None
    await raw.set(writer.redis_key(key), b"short", px=60_000)
    assert await reader.get(key) is None


async def test_a_value_moved_to_another_key_is_a_miss(
    health: RedisHealth, second_health: RedisHealth, raw: redis.asyncio.Redis
) -> None:
    writer, reader = make_cache(health), make_cache(second_health)
    alice = token_cache_key("embeddable", "eu", BODY)
    mallory = token_cache_key("embeddable", "eu", {**BODY, "user": "mallory"})
    await writer.put(alice, fresh_token())
    value = await raw.get(writer.redis_key(alice))
    assert value is not None
    await raw.set(writer.redis_key(mallory), value, px=60_000)
    assert await reader.get(mallory) is None
    assert await reader.get(alice) is not None


async def test_a_different_secret_cannot_read(
    health: RedisHealth, second_health: RedisHealth
) -> None:
    key = token_cache_key("embeddable", "eu", BODY)
    await make_cache(health).put(key, fresh_token())
    assert await make_cache(second_health, OTHER_SECRET).get(key) is None


@pytest.mark.parametrize("secret", [None, "", "x" * 31])
async def test_a_short_or_missing_secret_is_refused_at_construction(
    health: RedisHealth, secret: str | None
) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes") as caught:
        make_cache(health, secret)  # type: ignore[arg-type]
    if secret:
        assert secret not in str(caught.value)


async def test_outage_falls_back_in_process_and_recovers(private_redis: RedisServer) -> None:
    metrics = Metrics.create(redis=True)
    health = RedisHealth(private_redis.url, metrics=metrics, prefix="p:", probe_interval=0.05)
    other = RedisHealth(private_redis.url, metrics=None, prefix="p:", probe_interval=0.05)
    await health.start()
    await other.start()
    try:
        cache, other_cache = make_cache(health), make_cache(other)
        before = token_cache_key("embeddable", "eu", {"user": "before"})
        during = token_cache_key("embeddable", "eu", {"user": "during"})
        after = token_cache_key("embeddable", "eu", {"user": "after"})
        await cache.put(before, fresh_token())

        private_redis.stop(kill=True)
        # Neither call raises: the first Redis error flips to the in-process cache.
        assert await other_cache.get(during) is None
        await cache.put(during, fresh_token())
        assert not health.available
        assert await cache.get(during) is not None
        assert await cache.get(before) is not None  # the near cache kept it
        assert metrics.registry.get_sample_value("token_broker_redis_available") == 0
        errors = metrics.registry.get_sample_value(
            "token_broker_redis_errors_total", {"operation": "cache_put"}
        )
        assert errors == 1
        assert health.status != "ok"

        private_redis.start()  # same port, empty
        await eventually_async(
            lambda: health.available and other.available, timeout=10, what="the probes to recover"
        )
        assert metrics.registry.get_sample_value("token_broker_redis_available") == 1
        assert health.status == "ok"
        await cache.put(after, fresh_token())
        assert await other_cache.get(after) is not None  # shared again
    finally:
        await health.aclose()
        await other.aclose()
