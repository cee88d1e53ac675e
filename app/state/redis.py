"""The process's one Redis client, and whether Redis is usable right now.

operations.md "Redis outages": when Redis is configured but unreachable the broker keeps
serving from the in-process cache and limits, logs at most once per minute, exposes
``token_broker_redis_available``, keeps ``/readyz`` at 200 and reconnects by itself.

How that works:

- Users of Redis (``RedisTokenCache``, ``RateLimiter``) check :attr:`RedisHealth.available`
  before each operation and call :meth:`RedisHealth.report_failure` when one fails. While
  Redis is unavailable they do not touch it at all, so an outage costs no connect
  timeouts on the request path.
- A background task pings Redis every ``probe_interval`` seconds while it is unavailable
  and flips it back on the first answer; it sleeps (on an event) while Redis is healthy.
- Socket timeouts are short and redis-py retries a failed command once, immediately: that
  retry is what transparently replaces a pooled connection a restarted Redis has closed.

The client fits the URL's topology (:mod:`app.state.redis_url`): a plain ``Redis`` for one
node, a ``RedisCluster`` for a cluster (it follows ``MOVED``/``ASK`` and rediscovers the
slots itself), and for Sentinel a ``Redis`` over a ``SentinelConnectionPool``, which asks
the Sentinels for the current master on every new connection: after a failover the first
failed command marks Redis unavailable, and the probe's next ping reaches the promoted
master.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.observability.metrics import Metrics
from app.state.redis_url import RedisTarget, parse_redis_url

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

log = logging.getLogger("token_broker.redis")


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis operation raises when the server is unreachable or misbehaving.

    ``RuntimeError`` is among them because under uvloop a connection that redis-py
    reuses after the server went away (a Sentinel failover, say) fails with uvloop's
    "unable to perform operation on <TCPTransport closed=True>", a RuntimeError rather
    than a ConnectionError. These tuples guard only the Redis calls themselves, so
    what they catch is reported as a Redis failure and the replica goes on alone."""
    from redis.exceptions import RedisError

    return (RedisError, OSError, EOFError, TimeoutError, RuntimeError)


STATUS_OK = "ok"
STATUS_UNAVAILABLE = "unavailable: serving from the in-process cache and limits"


class RedisHealth:
    """The one ``redis.asyncio`` client of the process, plus availability tracking."""

    def __init__(
        self,
        url: str,
        *,
        metrics: Metrics | None,
        prefix: str,
        probe_interval: float = 2.0,
        socket_timeout: float = 0.5,
        log_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.errors = redis_errors()
        self.target = parse_redis_url(url)
        self.client: Redis | RedisCluster
        self.client, self._sentinels = create_client(self.target, socket_timeout)
        self.prefix = prefix
        self._metrics = metrics
        self._probe_interval = probe_interval
        self._probe_timeout = max(socket_timeout * 2, 0.1)
        self._log_interval = log_interval
        self._clock = clock
        self._available = True
        self._last_unavailable_log: float | None = None
        self._unavailable_since: float | None = None
        self._wake = asyncio.Event()
        self._probe: asyncio.Task[None] | None = None
        self._gauge = metrics.redis_available if metrics is not None else None
        if self._gauge is not None:
            self._gauge.set(1)

    @property
    def available(self) -> bool:
        return self._available

    @property
    def status(self) -> str:
        """A short, secret-free description for the ``/readyz`` body (never fails readiness)."""
        return STATUS_OK if self._available else STATUS_UNAVAILABLE

    def report_failure(self, operation: str, exc: BaseException) -> None:
        """Record a failed Redis ``operation``; callers then use their in-process fallback."""
        if self._metrics is not None:
            self._metrics.redis_errors_total.labels(operation=operation).inc()
        if self._gauge is not None:
            self._gauge.set(0)
        now = self._clock()
        if self._available:
            self._available = False
            self._unavailable_since = now
        if self._last_unavailable_log is None or now - self._last_unavailable_log >= (
            self._log_interval
        ):
            self._last_unavailable_log = now
            # Only the exception type: redis-py messages may carry host names, never useful here.
            log.warning(
                "redis.unavailable",
                extra={"operation": operation, "error": type(exc).__name__},
            )
        self._wake.set()

    async def start(self) -> None:
        """Ping once (so an outage at start-up is known at once), then start the probe."""
        if self._probe is not None:
            return
        await self._ping()
        self._probe = asyncio.create_task(self._probe_loop(), name="redis-probe")

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        await self.client.aclose()
        for sentinel in self._sentinels:
            await sentinel.aclose()

    async def _ping(self) -> bool:
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self.client.ping()
        except self.errors as exc:
            self.report_failure("ping", exc)
            return False
        if not self._available:
            await self._recovered()
        return True

    async def _recovered(self) -> None:
        # Idle pooled sockets predate the outage; drop them rather than fail on each once.
        # (A RedisCluster replaces the connections of a node that failed by itself.)
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            with contextlib.suppress(*self.errors):
                await pool.disconnect(inuse_connections=False)
        down_for = (
            self._clock() - self._unavailable_since if self._unavailable_since is not None else 0.0
        )
        self._available = True
        self._unavailable_since = None
        self._last_unavailable_log = None
        if self._gauge is not None:
            self._gauge.set(1)
        log.info("redis.recovered", extra={"unavailable_seconds": round(down_for, 3)})

    async def _probe_loop(self) -> None:
        while True:
            if self._available:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(self._probe_interval)
            await self._ping()


def create_client(
    target: RedisTarget, socket_timeout: float
) -> tuple[Redis | RedisCluster, list[Redis]]:
    """The redis-py asyncio client for ``target``, with short timeouts and one retry, and
    the Sentinel clients behind it (to close with it)."""
    # redis-py is imported only when Redis is configured: it is a third of the
    # broker's import time (start-up target S6).
    from redis.asyncio import Redis, RedisCluster
    from redis.asyncio.cluster import ClusterNode
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import NoBackoff

    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 1),
    }
    if target.topology == "single":
        return Redis.from_url(target.url, **common), []
    tls: dict[str, Any] = {}
    if target.tls:
        tls["ssl"] = True
        if target.option("ssl_ca_certs"):
            tls["ssl_ca_certs"] = target.option("ssl_ca_certs")
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.topology == "cluster":
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            **auth,
            **tls,
            **common,
        )
        return cluster, []
    assert target.service is not None
    sentinel_auth: dict[str, Any] = {
        "username": target.option("sentinel_username"),
        "password": target.option("sentinel_password"),
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.nodes),
        sentinel_kwargs={
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            **sentinel_auth,
            **tls,
        },
    )
    master = sentinel.master_for(target.service, db=target.db, **auth, **tls, **common)
    return master, list(sentinel.sentinels)
