"""One user's input must not degrade the service for everyone else (issue 14, items 3, 9, 14).

A real broker process (``token-broker serve``) in front of a rogue vendor on loopback
(:func:`tests.support.rogue.rogue_server`) that behaves as the red team's did: it
answers 500 to one user's body, hangs in one region, or hands out a token with
characters no token has. Assertions are about answers (status codes, codes, which
calls reached the vendor), never about time.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.brokers import broker_environment
from tests.support.eventually import eventually
from tests.support.policies import BASE_ENV, base_policy, write_policy
from tests.support.process import BrokerProcess, broker_process
from tests.support.rogue import RogueRequest, RogueServer, http_response, rogue_server
from tests.support.stack import bearer, session_token

pytestmark = pytest.mark.slow

# A JWT-shaped token (alg none, exp in 2100): the alphabet a vendor really uses.
GOOD_TOKEN = "eyJhbGciOiJub25lIn0.eyJleHAiOjQxMDI0NDQ4MDB9.c2ln"
POISON = "mallory-provokes-500"
HOSTILE_TOKEN = "eyJ'<script>alert(1)</script>"
ECHO = "echo-user"
HANG_US = {"on": True}


def vendor(request: RogueRequest) -> bytes | None:
    """Embeddable as the red team found it: a 500 for one user's body, a hang in ``us``."""
    if request.method != "POST":
        return http_response(404, b"")
    if "/us/" in request.target and HANG_US["on"]:
        return None
    body = json.loads(request.body)
    if POISON in json.dumps(body):
        return http_response(
            500,
            b'{"errorCode":"INTERNAL","errorMessage":"cannot render security context"}',
            {"Content-Type": "application/json"},
        )
    if ECHO in json.dumps(body):  # a vendor that echoes the key it was sent, disguised
        key = request.headers["authorization"].removeprefix("Bearer ")
        message = " / ".join(
            [key.lower(), key[::-1], urllib.parse.quote(key, safe=""), " ".join(key), key[:12]]
        )
        return http_response(
            400,
            json.dumps({"errorCode": "BAD_KEY", "errorMessage": message}).encode(),
            {"Content-Type": "application/json"},
        )
    token = HOSTILE_TOKEN if "hostile" in json.dumps(body) else GOOD_TOKEN
    return http_response(
        200, json.dumps({"token": token}).encode(), {"Content-Type": "application/json"}
    )


def policy() -> dict[str, Any]:
    document = base_policy()
    embeddable = document["providers"]["embeddable"]
    embeddable["max_concurrency"] = 2
    embeddable["timeout_seconds"] = 10
    return document


@pytest.fixture(scope="module")
def rogue() -> Iterator[RogueServer]:
    with rogue_server(vendor) as server:
        yield server


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, rogue: RogueServer) -> Iterator[BrokerProcess]:
    directory = tmp_path_factory.mktemp("shared-fate")
    path = write_policy(directory, policy())
    with broker_process(path, directory, broker_environment(rogue.url)) as running:
        yield running


def ask(broker: BrokerProcess, user: str, tenant: str = "acme") -> httpx.Response:
    session = session_token(user, tenant, ("viewer",))
    return httpx.post(
        f"{broker.url}/v1/tokens",
        json={"embed": "sales-overview"},
        headers=bearer(session),
        timeout=30,
    )


def calls_for(rogue: RogueServer, user: str) -> int:
    return sum(1 for r in rogue.requests if r.method == "POST" and user.encode() in r.body)


def test_one_user_provoking_vendor_500s_cannot_open_the_circuit_for_a_region(
    broker: BrokerProcess, rogue: RogueServer
) -> None:
    # Before: five such requests opened the eu circuit for 30 s, and one more every
    # 30 s (the half-open trial) kept it open; every other tenant in eu got 503.
    for _ in range(12):
        attacked = ask(broker, POISON)
        assert attacked.status_code == 503, attacked.text
        assert "HTTP 500" in attacked.json()["detail"]  # the vendor's answer, not the circuit
    assert calls_for(rogue, POISON) == 12  # each one reached the vendor: never refused
    victim = f"victim-{time.monotonic_ns()}"
    served = ask(broker, victim)
    assert served.status_code == 200, served.text
    assert served.json()["token"] == GOOD_TOKEN
    assert calls_for(rogue, victim) == 1


def test_calls_hung_in_one_region_do_not_hold_another_regions_slots(
    broker: BrokerProcess, rogue: RogueServer
) -> None:
    # Before: max_concurrency was per provider, so calls hanging in us (globex) made
    # eu (acme) wait until a hung call gave up (the red team saw 4.2 s, then 503s).
    # Now eu is answered while both us calls are still held by the vendor.
    HANG_US["on"] = True
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            hung = [pool.submit(ask, broker, f"hung-{i}", "globex") for i in range(4)]
            # us is full: two held, two waiting for a slot
            eventually(lambda: rogue.hanging >= 2, timeout=60, what="two hung vendor calls")
            served = ask(broker, f"healthy-{time.monotonic_ns()}")
            held_while_served = rogue.hanging
            HANG_US["on"] = False
            rogue.release()
            outcomes = [future.result() for future in hung]
    finally:
        HANG_US["on"] = False
    assert served.status_code == 200, served.text
    assert held_while_served == 2
    # The us region is bounded on its own: never more than two at the vendor at once.
    assert all(r.status_code == 200 for r in outcomes), [r.text for r in outcomes]
    metrics = httpx.get(f"{broker.url}/metrics", timeout=10).text
    # The series exists from start-up at 0 (known label sets are pre-created): it must
    # still be 0 for the healthy region.
    refused = [
        line
        for line in _lines_for(metrics, 'region="eu"').splitlines()
        if 'status="concurrency_limit"' in line
    ]
    assert all(line.endswith(" 0.0") for line in refused), refused


def _lines_for(metrics: str, needle: str) -> str:
    return "\n".join(
        line
        for line in metrics.splitlines()
        if line.startswith("token_broker_upstream_requests_total{") and needle in line
    )


def test_a_token_with_characters_no_vendor_token_has_is_refused(broker: BrokerProcess) -> None:
    # Before: ' < > were accepted, and the token went into the page's HTML attribute.
    refused = ask(broker, "hostile-user")
    assert refused.status_code == 502, refused.text
    assert refused.json()["code"] == "upstream_bad_response"
    assert HOSTILE_TOKEN not in refused.text


def test_vendor_messages_quoting_the_key_in_disguise_are_withheld(broker: BrokerProcess) -> None:
    # Before: the lowercased, reversed, %-encoded and letter-spaced key reached the
    # caller in the problem detail (and the logs).
    answer = ask(broker, ECHO)
    assert answer.status_code == 502, answer.text
    detail = answer.json()["detail"]
    assert "BAD_KEY" in detail  # the vendor's code still helps the operator
    key = BASE_ENV["EMBEDDABLE_EU_API_KEY"]
    folded = "".join(char for char in urllib.parse.unquote(answer.text).lower() if char.isalnum())
    core = "".join(char for char in key.lower() if char.isalnum())
    for start in range(len(core) - 11):
        assert core[start : start + 12] not in folded
        assert core[start : start + 12][::-1] not in folded
    log = broker.output().lower()
    assert key.lower() not in log and key[::-1].lower() not in log
