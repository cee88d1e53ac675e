from __future__ import annotations

from types import MappingProxyType

import pytest

from app.state.cache import CachedToken, MemoryTokenCache, token_cache_key


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def token(name: str, *, issued_at: float = 1_000_000.0, lifetime: float = 600) -> CachedToken:
    return CachedToken(token=f"tok-{name}", issued_at=issued_at, expires_at=issued_at + lifetime)


BODY = {"embeddableId": "e1", "user": "alice", "securityContext": {"tenantId": "acme"}}


class TestCacheKey:
    def test_is_a_sha256_hex_digest(self) -> None:
        key = token_cache_key("embeddable", "eu", BODY)
        assert len(key) == 64
        assert int(key, 16) >= 0

    def test_key_order_and_mapping_type_do_not_matter(self) -> None:
        reordered = {"securityContext": {"tenantId": "acme"}, "user": "alice", "embeddableId": "e1"}
        assert token_cache_key("embeddable", "eu", BODY) == token_cache_key(
            "embeddable", "eu", reordered
        )
        assert token_cache_key("embeddable", "eu", BODY) == token_cache_key(
            "embeddable", "eu", MappingProxyType(BODY)
        )

    @pytest.mark.parametrize(
        ("provider", "region", "body", "ttl"),
        [
            ("databrain", "eu", BODY, None),
            ("embeddable", "us", BODY, None),
            ("embeddable", None, BODY, None),
            ("embeddable", "eu", {**BODY, "user": "bob"}, None),
            ("embeddable", "eu", {**BODY, "securityContext": {"tenantId": "globex"}}, None),
            ("embeddable", "eu", {**BODY, "securityContext": {"tenantId": ["acme"]}}, None),
            ("embeddable", "eu", {**BODY, "extra": None}, None),
            ("embeddable", "eu", BODY, 900),
        ],
    )
    def test_anything_the_vendor_would_see_differently_changes_the_key(
        self, provider: str, region: str | None, body: dict[str, object], ttl: int | None
    ) -> None:
        assert token_cache_key("embeddable", "eu", BODY) != token_cache_key(
            provider, region, body, ttl_seconds=ttl
        )

    def test_user_data_is_not_in_the_key(self) -> None:
        assert "alice" not in token_cache_key("embeddable", "eu", BODY)


class TestCachedToken:
    def test_remaining_ratio(self) -> None:
        cached = CachedToken(token="t", issued_at=100.0, expires_at=200.0)
        assert cached.remaining_ratio(100.0) == 1.0
        assert cached.remaining_ratio(175.0) == 0.25
        assert cached.remaining_ratio(250.0) == 0.0
        assert cached.remaining_ratio(50.0) == 1.0
        assert CachedToken(token="t", issued_at=5.0, expires_at=5.0).remaining_ratio(5.0) == 0.0

    def test_repr_hides_the_token(self) -> None:
        cached = CachedToken(token="secret-token", issued_at=1.0, expires_at=2.0)
        assert "secret-token" not in repr(cached)
        assert "secret-token" not in str(cached)
        assert "secret-token" not in f"{[cached]}"


def test_cached_entries_are_not_tracked_by_the_garbage_collector() -> None:
    """A full cache must add nothing to full collections (they stop the event loop)."""
    import gc

    clock = FakeClock()
    cache = MemoryTokenCache(1000, clock=clock)
    for n in range(100):
        cache.put_now(f"k{n}", token(str(n)))
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in cache._entries.values())
    found = cache.get_now("k7")
    assert found == token("7")
    assert isinstance(found, CachedToken)


class TestMemoryTokenCache:
    @pytest.mark.anyio
    async def test_round_trip(self) -> None:
        cache = MemoryTokenCache(10, clock=FakeClock())
        await cache.put("k", token("a"))
        assert await cache.get("k") == token("a")
        assert await cache.get("other") is None

    @pytest.mark.anyio
    async def test_bounded_by_max_entries_evicting_least_recently_used(self) -> None:
        cache = MemoryTokenCache(3, clock=FakeClock())
        for name in "abc":
            await cache.put(name, token(name))
        assert await cache.get("a") is not None  # "a" is now the most recently used
        await cache.put("d", token("d"))
        assert len(cache) == 3
        assert await cache.get("b") is None
        for name in "acd":
            assert await cache.get(name) == token(name)

    @pytest.mark.anyio
    async def test_many_puts_never_exceed_the_bound(self) -> None:
        cache = MemoryTokenCache(100, clock=FakeClock())
        for i in range(1000):
            await cache.put(f"k{i}", token(str(i)))
        assert len(cache) == 100
        assert await cache.get("k999") is not None
        assert await cache.get("k899") is None

    @pytest.mark.anyio
    async def test_replacing_a_key_keeps_one_entry(self) -> None:
        cache = MemoryTokenCache(3, clock=FakeClock())
        await cache.put("k", token("old"))
        await cache.put("k", token("new"))
        assert len(cache) == 1
        assert await cache.get("k") == token("new")

    @pytest.mark.anyio
    async def test_expired_entries_are_misses_and_dropped(self) -> None:
        clock = FakeClock()
        cache = MemoryTokenCache(10, clock=clock)
        await cache.put("k", token("a", lifetime=60))
        clock.now += 59
        assert await cache.get("k") is not None
        clock.now += 1
        assert await cache.get("k") is None
        assert len(cache) == 0

    @pytest.mark.anyio
    async def test_an_already_expired_token_is_not_stored(self) -> None:
        clock = FakeClock()
        cache = MemoryTokenCache(10, clock=clock)
        await cache.put("k", token("a", issued_at=clock.now - 100, lifetime=100))
        assert len(cache) == 0

    @pytest.mark.anyio
    async def test_dead_least_recently_used_entries_are_dropped_on_put(self) -> None:
        clock = FakeClock()
        cache = MemoryTokenCache(10, clock=clock)
        await cache.put("short", token("s", lifetime=10))
        await cache.put("long", token("l", lifetime=1000))
        clock.now += 20
        await cache.put("new", token("n", issued_at=clock.now))
        assert len(cache) == 2
        assert await cache.get("long") is not None

    @pytest.mark.anyio
    async def test_resize_keeps_the_most_recent(self) -> None:
        cache = MemoryTokenCache(5, clock=FakeClock())
        for name in "abcde":
            await cache.put(name, token(name))
        cache.resize(2)
        assert len(cache) == 2
        assert await cache.get("d") is not None
        assert await cache.get("e") is not None
        assert await cache.get("a") is None

    def test_rejects_a_zero_bound(self) -> None:
        with pytest.raises(ValueError, match="max_entries"):
            MemoryTokenCache(0)
