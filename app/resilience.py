"""Retries, circuit breakers and concurrency bounds around vendor calls.

operations.md "Calling vendors":

- retries only what :attr:`ProviderError.retryable` allows (the one rule, in
  :mod:`app.providers.errors`: connect error, timeout before an answer, 502/503/504),
  at most 2, exponential backoff with full jitter, all inside one overall
  deadline (the provider's ``timeout_seconds``); never a 4xx; never a vendor 429;
- a circuit breaker per provider and region: 5 consecutive technical failures open it
  for 30 s (fail fast: :class:`ProviderUnavailable` with the time left), then exactly one
  trial call; its state is the ``circuit_open`` gauge;
- at most ``max_concurrency`` calls in flight per provider *and region*; beyond that a
  call waits until the deadline, then fails with :class:`ProviderUnavailable`. Per
  region, so that calls hung in one region cannot make a healthy region wait.

Written here rather than with ``tenacity`` (retries) or ``purgatory``/``aiobreaker``
(breakers): the retry loop must share one deadline with the concurrency wait, check the
breaker before every attempt and label a metric per attempt, and the breaker must run
on an injectable clock for tests; the glue around those libraries would be longer than
the ~150 lines below.

What counts for the breaker is evidence that the *vendor* is down, never an answer
that one request's body can provoke (issue 14: one user whose profile field made the
vendor answer 500 held a whole region's circuit open):

- failures: connect errors, timeouts, 502, 503 and 504 (gateways and load balancers
  saying the service behind them is gone);
- neutral: 500 and every other 5xx (the vendor's code failed on *this* request), a
  vendor 429 (the vendor is up and throttling us), a provider bug, a call cancelled by
  its client; a neutral half-open trial lets the next call be the trial;
- successes (close it): an answer the vendor meant, 2xx or 4xx.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from app.observability.metrics import Metrics
from app.providers.base import AnyProvider, IssuedToken
from app.providers.errors import (
    RETRYABLE_STATUSES,
    LogicalError,
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderConnectError,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
    TechnicalError,
)

log = logging.getLogger("token_broker.upstream")

FAILURE_THRESHOLD = 5
OPEN_SECONDS = 30.0
MAX_RETRIES = 2
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 1.0
VENDOR_DOWN_STATUSES = RETRYABLE_STATUSES
"""The statuses that count against the circuit breaker (with connect errors, timeouts)."""
SATURATED_RETRY_AFTER_SECONDS = 1.0


def region_label(region: str | None) -> str:
    """The ``region`` metric label: the region name, or empty for region-less providers."""
    return region or ""


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Per provider and region. Not thread-safe: it lives on the event loop."""

    def __init__(
        self,
        provider: str,
        region: str | None,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        failure_threshold: int = FAILURE_THRESHOLD,
        open_seconds: float = OPEN_SECONDS,
    ) -> None:
        self.provider = provider
        self.region = region
        self._clock = clock
        self._failure_threshold = failure_threshold
        self._open_seconds = open_seconds
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._gauge = (
            metrics.circuit_open.labels(provider=provider, region=region_label(region))
            if metrics is not None
            else None
        )
        if self._gauge is not None:
            self._gauge.set(0)

    @property
    def state(self) -> CircuitState:
        return self._state

    def retry_after(self) -> float:
        """Seconds until an open circuit lets a trial call through (0 when it would now)."""
        if self._state is CircuitState.OPEN:
            return max(0.0, self._opened_at + self._open_seconds - self._clock())
        return 0.0

    def check(self) -> None:
        """Raise :class:`ProviderUnavailable` when a call would be refused now."""
        if self._state is CircuitState.OPEN:
            left = self.retry_after()
            if left > 0:
                raise self._refusal(left)
        elif self._state is CircuitState.HALF_OPEN and self._trial_in_flight:
            raise self._refusal(1.0)

    def acquire(self) -> bool:
        """Take permission for one call or raise; True when it is the half-open trial call."""
        self.check()
        if self._state is CircuitState.OPEN:
            self._state = CircuitState.HALF_OPEN
            log.info("circuit.half_open", extra=self._log_fields())
        if self._state is CircuitState.HALF_OPEN:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._trial_in_flight = False
        if self._state is not CircuitState.CLOSED:
            self._state = CircuitState.CLOSED
            if self._gauge is not None:
                self._gauge.set(0)
            log.info("circuit.closed", extra=self._log_fields())

    def record_failure(self) -> None:
        if self._state is CircuitState.OPEN:
            return  # a call from before the circuit opened: it is open already
        self._trial_in_flight = False
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or self._failures >= self._failure_threshold:
            self._open()

    def record_neutral(self, *, trial: bool) -> None:
        """The call says nothing about the vendor's health (429, cancelled)."""
        if trial:
            self._trial_in_flight = False

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        if self._gauge is not None:
            self._gauge.set(1)
        log.warning(
            "circuit.opened",
            extra={**self._log_fields(), "failures": self._failures, "seconds": self._open_seconds},
        )

    def _refusal(self, retry_after: float) -> ProviderUnavailable:
        return ProviderUnavailable(
            "circuit breaker open: the vendor failed repeatedly",
            provider=self.provider,
            region=self.region,
            retry_after_seconds=retry_after,
        )

    def _log_fields(self) -> dict[str, Any]:
        return {"provider": self.provider, "region": self.region}


def _status_label(exc: ProviderError) -> str:
    if isinstance(exc, ProviderServerError | ProviderRejected | ProviderAuthFailed):
        return str(exc.status)
    if isinstance(exc, ProviderRateLimited):
        return "429"
    if isinstance(exc, ProviderTimeout):
        return "timeout"
    if isinstance(exc, ProviderConnectError):
        return "connect_error"
    if isinstance(exc, ProviderBadResponse):
        return "bad_response"
    return "error"


def signals_vendor_down(exc: ProviderError) -> bool:
    """Whether ``exc`` counts against the circuit breaker (see the module docstring)."""
    if isinstance(exc, ProviderConnectError | ProviderTimeout):
        return True
    return isinstance(exc, ProviderServerError) and exc.status in VENDOR_DOWN_STATUSES


class VendorCaller:
    """Retries, circuit breakers and concurrency bounds around ``provider.issue()``.

    Lives for the whole process: breakers and semaphores are keyed by provider name
    (and region), so their state survives policy reloads.
    """

    def __init__(
        self,
        *,
        metrics: Metrics | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._breakers: dict[tuple[str, str | None], CircuitBreaker] = {}
        self._semaphores: dict[tuple[str, str | None], tuple[int, asyncio.Semaphore]] = {}

    def breaker(self, provider: str, region: str | None) -> CircuitBreaker:
        breaker = self._breakers.get((provider, region))
        if breaker is None:
            breaker = CircuitBreaker(provider, region, metrics=self._metrics, clock=self._clock)
            self._breakers[(provider, region)] = breaker
        return breaker

    def _semaphore(self, provider: str, region: str | None, limit: int) -> asyncio.Semaphore:
        key = (provider, region)
        entry = self._semaphores.get(key)
        if entry is None or entry[0] != limit:
            # A reload changed the bound: calls in flight release the old semaphore.
            entry = (limit, asyncio.Semaphore(limit))
            self._semaphores[key] = entry
        return entry[1]

    def backoff(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**retry))."""
        return self._rng() * min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0**retry)

    async def issue(
        self,
        provider: AnyProvider,
        body: Mapping[str, Any],
        ttl_seconds: int,
        region: str | None,
    ) -> IssuedToken:
        """Call the vendor with the policy above; raise a :class:`ProviderError` on failure."""
        name = provider.name
        timeout = provider.config.timeout_seconds
        deadline = self._clock() + timeout
        breaker = self.breaker(name, region)
        try:
            breaker.check()
        except ProviderUnavailable:
            self._count(name, region, "circuit_open")
            raise
        semaphore = self._semaphore(name, region, provider.config.max_concurrency)
        await self._acquire(semaphore, deadline, name, region)
        try:
            return await self._attempts(provider, body, ttl_seconds, region, breaker, deadline)
        finally:
            semaphore.release()

    async def _acquire(
        self, semaphore: asyncio.Semaphore, deadline: float, name: str, region: str | None
    ) -> None:
        if not semaphore.locked():
            await semaphore.acquire()  # free slot: returns without suspending
            return
        try:
            async with asyncio.timeout(max(0.0, deadline - self._clock())):
                await semaphore.acquire()
        except TimeoutError:
            self._count(name, region, "concurrency_limit")
            raise ProviderUnavailable(
                "too many vendor calls in flight",
                provider=name,
                region=region,
                retry_after_seconds=SATURATED_RETRY_AFTER_SECONDS,
            ) from None

    async def _attempts(
        self,
        provider: AnyProvider,
        body: Mapping[str, Any],
        ttl_seconds: int,
        region: str | None,
        breaker: CircuitBreaker,
        deadline: float,
    ) -> IssuedToken:
        name = provider.name
        retry = 0
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise self._deadline_passed(provider, region)
            try:
                trial = breaker.acquire()
            except ProviderUnavailable:
                self._count(name, region, "circuit_open")
                raise
            started = self._clock()
            try:
                async with asyncio.timeout(remaining):
                    issued = await provider.issue(body, ttl_seconds, region)
            except TimeoutError:
                self._observe(name, region, "timeout", started)
                breaker.record_failure()
                raise self._deadline_passed(provider, region) from None
            except LogicalError as exc:
                self._observe(name, region, _status_label(exc), started)
                breaker.record_success()
                raise
            except ProviderRateLimited:
                self._observe(name, region, "429", started)
                breaker.record_neutral(trial=trial)
                raise
            except TechnicalError as exc:
                self._observe(name, region, _status_label(exc), started)
                if signals_vendor_down(exc):
                    breaker.record_failure()
                else:
                    breaker.record_neutral(trial=trial)
                if not exc.retryable or retry >= MAX_RETRIES:
                    raise
                pause = self.backoff(retry)
                if self._clock() + pause >= deadline:
                    raise  # no time left for another attempt: the vendor's error is the answer
                log.info(
                    "upstream.retry",
                    extra={
                        "provider": name,
                        "region": region,
                        "attempt": retry + 2,
                        "reason": _status_label(exc),
                    },
                )
                retry += 1
                await self._sleep(pause)
                continue
            except Exception:
                # A provider bug (it should raise only ProviderError): not the vendor's health.
                self._observe(name, region, "error", started)
                breaker.record_neutral(trial=trial)
                raise
            except BaseException:
                # Cancelled because its client went away.
                breaker.record_neutral(trial=trial)
                raise
            self._observe(name, region, str(issued.vendor_status), started)
            breaker.record_success()
            return issued

    def _deadline_passed(self, provider: AnyProvider, region: str | None) -> ProviderTimeout:
        return ProviderTimeout(
            f"no vendor answer within {provider.config.timeout_seconds:g} s",
            provider=provider.name,
            region=region,
        )

    def _count(self, name: str, region: str | None, status: str) -> None:
        if self._metrics is not None:
            self._metrics.upstream_children(name, region_label(region), status)[0].inc()

    def _observe(self, name: str, region: str | None, status: str, started: float) -> None:
        if self._metrics is not None:
            counter, latency = self._metrics.upstream_children(name, region_label(region), status)
            counter.inc()
            latency.observe(max(0.0, self._clock() - started))
