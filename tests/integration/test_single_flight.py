"""Many identical requests at once on a cold cache: one vendor call (single-flight)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.brokers import unique_user
from tests.support.policies import base_policy
from tests.support.stack import Stack, bearer, running_stack, session_token

pytestmark = pytest.mark.anyio

CONCURRENT = 200
VENDOR_LATENCY_MS = 300


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("single-flight"), base_policy()) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean(stack: Stack) -> None:
    stack.clear_vendor_requests()
    stack.clear_faults()


async def ask_all_at_once(stack: Stack, session: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{stack.broker}/v1/tokens",
                    json={"embed": "sales-overview"},
                    headers=bearer(session),
                )
                for _ in range(count)
            )
        )


def audit_cache_states(caplog: pytest.LogCaptureFixture, user: str) -> Counter[str]:
    return Counter(
        record.__dict__["cache"]
        for record in caplog.records
        if record.name == "token_broker.audit" and record.__dict__.get("user_id") == user
    )


async def test_concurrent_identical_requests_make_one_vendor_call(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="token_broker.audit")
    stack.set_fault({"vendor": "embeddable", "latency_ms": VENDOR_LATENCY_MS})
    user = unique_user("crowd")

    responses = await ask_all_at_once(stack, session_token(user, "acme"), CONCURRENT)

    assert [r.status_code for r in responses] == [200] * CONCURRENT
    tokens = {r.json()["token"] for r in responses}
    assert len(tokens) == 1
    (call,) = stack.vendor_requests()
    assert call["token"] in tokens
    states = audit_cache_states(caplog, user)
    assert states["miss"] == 1
    assert states["coalesced"] >= 1  # waited on the in-flight call, not only cache hits
    assert states["miss"] + states["coalesced"] + states["hit"] == CONCURRENT


async def test_a_failed_call_fails_every_waiter_and_caches_nothing(stack: Stack) -> None:
    # 500 is not retried: one failed call, seen by everyone who waited on it.
    stack.set_fault(
        {"vendor": "embeddable", "latency_ms": VENDOR_LATENCY_MS, "status": 500, "count": 1}
    )
    session = session_token(unique_user("crowd-failed"), "acme")

    responses = await ask_all_at_once(stack, session, 50)

    assert {r.status_code for r in responses} == {503}
    assert {r.json()["code"] for r in responses} == {"upstream_unavailable"}
    assert len(stack.vendor_requests()) == 1

    retried = await ask_all_at_once(stack, session, 1)
    assert retried[0].status_code == 200
    assert len(stack.vendor_requests()) == 2
