"""Fleet-wide single-flight against real Redis: one node, a 3-node Cluster, Sentinel.

Each "replica" here is what a broker process holds: its own Redis client, its own
in-process cache and its own :class:`FleetSingleFlight`. The processes-and-HTTP version
of the same claims is tests/integration/test_fleet.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from redis.crc import key_slot

from app.errors import BrokerError, MissingClaim, UpstreamRejected, UpstreamUnavailable
from app.observability.metrics import Metrics
from app.state.cache import CachedToken, MemoryTokenCache, RedisTokenCache, token_cache_key
from app.state.fleet import FleetSingleFlight, decode_error, encode_error
from app.state.redis import RedisHealth
from tests.support.eventually import eventually_async
from tests.support.redis import RedisServer, unique_prefix
from tests.support.redis_topologies import ClusterSetup, SentinelSetup
from tests.support.servers import LOOPBACK, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

SECRET = "fleet-test-encryption-secret-0123456789"
DEADLINE_SECONDS = 2.0
REPLICAS = 3


@pytest.fixture(
    params=[
        "single",
        pytest.param("cluster", marks=pytest.mark.slow),
        pytest.param("sentinel", marks=pytest.mark.slow),
    ]
)
def topology_url(request: pytest.FixtureRequest) -> str:
    if request.param == "cluster":
        cluster: ClusterSetup = request.getfixturevalue("redis_cluster")
        return cluster.url
    if request.param == "sentinel":
        sentinel: SentinelSetup = request.getfixturevalue("redis_sentinel")
        return sentinel.url
    url: str = request.getfixturevalue("redis_url")
    request.getfixturevalue("redis_prefix")  # the shared server: clean up after
    return url


@dataclass
class Replica:
    health: RedisHealth
    cache: RedisTokenCache
    fleet: FleetSingleFlight[CachedToken]
    metrics: Metrics

    def role_count(self, role: str) -> float:
        assert self.metrics.fleet_flights_total is not None
        value = self.metrics.fleet_flights_total.labels(role=role)._value.get()
        return float(value)


@dataclass
class Vendor:
    """Counts mint calls; each waits for ``gate`` and then succeeds or fails."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    calls: int = 0
    error: BrokerError | None = None
    lifetime: float = 600.0

    def mint_for(self, replica: Replica, key: str) -> Callable[[], Awaitable[CachedToken]]:
        async def mint() -> CachedToken:
            self.calls += 1
            number = self.calls
            await self.gate.wait()
            if self.error is not None:
                raise self.error
            now = time.time()
            token = CachedToken(f"vendor-token-{number}", now, now + self.lifetime)
            await replica.cache.put(key, token)
            return token

        return mint


def fresh(token: CachedToken) -> bool:
    return token.remaining_ratio(time.time()) >= 0.5


@pytest.fixture
async def replicas(topology_url: str, redis_prefix_any: str) -> AsyncIterator[list[Replica]]:
    made = []
    for _ in range(REPLICAS):
        metrics = Metrics.create(redis=True)
        health = RedisHealth(topology_url, metrics=metrics, prefix=redis_prefix_any)
        await health.start()
        cache = RedisTokenCache(health, encryption_secret=SECRET, local=MemoryTokenCache(100))
        made.append(
            Replica(health, cache, FleetSingleFlight(cache, health, metrics=metrics), metrics)
        )
    yield made
    for replica in made:
        await replica.health.aclose()


@pytest.fixture
def redis_prefix_any() -> str:
    return unique_prefix()


Outcome = tuple[CachedToken, bool]
"""The token and whether it was shared by another replica's call."""


async def run(replica: Replica, vendor: Vendor, key: str) -> Outcome:
    return await replica.fleet.run(
        key,
        deadline_seconds=DEADLINE_SECONDS,
        fresh=fresh,
        mint=vendor.mint_for(replica, key),
        adopt=lambda token: token,
    )


def new_key(name: str) -> str:
    return token_cache_key("embeddable", "eu", {"user": name, "at": time.monotonic_ns()})


async def leader_in_call_followers_waiting(
    leader: Replica, followers: list[Replica], vendor: Vendor, key: str
) -> tuple[asyncio.Task[Outcome], list[asyncio.Task[Outcome]]]:
    """The leader's miss reaches the (gated) vendor; then every follower's miss on the
    same key waits for it. The tasks, for the test to open the gate, cancel or kill."""
    first = asyncio.create_task(run(leader, vendor, key))
    await eventually_async(lambda: vendor.calls == 1, what="the leader calls the vendor")
    waiting = [asyncio.create_task(run(replica, vendor, key)) for replica in followers]
    await eventually_async(
        lambda: all(replica.fleet.following == 1 for replica in followers),
        what="followers wait",
    )
    return first, waiting


async def test_identical_misses_on_every_replica_make_one_vendor_call(
    replicas: list[Replica],
) -> None:
    vendor, key = Vendor(), new_key("herd")
    leader, *followers = replicas
    first, waiting = await leader_in_call_followers_waiting(leader, followers, vendor, key)
    vendor.gate.set()

    minted, shared = await first
    assert not shared
    for task in waiting:
        assert await task == (minted, True)
    assert vendor.calls == 1
    assert [r.role_count("leader") for r in replicas] == [1, 0, 0]
    assert [r.role_count("follower") for r in replicas] == [0, 1, 1]


async def test_a_vendor_error_reaches_every_waiter_and_nothing_is_cached(
    replicas: list[Replica],
) -> None:
    vendor, key = Vendor(), new_key("error")
    vendor.error = UpstreamRejected(
        "embeddable rejected the token request (bad filter)",
        upstream_status=400,
        upstream_code=None,
    )
    leader, *followers = replicas
    first, waiting = await leader_in_call_followers_waiting(leader, followers, vendor, key)
    vendor.gate.set()

    outcomes = await asyncio.gather(first, *waiting, return_exceptions=True)
    assert vendor.calls == 1
    for outcome in outcomes:
        assert isinstance(outcome, UpstreamRejected)
        assert outcome.detail == vendor.error.detail
        assert outcome.extra == {"upstream_status": 400, "upstream_code": None}
    for replica in replicas:
        assert await replica.cache.get(key) is None
    # A later request is a new flight: it calls the vendor, never replays the error.
    vendor.error = None
    token, shared = await run(followers[0], vendor, key)
    assert (vendor.calls, shared) == (2, False)
    assert token.token == "vendor-token-2"


async def test_a_lock_whose_holder_vanished_expires_and_exactly_one_waiter_takes_over(
    replicas: list[Replica],
) -> None:
    vendor, key = Vendor(), new_key("vanished")
    vendor.gate.set()
    # A replica that took the lock and died: nobody will release it.
    lock = replicas[0].cache.related_key("lock", key)
    assert await replicas[0].health.client.set(lock, b"dead-replica", px=500)

    outcomes = await asyncio.gather(*(run(replica, vendor, key) for replica in replicas))

    assert vendor.calls == 1
    assert len({token for token, _ in outcomes}) == 1
    assert sorted(shared for _, shared in outcomes) == [False, True, True]
    assert sum(r.role_count("takeover") for r in replicas) == 1
    assert sum(r.role_count("follower") for r in replicas) == 2


async def test_a_cancelled_leader_releases_the_lock_for_a_follower(
    replicas: list[Replica],
) -> None:
    vendor, key = Vendor(), new_key("cancelled")
    leader, follower, _ = replicas
    first, (waiting,) = await leader_in_call_followers_waiting(leader, [follower], vendor, key)
    first.cancel()
    await eventually_async(lambda: vendor.calls == 2, what="the follower takes over")
    vendor.gate.set()
    token, shared = await waiting
    assert (token.token, shared) == ("vendor-token-2", False)
    assert follower.role_count("takeover") == 1


async def test_a_stale_token_in_redis_is_not_handed_to_waiters(replicas: list[Replica]) -> None:
    vendor, key = Vendor(), new_key("stale")
    now = time.time()
    await replicas[0].cache.put(key, CachedToken("old-token", now - 590, now + 10))
    vendor.gate.set()
    outcomes = await asyncio.gather(*(run(replica, vendor, key) for replica in replicas))
    assert vendor.calls == 1
    assert {token.token for token, _ in outcomes} == {"vendor-token-1"}


async def test_value_lock_and_error_keys_share_one_hash_slot(replicas: list[Replica]) -> None:
    cache = replicas[0].cache
    for name in ("a", "b", "c"):
        key = new_key(name)
        slots = {
            key_slot(cache.redis_key(key).encode()),
            key_slot(cache.related_key("lock", key).encode()),
            key_slot(cache.related_key("err", key).encode()),
        }
        assert len(slots) == 1


async def test_nothing_in_redis_is_plaintext(replicas: list[Replica]) -> None:
    vendor, key = Vendor(), new_key("plaintext")
    vendor.gate.set()
    token, _ = await run(replicas[0], vendor, key)
    raw = await replicas[0].health.client.get(replicas[0].cache.redis_key(key))
    assert isinstance(raw, bytes) and token.token.encode() not in raw


def test_errors_travel_with_code_detail_headers_and_extra() -> None:
    original = UpstreamUnavailable("databrain is rate-limiting the broker", retry_after_seconds=7)
    flight, copy = decode_error(encode_error("f1", original))
    assert flight == "f1"
    assert type(copy) is UpstreamUnavailable
    assert (copy.status, copy.code, copy.detail) == (503, "upstream_unavailable", original.detail)
    assert copy.headers == {"Retry-After": "7"}


def test_errors_before_the_vendor_keep_their_code_and_unknown_codes_degrade() -> None:
    _, missing = decode_error(encode_error("f2", MissingClaim("the session lacks 'tenant'")))
    assert (type(missing), missing.status, missing.detail) == (
        MissingClaim,
        403,
        "the session lacks 'tenant'",
    )
    newer = orjson.dumps(
        {"flight": "f3", "code": "from_a_newer_replica", "detail": "d", "headers": {}, "extra": {}}
    )
    assert type(decode_error(newer)[1]) is UpstreamUnavailable


async def test_without_redis_each_replica_calls_the_vendor_itself() -> None:
    metrics = Metrics.create(redis=True)
    health = RedisHealth(f"redis://{LOOPBACK}:{free_port()}/0", metrics=metrics, prefix="tb:")
    await health.start()
    try:
        assert not health.available
        cache = RedisTokenCache(health, encryption_secret=SECRET, local=MemoryTokenCache(10))
        replica = Replica(health, cache, FleetSingleFlight(cache, health, metrics=metrics), metrics)
        vendor, key = Vendor(), new_key("down")
        vendor.gate.set()
        token, shared = await run(replica, vendor, key)
        assert (token.token, shared, vendor.calls) == ("vendor-token-1", False, 1)
        assert replica.role_count("local") == 1
    finally:
        await health.aclose()


async def test_redis_dying_while_a_follower_waits_falls_back_to_its_own_call(
    private_redis: RedisServer,
) -> None:
    made = []
    for _ in range(2):
        metrics = Metrics.create(redis=True)
        health = RedisHealth(private_redis.url, metrics=metrics, prefix="tb-fleet:")
        await health.start()
        cache = RedisTokenCache(health, encryption_secret=SECRET, local=MemoryTokenCache(10))
        made.append(
            Replica(health, cache, FleetSingleFlight(cache, health, metrics=metrics), metrics)
        )
    try:
        leader, follower = made
        vendor, key = Vendor(), new_key("redis-dies")
        first, (waiting,) = await leader_in_call_followers_waiting(leader, [follower], vendor, key)
        private_redis.stop(kill=True)
        await eventually_async(lambda: vendor.calls == 2, what="the follower calls itself")
        vendor.gate.set()
        assert (await waiting)[1] is False
        assert (await first)[1] is False
        assert follower.role_count("local") == 1
    finally:
        for replica in made:
            await replica.health.aclose()
