from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app.observability.metrics import Metrics
from app.providers.base import (
    BaseProvider,
    Element,
    EmbedElementConfig,
    IssuedToken,
    ProviderConfigBase,
)
from app.providers.errors import (
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderConnectError,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
)
from app.resilience import CircuitState, VendorCaller

pytestmark = pytest.mark.anyio

NAME = "embeddable"
TOKEN = IssuedToken(token="vendor-token", expires_at=2_000_000_000.0)


class FakeTime:
    """A clock and a sleep that advances it: backoff pauses cost no real time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


Outcome = IssuedToken | ProviderError | Callable[[], Any]


class FakeProvider(BaseProvider[ProviderConfigBase]):
    """Plays back outcomes, one per attempt (the last one repeats)."""

    type_name = "fake"
    config_model = ProviderConfigBase
    token_path = "/token"

    def __init__(
        self,
        *outcomes: Outcome,
        timeout_seconds: float = 5.0,
        max_concurrency: int = 64,
        time: FakeTime | None = None,
        attempt_seconds: float = 0.0,
    ) -> None:
        config = ProviderConfigBase(
            type="fake", timeout_seconds=timeout_seconds, max_concurrency=max_concurrency
        )
        super().__init__(NAME, config, http_client=httpx.AsyncClient())  # never used
        self.outcomes = list(outcomes) or [TOKEN]
        self.calls = 0
        self.time = time
        self.attempt_seconds = attempt_seconds

    async def issue(
        self, body: Mapping[str, Any], ttl_seconds: int, region: str | None
    ) -> IssuedToken:
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        if self.time is not None:
            self.time.now += self.attempt_seconds
        if callable(outcome):
            outcome = await outcome()
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, IssuedToken)
        return outcome

    @classmethod
    def validate_request(
        cls, body: Mapping[str, Any], *, allow_unknown_fields: bool = False
    ) -> tuple[str, ...]:
        return ()

    @classmethod
    def validate_element(cls, element: EmbedElementConfig | None) -> None:
        return None

    def element(self, element: EmbedElementConfig | None, region: str | None) -> Element:
        return Element("fake-embed", {})

    def account(self, region: str | None) -> tuple[str, SecretStr]:
        return "http://vendor.invalid", SecretStr("fake-key")


def server_error(status: int) -> ProviderServerError:
    return ProviderServerError(f"vendor answered {status}", provider=NAME, status=status)


def connect_error() -> ProviderConnectError:
    return ProviderConnectError("connection refused", provider=NAME)


def vendor_timeout() -> ProviderTimeout:
    return ProviderTimeout("read timeout", provider=NAME)


@pytest.fixture
def time_() -> FakeTime:
    return FakeTime()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics.create()


@pytest.fixture
def caller(time_: FakeTime, metrics: Metrics) -> VendorCaller:
    return VendorCaller(metrics=metrics, clock=time_.clock, sleep=time_.sleep, rng=lambda: 0.5)


def upstream(metrics: Metrics, status: str, region: str = "eu") -> float:
    value = metrics.registry.get_sample_value(
        "token_broker_upstream_requests_total",
        {"provider": NAME, "region": region, "status": status},
    )
    return value or 0.0


async def test_success_is_one_attempt_counted_and_timed(
    caller: VendorCaller, metrics: Metrics
) -> None:
    provider = FakeProvider(TOKEN)
    assert await caller.issue(provider, {"a": 1}, 600, "eu") is TOKEN
    assert provider.calls == 1
    assert upstream(metrics, "200") == 1
    count = metrics.registry.get_sample_value(
        "token_broker_upstream_latency_seconds_count", {"provider": NAME, "region": "eu"}
    )
    assert count == 1


@pytest.mark.parametrize(
    ("make_error", "status"),
    [
        (connect_error, "connect_error"),
        (vendor_timeout, "timeout"),
        (lambda: server_error(502), "502"),
        (lambda: server_error(503), "503"),
        (lambda: server_error(504), "504"),
    ],
)
async def test_technical_failures_are_retried_twice_with_full_jitter_backoff(
    caller: VendorCaller,
    time_: FakeTime,
    metrics: Metrics,
    make_error: Callable[[], ProviderError],
    status: str,
) -> None:
    error = make_error()
    provider = FakeProvider(error)
    with pytest.raises(type(error)) as raised:
        await caller.issue(provider, {}, 600, "eu")
    assert raised.value is error
    assert provider.calls == 3
    # rng() == 0.5: half of min(1 s, 0.1 s * 2**retry).
    assert time_.pauses == pytest.approx([0.05, 0.1])
    assert upstream(metrics, status) == 3


async def test_a_transient_failure_then_success(caller: VendorCaller, metrics: Metrics) -> None:
    provider = FakeProvider(server_error(503), TOKEN)
    assert await caller.issue(provider, {}, 600, "eu") is TOKEN
    assert provider.calls == 2
    assert (upstream(metrics, "503"), upstream(metrics, "200")) == (1, 1)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (server_error(500), "500"),
        (ProviderRejected("bad field", provider=NAME, status=400, vendor_code="X"), "400"),
        (ProviderRejected("not found", provider=NAME, status=404), "404"),
        (ProviderAuthFailed("key refused", provider=NAME, status=401), "401"),
        (ProviderAuthFailed("key refused", provider=NAME, status=403), "403"),
        (ProviderBadResponse("no token in body", provider=NAME), "bad_response"),
        (ProviderRateLimited("slow down", provider=NAME, retry_after_seconds=7), "429"),
    ],
)
async def test_other_failures_are_not_retried(
    caller: VendorCaller,
    time_: FakeTime,
    metrics: Metrics,
    error: ProviderError,
    status: str,
) -> None:
    provider = FakeProvider(error)
    with pytest.raises(type(error)) as raised:
        await caller.issue(provider, {}, 600, "eu")
    assert raised.value is error
    assert provider.calls == 1
    assert time_.pauses == []
    assert upstream(metrics, status) == 1


async def test_vendor_429_keeps_its_retry_after(caller: VendorCaller) -> None:
    provider = FakeProvider(ProviderRateLimited("slow down", provider=NAME, retry_after_seconds=7))
    with pytest.raises(ProviderRateLimited) as raised:
        await caller.issue(provider, {}, 600, "eu")
    assert raised.value.retry_after_seconds == 7


async def test_no_retry_that_cannot_finish_before_the_deadline(
    caller: VendorCaller, time_: FakeTime
) -> None:
    # Each attempt takes 0.45 s of a 1 s deadline: the third would start too late.
    provider = FakeProvider(
        server_error(503), timeout_seconds=1.0, time=time_, attempt_seconds=0.45
    )
    with pytest.raises(ProviderServerError):
        await caller.issue(provider, {}, 600, "eu")
    assert provider.calls == 2


async def test_an_attempt_past_the_deadline_is_a_timeout(metrics: Metrics) -> None:
    caller = VendorCaller(metrics=metrics)  # real clock: the provider really hangs

    async def hang() -> IssuedToken:
        await asyncio.sleep(3600)
        return TOKEN

    provider = FakeProvider(hang, timeout_seconds=0.05)
    with pytest.raises(ProviderTimeout) as raised:
        await caller.issue(provider, {}, 600, "eu")
    assert raised.value.provider == NAME
    assert provider.calls == 1
    assert upstream(metrics, "timeout") == 1


async def open_circuit(caller: VendorCaller, region: str = "eu") -> FakeProvider:
    """Five connection failures (two calls with their retries): the circuit opens."""
    failing = FakeProvider(connect_error())
    with pytest.raises(ProviderConnectError):
        await caller.issue(failing, {}, 600, region)  # attempts 1-3
    with pytest.raises(ProviderUnavailable):
        await caller.issue(failing, {}, 600, region)  # attempts 4, 5, then open
    assert failing.calls == 5
    return failing


async def test_circuit_opens_after_five_failed_attempts_and_fails_fast(
    caller: VendorCaller, time_: FakeTime, metrics: Metrics
) -> None:
    failing = await open_circuit(caller)
    with pytest.raises(ProviderUnavailable) as refused:
        await caller.issue(failing, {}, 600, "eu")
    assert failing.calls == 5
    assert refused.value.retry_after_seconds == pytest.approx(30, abs=1)  # backoff passed
    assert upstream(metrics, "circuit_open") == 2
    open_gauge = metrics.registry.get_sample_value(
        "token_broker_circuit_open", {"provider": NAME, "region": "eu"}
    )
    assert open_gauge == 1

    # Another region has its own breaker.
    assert await caller.issue(FakeProvider(TOKEN), {}, 600, "us") is TOKEN

    time_.now += 30
    healthy = FakeProvider(TOKEN)
    assert await caller.issue(healthy, {}, 600, "eu") is TOKEN  # the trial call
    assert await caller.issue(healthy, {}, 600, "eu") is TOKEN
    assert healthy.calls == 2


async def test_retries_stop_when_the_circuit_opens_midway(caller: VendorCaller) -> None:
    failing = FakeProvider(server_error(503))
    with pytest.raises(ProviderServerError):
        await caller.issue(failing, {}, 600, "eu")  # attempts 1-3
    with pytest.raises(ProviderUnavailable):
        await caller.issue(failing, {}, 600, "eu")  # attempts 4, 5, then open
    assert failing.calls == 5


async def test_concurrency_is_bounded_per_provider(metrics: Metrics) -> None:
    caller = VendorCaller(metrics=metrics)
    in_flight = 0
    peak = 0

    async def slow() -> IssuedToken:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        return TOKEN

    provider = FakeProvider(slow, max_concurrency=3)
    results = await asyncio.gather(*(caller.issue(provider, {}, 600, "eu") for _ in range(12)))
    assert results == [TOKEN] * 12
    assert peak == 3


async def test_waiting_for_a_slot_past_the_deadline_is_unavailable(metrics: Metrics) -> None:
    caller = VendorCaller(metrics=metrics)
    release = asyncio.Event()

    async def blocked() -> IssuedToken:
        await release.wait()
        return TOKEN

    holder = FakeProvider(blocked, max_concurrency=1, timeout_seconds=30)
    first = asyncio.create_task(caller.issue(holder, {}, 600, "eu"))
    await asyncio.sleep(0)
    waiter = FakeProvider(TOKEN, max_concurrency=1, timeout_seconds=0.05)
    with pytest.raises(ProviderUnavailable) as refused:
        await caller.issue(waiter, {}, 600, "eu")
    assert refused.value.retry_after_seconds == 1
    assert waiter.calls == 0
    assert upstream(metrics, "concurrency_limit") == 1
    release.set()
    assert await first is TOKEN


async def test_a_cancelled_trial_call_frees_the_half_open_slot(
    caller: VendorCaller, time_: FakeTime
) -> None:
    await open_circuit(caller)
    time_.now += 30
    started = asyncio.Event()

    async def hang() -> IssuedToken:
        started.set()
        await asyncio.sleep(3600)
        return TOKEN

    trial = asyncio.create_task(caller.issue(FakeProvider(hang), {}, 600, "eu"))
    await started.wait()
    with pytest.raises(ProviderUnavailable):  # the trial is in flight
        await caller.issue(FakeProvider(TOKEN), {}, 600, "eu")
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert await caller.issue(FakeProvider(TOKEN), {}, 600, "eu") is TOKEN


async def test_a_logical_answer_closes_the_circuit(caller: VendorCaller, time_: FakeTime) -> None:
    await open_circuit(caller)
    time_.now += 30
    rejected = ProviderRejected("bad field", provider=NAME, status=400)
    with pytest.raises(ProviderRejected):
        await caller.issue(FakeProvider(rejected), {}, 600, "eu")
    assert caller.breaker(NAME, "eu").retry_after() == 0
    assert await caller.issue(FakeProvider(TOKEN), {}, 600, "eu") is TOKEN


async def test_a_provider_bug_propagates_and_is_counted(
    caller: VendorCaller, metrics: Metrics
) -> None:
    async def broken() -> IssuedToken:
        raise KeyError("token")

    with pytest.raises(KeyError):
        await caller.issue(FakeProvider(broken), {}, 600, "eu")
    assert upstream(metrics, "error") == 1


# --- issue 14: shared-fate poisoning ---------------------------------------------


@pytest.mark.parametrize("status", [500, 501, 505, 599])
async def test_an_answer_one_body_provokes_never_opens_the_circuit(
    caller: VendorCaller, status: int
) -> None:
    # One user whose claim makes the vendor answer 500 used to open the circuit for
    # the whole provider and region after five requests.
    poisoned = FakeProvider(server_error(status))
    for _ in range(20):
        with pytest.raises(ProviderServerError):
            await caller.issue(poisoned, {}, 600, "eu")
    assert poisoned.calls == 20  # not retried, and never refused
    assert caller.breaker(NAME, "eu").state is CircuitState.CLOSED
    assert await caller.issue(FakeProvider(TOKEN), {}, 600, "eu") is TOKEN


@pytest.mark.parametrize(
    "signal",
    [connect_error, vendor_timeout, lambda: server_error(502), lambda: server_error(503)],
)
async def test_signs_of_a_vendor_outage_open_the_circuit(
    caller: VendorCaller, signal: Callable[[], ProviderError]
) -> None:
    failing = FakeProvider(signal())
    for _ in range(2):  # 3 attempts, then 2 and open
        with pytest.raises((ProviderError,)):
            await caller.issue(failing, {}, 600, "eu")
    assert caller.breaker(NAME, "eu").state is CircuitState.OPEN
    assert failing.calls == 5


async def test_a_poisoned_half_open_trial_does_not_keep_the_circuit_open(
    caller: VendorCaller, time_: FakeTime
) -> None:
    await open_circuit(caller)
    time_.now += 30
    # The attacker's request becomes the trial and fails with a 500 of its own making.
    with pytest.raises(ProviderServerError):
        await caller.issue(FakeProvider(server_error(500)), {}, 600, "eu")
    assert caller.breaker(NAME, "eu").state is not CircuitState.OPEN
    # The next caller is the trial; the vendor is fine, so the circuit closes.
    assert await caller.issue(FakeProvider(TOKEN), {}, 600, "eu") is TOKEN
    assert caller.breaker(NAME, "eu").state is CircuitState.CLOSED


async def test_calls_hung_in_one_region_leave_other_regions_their_slots(
    metrics: Metrics,
) -> None:
    # 100 hung calls in one region made a healthy region wait 4.2 s (then 503).
    caller = VendorCaller(metrics=metrics)
    release = asyncio.Event()

    async def hung() -> IssuedToken:
        await release.wait()
        return TOKEN

    holder = FakeProvider(hung, max_concurrency=2, timeout_seconds=30)
    stuck = [asyncio.create_task(caller.issue(holder, {}, 600, "us")) for _ in range(2)]
    await asyncio.sleep(0)
    healthy = FakeProvider(TOKEN, max_concurrency=2, timeout_seconds=0.05)
    assert await caller.issue(healthy, {}, 600, "eu") is TOKEN
    with pytest.raises(ProviderUnavailable):  # the hung region itself is bounded
        await caller.issue(healthy, {}, 600, "us")
    assert upstream(metrics, "concurrency_limit", region="us") == 1
    assert upstream(metrics, "concurrency_limit", region="eu") == 0
    release.set()
    assert await asyncio.gather(*stuck) == [TOKEN, TOKEN]
