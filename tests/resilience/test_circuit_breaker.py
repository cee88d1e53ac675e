from __future__ import annotations

import pytest

from app.observability.metrics import Metrics
from app.providers.errors import ProviderUnavailable
from app.resilience import CircuitBreaker, CircuitState


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics.create()


@pytest.fixture
def breaker(clock: FakeClock, metrics: Metrics) -> CircuitBreaker:
    return CircuitBreaker("embeddable", "eu", metrics=metrics, clock=clock)


def gauge(metrics: Metrics, region: str = "eu") -> float | None:
    return metrics.registry.get_sample_value(
        "token_broker_circuit_open", {"provider": "embeddable", "region": region}
    )


def state(breaker: CircuitBreaker) -> CircuitState:
    return breaker.state


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert breaker.acquire() is False
        breaker.record_failure()


def test_opens_after_five_consecutive_failures(
    breaker: CircuitBreaker, clock: FakeClock, metrics: Metrics
) -> None:
    assert gauge(metrics) == 0
    fail(breaker, 4)
    assert state(breaker) is CircuitState.CLOSED
    fail(breaker, 1)
    assert state(breaker) is CircuitState.OPEN
    assert gauge(metrics) == 1
    clock.now += 12
    with pytest.raises(ProviderUnavailable) as refused:
        breaker.acquire()
    assert refused.value.retry_after_seconds == pytest.approx(18)
    assert (refused.value.provider, refused.value.region) == ("embeddable", "eu")


def test_a_success_resets_the_count(breaker: CircuitBreaker) -> None:
    fail(breaker, 4)
    breaker.acquire()
    breaker.record_success()
    fail(breaker, 4)
    assert state(breaker) is CircuitState.CLOSED


def test_half_open_lets_exactly_one_trial_through_and_success_closes(
    breaker: CircuitBreaker, clock: FakeClock, metrics: Metrics
) -> None:
    fail(breaker, 5)
    clock.now += 30
    breaker.check()  # would be let through
    assert breaker.acquire() is True
    assert state(breaker) is CircuitState.HALF_OPEN
    for _ in range(3):
        with pytest.raises(ProviderUnavailable):
            breaker.acquire()
    breaker.record_success()
    assert state(breaker) is CircuitState.CLOSED
    assert gauge(metrics) == 0
    assert breaker.acquire() is False


def test_a_failed_trial_reopens_for_the_full_period(
    breaker: CircuitBreaker, clock: FakeClock, metrics: Metrics
) -> None:
    fail(breaker, 5)
    clock.now += 31
    assert breaker.acquire() is True
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN
    assert gauge(metrics) == 1
    assert breaker.retry_after() == pytest.approx(30)
    clock.now += 29.9
    with pytest.raises(ProviderUnavailable):
        breaker.acquire()
    clock.now += 0.1
    assert breaker.acquire() is True


def test_a_neutral_trial_frees_the_slot_without_deciding(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 5)
    clock.now += 30
    assert breaker.acquire() is True
    breaker.record_neutral(trial=True)
    assert state(breaker) is CircuitState.HALF_OPEN
    assert breaker.acquire() is True


def test_late_failures_do_not_extend_an_open_circuit(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 5)
    clock.now += 20
    breaker.record_failure()  # a call that started before the circuit opened
    assert breaker.retry_after() == pytest.approx(10)


def test_region_less_providers_have_an_empty_region_label(
    clock: FakeClock, metrics: Metrics
) -> None:
    breaker = CircuitBreaker("embeddable", None, metrics=metrics, clock=clock)
    fail(breaker, 5)
    assert gauge(metrics, region="") == 1
