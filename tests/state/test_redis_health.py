from __future__ import annotations

import logging

import pytest

from app.observability.metrics import Metrics
from app.state.redis import STATUS_OK, RedisHealth
from tests.support.eventually import eventually_async
from tests.support.redis import RedisServer
from tests.support.servers import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def unavailable_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "redis.unavailable"]


async def test_failures_flip_health_count_metrics_and_log_once_per_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics.create(redis=True)
    clock = FakeClock()
    health = RedisHealth("redis://127.0.0.1:1/0", metrics=metrics, prefix="p:", clock=clock)
    caplog.set_level(logging.INFO, logger="token_broker.redis")
    assert health.available
    assert health.status == STATUS_OK
    assert metrics.registry.get_sample_value("token_broker_redis_available") == 1

    for _ in range(3):
        health.report_failure("cache_get", ConnectionError("refused"))
        clock.now += 10
    assert not health.available
    assert "unavailable" in health.status
    assert metrics.registry.get_sample_value("token_broker_redis_available") == 0
    assert (
        metrics.registry.get_sample_value(
            "token_broker_redis_errors_total", {"operation": "cache_get"}
        )
        == 3
    )
    assert len(unavailable_logs(caplog)) == 1
    clock.now += 60
    health.report_failure("rate_limit", ConnectionError("refused"))
    records = unavailable_logs(caplog)
    assert len(records) == 2
    assert records[-1].__dict__["operation"] == "rate_limit"
    assert records[-1].__dict__["error"] == "ConnectionError"
    await health.aclose()


async def test_unreachable_at_start_then_recovers_by_itself(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="token_broker.redis")
    private_redis.stop()
    metrics = Metrics.create(redis=True)
    health = RedisHealth(private_redis.url, metrics=metrics, prefix="p:", probe_interval=0.05)
    await health.start()
    try:
        assert not health.available
        assert metrics.registry.get_sample_value("token_broker_redis_available") == 0
        private_redis.start()
        await eventually_async(lambda: health.available, timeout=10, what="the probe to reconnect")
        assert metrics.registry.get_sample_value("token_broker_redis_available") == 1
        assert any(r.getMessage() == "redis.recovered" for r in caplog.records)
        assert await health.client.ping()
    finally:
        await health.aclose()


async def test_healthy_redis_is_available_after_start(redis_url: str) -> None:
    health = RedisHealth(redis_url, metrics=None, prefix="p:")
    await health.start()
    try:
        assert health.available
    finally:
        await health.aclose()


async def test_closed_port_at_start_is_unavailable_without_raising() -> None:
    health = RedisHealth(f"redis://127.0.0.1:{free_port()}/0", metrics=None, prefix="p:")
    await health.start()
    assert not health.available
    await health.aclose()
