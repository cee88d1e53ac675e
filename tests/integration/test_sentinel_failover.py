"""Redis fails over under load: three brokers behind real Sentinels keep answering.

The master is SIGKILLed while requests (new users, so vendor calls and cache writes, and
repeat users, so cache reads) stream to three ``token-broker serve`` processes. The
Sentinels promote the replica; meanwhile each broker serves from its in-process cache
and limits (operations.md "Redis outages"), then finds the new master through the
Sentinels by itself. Asserted: no request fails at all (stronger than "not for longer
than the failover"), the brokers share tokens through the promoted master afterwards,
and nothing in it is plaintext.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

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
from tests.support.eventually import eventually
from tests.support.policies import base_policy, write_policy
from tests.support.redis_topologies import SentinelSetup, start_sentinel
from tests.support.stack import bearer, session_token

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PREFIX = "tb-failover:"
RECOVERY_TIMEOUT_SECONDS = 60.0


@dataclass
class Load:
    """Requests streaming to every broker until ``stop`` is set."""

    brokers: list[BrokerProcess]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    sent: int = 0

    async def run(self, worker: int) -> None:
        repeat = session_token(f"failover-repeat-{worker}", "acme")
        async with httpx.AsyncClient(timeout=30) as client:
            for number in itertools.count():
                if self.stop.is_set():
                    return
                broker = self.brokers[(worker + number) % len(self.brokers)]
                # Every other request a new user: a vendor call and a cache write.
                session = (
                    session_token(unique_user(f"failover-{worker}"), "acme")
                    if number % 2
                    else repeat
                )
                try:
                    response = await client.post(
                        f"{broker.url}/v1/tokens",
                        json={"embed": "sales-overview"},
                        headers=bearer(session),
                    )
                except httpx.TransportError as exc:
                    self.failures.append(f"{broker.name}: {type(exc).__name__}")
                    continue
                finally:
                    self.sent += 1
                self.statuses[response.status_code] += 1
                if response.status_code == 200:
                    self.tokens.add(response.json()["token"])
                else:
                    self.failures.append(f"{broker.name}: {response.status_code} {response.text}")


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelSetup]:
    with start_sentinel() as setup:
        yield setup


@pytest.fixture(scope="module")
def brokers(
    tmp_path_factory: pytest.TempPathFactory, sentinel: SentinelSetup
) -> Iterator[tuple[dict[str, BrokerProcess], Sandbox]]:
    directory = tmp_path_factory.mktemp("failover")
    policy = write_policy(directory, base_policy())
    with running_sandbox() as sandbox:
        environment = broker_environment(
            sandbox.url,
            redis_url=sentinel.url,
            redis_key_prefix=PREFIX,
            cache_encryption_key=ENCRYPTION_KEY,
        )
        with broker_processes(("a", "b", "c"), policy, environment, directory) as running:
            yield running, sandbox


def redis_check(client: httpx.Client, broker: BrokerProcess) -> str:
    return str(client.get(f"{broker.url}/readyz").json()["checks"]["redis"])


def test_failover_under_load_fails_no_request_and_caches_nothing_in_plaintext(
    sentinel: SentinelSetup, brokers: tuple[dict[str, BrokerProcess], Sandbox]
) -> None:
    running, sandbox = brokers
    fleet = list(running.values())
    load = Load(fleet)
    client = httpx.Client(timeout=10)
    _, old_port = sentinel.master_address()

    async def through_a_failover() -> None:
        workers = [asyncio.create_task(load.run(worker)) for worker in range(6)]
        try:
            await asyncio.to_thread(eventually, lambda: load.sent >= 60, what="load is flowing")
            await asyncio.to_thread(sentinel.kill_master)
            await asyncio.to_thread(sentinel.wait_for_failover, old_port)
            for broker in fleet:
                await asyncio.to_thread(
                    eventually,
                    lambda broker=broker: redis_check(client, broker) == "ok",
                    timeout=RECOVERY_TIMEOUT_SECONDS,
                    what=f"broker {broker.name} uses the promoted master",
                )
            settled = load.sent
            await asyncio.to_thread(
                eventually, lambda: load.sent >= settled + 60, what="load after the failover"
            )
        finally:
            load.stop.set()
            await asyncio.gather(*workers)

    try:
        asyncio.run(through_a_failover())
    finally:
        client.close()

    assert load.failures == []
    assert load.statuses == Counter({200: load.sent})

    # Sharing works again, through the promoted master.
    user = unique_user("after-failover")
    with httpx.Client(timeout=30) as http:
        minted = ask_token(http, running["a"], user)
        shared = ask_token(http, running["c"], user)
    assert minted.status_code == shared.status_code == 200
    assert shared.json()["token"] == minted.json()["token"]
    assert sandbox.calls_for(user) == 1

    master = sentinel.master_client()
    try:
        names = list(master.scan_iter(match=f"{PREFIX}tok:*"))
        assert names, "the promoted master holds the fleet's tokens"
        issued = {*load.tokens, minted.json()["token"]}
        for name in names:
            value = master.get(name)
            assert isinstance(value, bytes)
            assert not [token for token in issued if token.encode() in value]
    finally:
        master.close()
