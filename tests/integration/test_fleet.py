"""Three ``token-broker serve`` processes on a real 3-node Redis Cluster (operations.md
"Fleet mode"): identical cold requests spread over the fleet make one vendor call; a
vendor error reaches every waiter on every replica; when the replica holding the lock
is SIGKILLed mid-call, exactly one other replica takes over and every request to the
survivors is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.brokers import (
    ENCRYPTION_KEY,
    BrokerProcess,
    Sandbox,
    broker_environment,
    broker_processes,
    metric_value,
    running_sandbox,
    unique_user,
)
from tests.support.eventually import eventually
from tests.support.policies import base_policy, write_policy
from tests.support.redis_topologies import ClusterSetup, start_cluster
from tests.support.stack import bearer, session_token

pytestmark = [pytest.mark.redis, pytest.mark.slow]

VENDOR_TIMEOUT_SECONDS = 4  # the fleet lock lives this long plus 1 s
PER_BROKER = 20


@dataclass
class Fleet:
    brokers: dict[str, BrokerProcess]
    sandbox: Sandbox
    cluster: ClusterSetup


def fleet_policy(directory: Path) -> Path:
    document = base_policy()
    document["providers"]["embeddable"]["timeout_seconds"] = VENDOR_TIMEOUT_SECONDS
    return write_policy(directory, document)


@contextlib.contextmanager
def running_fleet(directory: Path, cluster: ClusterSetup) -> Iterator[Fleet]:
    policy = fleet_policy(directory)
    with running_sandbox() as sandbox:
        environment = broker_environment(
            sandbox.url,
            redis_url=cluster.url,
            redis_key_prefix="tb-fleet:",
            cache_encryption_key=ENCRYPTION_KEY,
        )
        with broker_processes(("a", "b", "c"), policy, environment, directory) as brokers:
            yield Fleet(brokers, sandbox, cluster)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterSetup]:
    with start_cluster() as setup:
        yield setup


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, cluster: ClusterSetup) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("fleet"), cluster) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> None:
    if "fleet" in request.fixturenames:
        fleet: Fleet = request.getfixturevalue("fleet")
        fleet.sandbox.clear()


async def ask(urls: list[str], session: str) -> list[httpx.Response]:
    """One ``POST /v1/tokens`` per URL, all at once."""
    limits = httpx.Limits(max_connections=len(urls), max_keepalive_connections=len(urls))
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{url}/v1/tokens", json={"embed": "sales-overview"}, headers=bearer(session)
                )
                for url in urls
            )
        )


def fleet_roles(broker: BrokerProcess) -> dict[str, float]:
    text = httpx.get(f"{broker.url}/metrics", timeout=10).text
    return {
        role: metric_value(text, f'token_broker_fleet_flights_total{{role="{role}"}}') or 0.0
        for role in ("leader", "follower", "takeover", "local")
    }


def total_roles(brokers: list[BrokerProcess]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for broker in brokers:
        for role, value in fleet_roles(broker).items():
            totals[role] = totals.get(role, 0.0) + value
    return totals


def test_identical_cold_requests_over_three_replicas_make_one_vendor_call(fleet: Fleet) -> None:
    fleet.sandbox.client.post(
        f"{fleet.sandbox.url}/_sandbox/faults", json={"vendor": "embeddable", "latency_ms": 500}
    ).raise_for_status()
    user = unique_user("fleet-herd")
    before = total_roles(list(fleet.brokers.values()))
    urls = [broker.url for broker in fleet.brokers.values() for _ in range(PER_BROKER)]

    responses = asyncio.run(ask(urls, session_token(user, "acme")))

    assert [r.status_code for r in responses] == [200] * len(urls)
    assert len({r.json()["token"] for r in responses}) == 1
    assert fleet.sandbox.calls_for(user) == 1
    after = total_roles(list(fleet.brokers.values()))
    assert after["leader"] - before["leader"] == 1
    # The other two replicas took the leader's token (or, arriving late, found it cached).
    assert after["local"] == before["local"]


def test_a_vendor_error_reaches_every_replica_and_nothing_is_cached(fleet: Fleet) -> None:
    # 500 is not retried: one failed call. Latency keeps the followers waiting on it.
    fleet.sandbox.client.post(
        f"{fleet.sandbox.url}/_sandbox/faults",
        json={"vendor": "embeddable", "latency_ms": 2000, "status": 500, "count": 1},
    ).raise_for_status()
    user = unique_user("fleet-error")
    session = session_token(user, "acme")
    a, b, c = fleet.brokers.values()

    async def leader_then_followers() -> list[httpx.Response]:
        first = asyncio.create_task(ask([a.url], session))
        await asyncio.to_thread(
            eventually, lambda: fleet.sandbox.calls_for(user) == 1, what="a calls the vendor"
        )
        rest = await ask([b.url, c.url] * 5, session)
        return [*(await first), *rest]

    responses = asyncio.run(leader_then_followers())

    assert {r.status_code for r in responses} == {503}
    assert {r.json()["code"] for r in responses} == {"upstream_unavailable"}
    assert len({r.json()["detail"] for r in responses}) == 1
    assert fleet.sandbox.calls_for(user) == 1
    # Nothing cached: the next request is a new vendor call, and it succeeds.
    retried = asyncio.run(ask([c.url], session))[0]
    assert retried.status_code == 200, retried.text
    assert fleet.sandbox.calls_for(user) == 2


def test_killing_the_lock_holder_mid_call_leads_to_exactly_one_takeover(
    tmp_path: Path, cluster: ClusterSetup
) -> None:
    with running_fleet(tmp_path, cluster) as fleet:
        fleet.sandbox.client.post(
            f"{fleet.sandbox.url}/_sandbox/faults",
            json={"vendor": "embeddable", "latency_ms": 1500},
        ).raise_for_status()
        a, b, c = fleet.brokers.values()
        user = unique_user("fleet-kill")
        session = session_token(user, "acme")

        doomed: list[BaseException] = []

        def ask_the_doomed_leader() -> None:
            try:
                asyncio.run(ask([a.url], session))
            except httpx.TransportError as exc:  # the broker dies under the request
                doomed.append(exc)

        leader = threading.Thread(target=ask_the_doomed_leader)
        leader.start()
        eventually(lambda: fleet.sandbox.calls_for(user) == 1, what="a calls the vendor")

        async def followers_while_a_dies() -> list[httpx.Response]:
            waiting = asyncio.create_task(ask([b.url, c.url] * (PER_BROKER // 2), session))
            # SIGKILL: no release, no error published; the lock must expire. Whether b's
            # and c's requests arrive before or after the kill makes no difference: a's
            # lock stays in Redis until it expires either way.
            a.process.kill()
            return await waiting

        responses = asyncio.run(followers_while_a_dies())
        leader.join(timeout=30)

        assert [r.status_code for r in responses] == [200] * PER_BROKER
        assert len({r.json()["token"] for r in responses}) == 1
        assert len(doomed) == 1
        assert fleet.sandbox.calls_for(user) == 2  # a's call, then exactly one takeover
        survivors = total_roles([b, c])
        assert survivors["takeover"] == 1
        assert survivors["leader"] == 0
        assert survivors["local"] == 0
