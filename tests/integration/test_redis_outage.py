"""Redis dies under two running brokers, then comes back (operations.md "Redis outages").

The Redis here is this module's own (``start_private_redis``): it is SIGKILLed and
restarted on the same port, which must never happen to a developer's Redis.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration.brokers import (
    ENCRYPTION_KEY,
    BrokerProcess,
    Sandbox,
    ask_token,
    broker_environment,
    broker_processes,
    metric_value,
    running_sandbox,
    unique_user,
)
from tests.support.eventually import eventually
from tests.support.policies import base_policy, write_policy
from tests.support.redis import RedisServer, start_private_redis

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PER_USER_LIMIT = 50
RECOVERY_TIMEOUT_SECONDS = 20.0
REDIS_GAUGE = "token_broker_redis_available"


@dataclass
class Replicas:
    a: BrokerProcess
    b: BrokerProcess
    sandbox: Sandbox
    client: httpx.Client
    redis: RedisServer

    @property
    def brokers(self) -> tuple[BrokerProcess, BrokerProcess]:
        return (self.a, self.b)

    def readiness(self, broker: BrokerProcess) -> tuple[int, dict[str, Any]]:
        response = self.client.get(f"{broker.url}/readyz")
        return response.status_code, response.json()

    def ping_failures(self, broker: BrokerProcess) -> float:
        response = self.client.get(f"{broker.url}/metrics")
        assert response.status_code == 200, f"GET /metrics: {response.status_code}"
        found = metric_value(response.text, 'token_broker_redis_errors_total{operation="ping"}')
        return found or 0.0

    def redis_gauge(self, broker: BrokerProcess) -> float | None:
        response = self.client.get(f"{broker.url}/metrics")
        assert response.status_code == 200, f"GET /metrics: {response.status_code}"
        return metric_value(response.text, REDIS_GAUGE)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    directory = tmp_path_factory.mktemp("redis-outage")
    document = base_policy()
    document["limits"] = {"per_user": f"{PER_USER_LIMIT}/hour", "per_tenant": "100000/hour"}
    policy = write_policy(directory, document)
    with start_private_redis() as server, running_sandbox() as sandbox:
        environment = broker_environment(
            sandbox.url,
            redis_url=server.url,
            redis_key_prefix="tb-outage:",
            cache_encryption_key=ENCRYPTION_KEY,
        )
        with (
            broker_processes(("a", "b"), policy, environment, directory) as brokers,
            httpx.Client(timeout=30) as client,
        ):
            yield Replicas(brokers["a"], brokers["b"], sandbox, client, server)


@pytest.fixture(autouse=True)
def _clean(replicas: Replicas) -> None:
    replicas.sandbox.clear()


def redis_ok(replicas: Replicas, broker: BrokerProcess) -> bool:
    return bool(replicas.readiness(broker)[1]["checks"]["redis"] == "ok")


def logged_at_least(broker: BrokerProcess, event: str, count: int) -> bool:
    return len(broker.log_events(event)) >= count


def wait_for_redis_on_every_broker(replicas: Replicas) -> None:
    """Until each broker's /readyz reports Redis ``ok`` again."""
    for broker in replicas.brokers:
        eventually(
            functools.partial(redis_ok, replicas, broker),
            timeout=RECOVERY_TIMEOUT_SECONDS,
            what=f"broker {broker.name} reconnects to Redis",
        )


@contextlib.contextmanager
def redis_killed(replicas: Replicas) -> Iterator[None]:
    """SIGKILL Redis for the block; restart it on the same port and wait for reconnection."""
    replicas.redis.stop(kill=True)
    try:
        yield
    finally:
        replicas.redis.start()
        wait_for_redis_on_every_broker(replicas)


def token_for(replicas: Replicas, broker: BrokerProcess, user: str) -> httpx.Response:
    response = ask_token(replicas.client, broker, user)
    assert response.status_code == 200, f"{broker.name}: {response.text}"
    return response


def remaining(response: httpx.Response) -> int:
    return int(response.headers["ratelimit-remaining"])


def test_brokers_keep_serving_from_in_process_state_while_redis_is_down(
    replicas: Replicas,
) -> None:
    before = unique_user("before-outage")
    cached = token_for(replicas, replicas.a, before).json()["token"]
    assert token_for(replicas, replicas.b, before).json()["token"] == cached
    assert replicas.sandbox.calls_for(before) == 1

    with redis_killed(replicas):
        during = unique_user("during-outage")
        first_a = token_for(replicas, replicas.a, during)
        first_b = token_for(replicas, replicas.b, during)
        second_a = token_for(replicas, replicas.a, during)
        # Each replica on its own: one vendor call each, then its own cache.
        assert replicas.sandbox.calls_for(during) == 2
        assert second_a.json()["token"] == first_a.json()["token"]
        # ...and its own counters: limits are looser during an outage, never stricter.
        assert remaining(first_a) == remaining(first_b) == PER_USER_LIMIT - 1
        assert remaining(second_a) == PER_USER_LIMIT - 2
        # A token cached before the outage is still served from the near cache.
        for broker in replicas.brokers:
            assert token_for(replicas, broker, before).json()["token"] == cached
        assert replicas.sandbox.calls_for(before) == 1

        for broker in replicas.brokers:
            status, body = replicas.readiness(broker)
            assert status == 200, body
            assert body["status"] == "ready"
            assert body["checks"]["redis"].startswith("unavailable")


def test_metrics_show_redis_unavailable_during_the_outage(replicas: Replicas) -> None:
    for broker in replicas.brokers:
        assert replicas.redis_gauge(broker) == 1
    with redis_killed(replicas):
        for broker in replicas.brokers:
            token_for(replicas, broker, unique_user("gauge"))  # a Redis operation fails
            assert replicas.redis_gauge(broker) == 0
    for broker in replicas.brokers:
        assert replicas.redis_gauge(broker) == 1


def probed_again(replicas: Replicas, broker: BrokerProcess, before: float) -> bool:
    return replicas.ping_failures(broker) > before


def test_sharing_resumes_after_redis_restarts(replicas: Replicas) -> None:
    unavailable_logs = {b.name: len(b.log_events("redis.unavailable")) for b in replicas.brokers}
    recovered_logs = {b.name: len(b.log_events("redis.recovered")) for b in replicas.brokers}
    with redis_killed(replicas):
        for broker in replicas.brokers:
            for _ in range(3):
                token_for(replicas, broker, unique_user("outage"))
        # Let the background probe fail at least once more: still one log line per outage.
        probes = {b.name: replicas.ping_failures(b) for b in replicas.brokers}
        for broker in replicas.brokers:
            eventually(
                functools.partial(probed_again, replicas, broker, probes[broker.name]),
                what=f"{broker.name}'s Redis probe fails again",
            )

    user = unique_user("after-outage")
    minted = token_for(replicas, replicas.a, user)
    shared = token_for(replicas, replicas.b, user)
    assert shared.json()["token"] == minted.json()["token"]
    assert replicas.sandbox.calls_for(user) == 1
    assert remaining(minted) == PER_USER_LIMIT - 1
    assert remaining(shared) == PER_USER_LIMIT - 2

    for broker in replicas.brokers:
        # Log lines reach the file from a writer thread, in batches: wait for them.
        for event, before in (
            ("redis.unavailable", unavailable_logs),
            ("redis.recovered", recovered_logs),
        ):
            eventually(
                functools.partial(logged_at_least, broker, event, before[broker.name] + 1),
                what=f"{broker.name}'s {event} line",
            )
            assert len(broker.log_events(event)) == before[broker.name] + 1
        status, body = replicas.readiness(broker)
        assert (status, body["checks"]["redis"]) == (200, "ok")
