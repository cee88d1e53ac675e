"""Single-flight across the fleet: identical cold misses on N replicas, one vendor call
(operations.md "Fleet mode", performance.md S8).

The per-process :class:`~app.state.singleflight.SingleFlight` stays in front: of all the
concurrent identical requests a replica holds, only its one shared call gets here. Then,
on Redis:

1. **Lock.** One script, atomically: read the token's value and ``SET lock:{key} <flight
   id> NX PX <lock ms>``. The replica that sets it is the *leader* for this key; the
   lock lives as long as the vendor deadline (the provider's ``timeout_seconds``) plus
   a margin, so it expires by itself when the leader dies, hangs or loses Redis.
2. **Leader.** Calls the vendor; on success the token goes into the encrypted cache
   first and the lock is released after (compare-and-delete: a leader that overran its
   lock never deletes its successor's). On a vendor error it writes the error, sealed
   and tagged with its flight id, to ``err:{key}`` for a few seconds, then releases:
   every waiter of *that* flight raises the same error; nothing is cached, and a later
   request (which knows no flight id) starts a new flight.
3. **Followers.** Poll ``MGET tok:{key} lock:{key} err:{key}`` with a short backoff
   (10 ms, growing to 50 ms): a fresh token ends the wait (``coalesced``), an error of
   the flight they wait on is raised, a lock held by another flight id means someone
   took over (follow that one), and no lock without an outcome means the leader is
   gone: they race for the lock again, and exactly one wins (``SET NX``) and calls the
   vendor (a *takeover*).

The three keys share the ``{key}`` hash tag, so on a Redis Cluster they sit in one slot
and the script and ``MGET`` are legal.

Why polling and not pub/sub: polling works unchanged on a single node, a Cluster (no
broadcast of every message to every node) and behind Sentinel (no subscriber
connection to re-establish after a failover), and it costs little: because of the
per-process single-flight, at most one poller per replica per key in flight.

Redis unavailable, or failing in the middle: the replica calls the vendor itself, as
without fleet mode (operations.md "Redis outages"). A follower waits at most a few lock
lifetimes in all, then does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import orjson
from cryptography.exceptions import InvalidTag

from app.errors import BrokerError, UpstreamUnavailable

if TYPE_CHECKING:
    from app.observability.metrics import Metrics
    from app.state.cache import CachedToken, RedisTokenCache
    from app.state.redis import RedisHealth

log = logging.getLogger("token_broker.fleet")

T = TypeVar("T")
Role = Literal["leader", "follower", "takeover", "local"]  # metrics.FLEET_ROLES

LOCK_MARGIN_SECONDS = 1.0
"""Beyond the vendor deadline: the leader's cache write and lock release."""
POLL_FIRST_SECONDS = 0.01
POLL_MAX_SECONDS = 0.05
POLL_GROWTH = 1.5
MAX_WAIT_LOCKS = 3
"""A follower gives up waiting (and calls the vendor itself) after this many lock lifetimes."""

# KEYS: token, lock. ARGV: flight id, lock ms. -> {acquired, token value, lock holder}
_ACQUIRE = """
local token = redis.call('GET', KEYS[1])
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, token, ARGV[1]}
end
return {0, token, redis.call('GET', KEYS[2])}
"""
# KEYS: lock, error. ARGV: flight id, sealed error or '', error ms. -> 1 when released
_FINISH = """
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _errors_by_code() -> dict[str, type[BrokerError]]:
    """Every BrokerError class by its ``code`` (a leader's vendor call may also fail
    before the vendor, e.g. ``missing_claim``: followers share the same request)."""
    found: dict[str, type[BrokerError]] = {}
    pending: list[type[BrokerError]] = [BrokerError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


def encode_error(flight: str, error: BrokerError) -> bytes:
    """What followers need to raise the leader's error: its code, detail, headers and
    extra members (all client-facing already: no secret is in a BrokerError)."""
    return orjson.dumps(
        {
            "flight": flight,
            "code": error.code,
            "detail": error.detail,
            "headers": error.headers,
            "extra": error.extra,
        }
    )


def decode_error(raw: bytes) -> tuple[str, BrokerError]:
    """``(flight id, error)`` from :func:`encode_error`'s bytes. A code this version does
    not know (a newer replica's) becomes ``upstream_unavailable``."""
    record = orjson.loads(raw)
    cls = _errors_by_code().get(record["code"], UpstreamUnavailable)
    error = cls.__new__(cls)
    BrokerError.__init__(
        error, str(record["detail"]), headers=record["headers"], extra=record["extra"]
    )
    return str(record["flight"]), error


class _LeaderGone(Exception):
    """The lock was released or expired without a result: try to take over."""


class FleetSingleFlight(Generic[T]):
    """One vendor call per key across every replica sharing this Redis."""

    def __init__(
        self,
        cache: RedisTokenCache,
        health: RedisHealth,
        *,
        metrics: Metrics | None = None,
        poll_first: float = POLL_FIRST_SECONDS,
        poll_max: float = POLL_MAX_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache = cache
        self._health = health
        self._redis = health.client
        self._acquire_script: Any = health.client.register_script(_ACQUIRE)
        self._finish_script: Any = health.client.register_script(_FINISH)
        self._poll_first = poll_first
        self._poll_max = poll_max
        self._monotonic = monotonic
        self._counter = metrics.fleet_flights_total if metrics is not None else None
        self.following = 0
        """Calls of this process now waiting on another replica's vendor call."""

    def _count(self, role: Role) -> None:
        if self._counter is not None:
            self._counter.labels(role=role).inc()

    async def run(
        self,
        key: str,
        *,
        deadline_seconds: float,
        fresh: Callable[[CachedToken], bool],
        mint: Callable[[], Awaitable[T]],
        adopt: Callable[[CachedToken], T],
    ) -> tuple[T, bool]:
        """``(result, shared)``: ``mint()``'s result when this replica called the vendor,
        else ``adopt(token)`` of the token another replica cached (``shared`` True).

        ``mint`` must put the token in the cache before it returns; ``fresh`` says whether
        a cached token may still be handed out. A BrokerError from another replica's
        ``mint`` is raised here as the same error.
        """
        health = self._health
        if not health.available:
            self._count("local")
            return await mint(), False
        lock_ms = math.ceil((deadline_seconds + LOCK_MARGIN_SECONDS) * 1000)
        give_up = self._monotonic() + MAX_WAIT_LOCKS * lock_ms / 1000
        flight = os.urandom(16).hex()
        takeover = False
        while True:
            try:
                acquired, raw_token, holder = await self._acquire(key, flight, lock_ms)
            except health.errors as exc:
                health.report_failure("fleet_lock", exc)
                self._count("local")
                return await mint(), False
            token = self._usable(key, raw_token, fresh)
            if token is not None:
                if acquired:
                    await self._finish(key, flight, None, lock_ms)
                self._count("follower")
                return adopt(token), True
            if acquired:
                if takeover:
                    log.warning("fleet.takeover", extra={"key": key[:16]})
                self._count("takeover" if takeover else "leader")
                return await self._lead(key, flight, lock_ms, mint), False
            try:
                token = await self._follow(key, holder, fresh, give_up)
            except _LeaderGone:
                if self._monotonic() >= give_up:
                    log.warning("fleet.wait_exhausted", extra={"key": key[:16]})
                    self._count("local")
                    return await mint(), False
                takeover = True
                continue
            except health.errors as exc:
                health.report_failure("fleet_wait", exc)
                self._count("local")
                return await mint(), False
            self._count("follower")
            return adopt(token), True

    async def _acquire(self, key: str, flight: str, lock_ms: int) -> tuple[bool, object, object]:
        cache = self._cache
        reply = await self._acquire_script(
            keys=[cache.redis_key(key), cache.related_key("lock", key)], args=[flight, lock_ms]
        )
        acquired, raw_token, holder = reply
        return bool(acquired), raw_token, holder

    def _usable(
        self, key: str, raw_token: object, fresh: Callable[[CachedToken], bool]
    ) -> CachedToken | None:
        token = self._cache.from_redis(key, raw_token)
        return token if token is not None and fresh(token) else None

    async def _lead(
        self, key: str, flight: str, lock_ms: int, mint: Callable[[], Awaitable[T]]
    ) -> T:
        try:
            result = await mint()
        except BrokerError as exc:
            await self._finish(key, flight, exc, lock_ms)
            raise
        except BaseException:
            # A bug or a cancellation: no outcome to share; release so a follower takes over.
            await self._finish(key, flight, None, lock_ms)
            raise
        await self._finish(key, flight, None, lock_ms)
        return result

    async def _finish(self, key: str, flight: str, error: BrokerError | None, lock_ms: int) -> None:
        """Publish ``error`` (if any) to this flight's followers, then release the lock.
        Best effort: when Redis fails here the lock expires by itself."""
        cache = self._cache
        error_key = cache.related_key("err", key)
        sealed = cache.seal(error_key, encode_error(flight, error)) if error is not None else b""
        try:
            await self._finish_script(
                keys=[cache.related_key("lock", key), error_key], args=[flight, sealed, lock_ms]
            )
        except self._health.errors as exc:
            self._health.report_failure("fleet_release", exc)

    async def _follow(
        self, key: str, holder: object, fresh: Callable[[CachedToken], bool], give_up: float
    ) -> CachedToken:
        """Wait for the token of the flight ``holder`` leads (or of whoever takes over)."""
        cache = self._cache
        names = [
            cache.redis_key(key),
            cache.related_key("lock", key),
            cache.related_key("err", key),
        ]
        self.following += 1
        try:
            return await self._poll(names, key, holder, fresh, give_up)
        finally:
            self.following -= 1

    async def _poll(
        self,
        names: list[str],
        key: str,
        holder: object,
        fresh: Callable[[CachedToken], bool],
        give_up: float,
    ) -> CachedToken:
        pause = self._poll_first
        while True:
            await asyncio.sleep(pause)
            pause = min(self._poll_max, pause * POLL_GROWTH)
            raw_token, current, raw_error = await self._redis.mget(names)
            token = self._usable(key, raw_token, fresh)
            if token is not None:
                return token
            if isinstance(raw_error, bytes) and isinstance(holder, bytes):
                error = self._error_of(names[2], raw_error, holder.decode())
                if error is not None:
                    raise error
            if current is None or self._monotonic() >= give_up:
                raise _LeaderGone()
            holder = current  # the same leader, or one that took over meanwhile

    def _error_of(self, error_key: str, raw: bytes, flight: str) -> BrokerError | None:
        with contextlib.suppress(InvalidTag, ValueError, KeyError, TypeError):
            published_by, error = decode_error(self._cache.unseal(error_key, raw))
            if published_by == flight:
                return error
        return None
