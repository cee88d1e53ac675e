"""Two ``token-broker serve`` processes sharing one Redis: one token cache, one set of limits."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from tests.integration.brokers import (
    ENCRYPTION_KEY,
    BrokerProcess,
    Sandbox,
    ask_token,
    broker_environment,
    broker_processes,
    running_sandbox,
    unique_user,
)
from tests.support import redis as redis_support
from tests.support.policies import base_policy, write_policy

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PER_USER_LIMIT = 4


@dataclass
class Replicas:
    a: BrokerProcess
    b: BrokerProcess
    sandbox: Sandbox
    client: httpx.Client
    redis_url: str
    prefix: str


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    directory = tmp_path_factory.mktemp("shared-redis")
    document = base_policy()
    # Per hour: a sliding window straddling a minute boundary could let one more through.
    document["limits"] = {"per_user": f"{PER_USER_LIMIT}/hour", "per_tenant": "100000/hour"}
    policy = write_policy(directory, document)
    with redis_support.redis_url() as url:
        prefix = redis_support.unique_prefix()
        try:
            with running_sandbox() as sandbox:
                environment = broker_environment(
                    sandbox.url,
                    redis_url=url,
                    redis_key_prefix=prefix,
                    cache_encryption_key=ENCRYPTION_KEY,
                )
                with (
                    broker_processes(("a", "b"), policy, environment, directory) as brokers,
                    httpx.Client(timeout=30) as client,
                ):
                    yield Replicas(brokers["a"], brokers["b"], sandbox, client, url, prefix)
        finally:
            redis_support.delete_keys(url, prefix)


@pytest.fixture(autouse=True)
def _clean(replicas: Replicas) -> None:
    replicas.sandbox.clear()


def test_a_token_minted_by_one_replica_is_served_by_the_other(replicas: Replicas) -> None:
    for first, second in ((replicas.a, replicas.b), (replicas.b, replicas.a)):
        user = unique_user()
        minted = ask_token(replicas.client, first, user)
        assert minted.status_code == 200, minted.text
        shared = ask_token(replicas.client, second, user)
        assert shared.status_code == 200, shared.text

        assert shared.json()["token"] == minted.json()["token"]
        assert shared.json()["expires_at"] == minted.json()["expires_at"]
        assert replicas.sandbox.calls_for(user) == 1


def test_replicas_share_nothing_between_different_users(replicas: Replicas) -> None:
    one, two = unique_user(), unique_user()
    first = ask_token(replicas.client, replicas.a, one)
    second = ask_token(replicas.client, replicas.b, two)
    assert first.status_code == second.status_code == 200
    assert first.json()["token"] != second.json()["token"]
    assert replicas.sandbox.calls_for(one) == replicas.sandbox.calls_for(two) == 1


def test_redis_holds_hashed_key_names_and_encrypted_tokens(replicas: Replicas) -> None:
    user = unique_user("redis-visible")
    token = ask_token(replicas.client, replicas.a, user).json()["token"]
    client = redis.Redis.from_url(replicas.redis_url, socket_timeout=5)
    try:
        names = [name.decode() for name in client.scan_iter(match=f"{replicas.prefix}*")]
        assert any(name.startswith(f"{replicas.prefix}tok:") for name in names)
        assert any(name.startswith(f"{replicas.prefix}rl") for name in names)
        assert not [name for name in names if user in name or "acme" in name]
        values = [client.get(name) for name in names if name.startswith(f"{replicas.prefix}tok:")]
        assert not [value for value in values if value is not None and token.encode() in value]
    finally:
        client.close()


def test_the_per_user_limit_holds_across_replicas(replicas: Replicas) -> None:
    user = unique_user("limited")
    order = [replicas.a, replicas.b] * PER_USER_LIMIT
    for hit, broker in enumerate(order[:PER_USER_LIMIT], start=1):
        response = ask_token(replicas.client, broker, user)
        assert response.status_code == 200, response.text
        assert response.headers["ratelimit-limit"] == str(PER_USER_LIMIT)
        # Counted in one place: each replica sees the other's hits.
        assert response.headers["ratelimit-remaining"] == str(PER_USER_LIMIT - hit)
        assert int(response.headers["ratelimit-reset"]) >= 1

    for broker in (replicas.a, replicas.b):
        refused = ask_token(replicas.client, broker, user)
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["ratelimit-limit"] == str(PER_USER_LIMIT)
        assert refused.headers["ratelimit-remaining"] == "0"
        assert int(refused.headers["ratelimit-reset"]) >= 1
    # One vendor call: the other allowed requests were cache hits, refusals call nobody.
    assert replicas.sandbox.calls_for(user) == 1
