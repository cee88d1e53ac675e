"""A stray vendor answer must never become another user's token (issue 14, item 5).

As the red team ran it: a real broker process (``token-broker serve``) in front of a
rogue Embeddable on loopback (:func:`tests.support.rogue.rogue_server`, raw sockets)
that answers alice's token call and then sends the same answer again, unasked, on the
kept-alive connection: 300 ms later while the broker holds the connection idle in its
pool, or in the same write, or its first bytes in the same write and the rest later.
Before the guard in ``app.outbound``, bob's call (another tenant, the other region on
the same vendor host) reused that connection, read alice's token as his own and cached
it under his key. Assertions are about which token each user holds, never about time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.brokers import broker_environment
from tests.support.eventually import eventually
from tests.support.policies import base_policy, write_policy
from tests.support.process import BrokerProcess, broker_process
from tests.support.rogue import (
    RogueRequest,
    RogueServer,
    Trailing,
    rogue_server,
    token_answer,
    unread_bytes_from,
    user_of,
)
from tests.support.stack import bearer, session_token

pytestmark = pytest.mark.slow

SPLIT_AT = 20
MODE = {"now": "late"}
"""How the current test's vendor sends the stray copy of alice's answer."""


def vendor(request: RogueRequest) -> bytes | Trailing:
    user = str(json.loads(request.body)["user"])
    answer = token_answer(user)
    if not user.startswith("alice"):
        return answer
    mode = MODE["now"]
    if mode == "late":
        return Trailing(answer, later=answer)
    if mode == "same-write":
        return Trailing(answer, now=answer)
    return Trailing(answer, now=answer[:SPLIT_AT], later=answer[SPLIT_AT:])  # split-late


STRAY_WRITES = {"late": 1, "same-write": 1, "split-late": 2}


@pytest.fixture(scope="module")
def rogue() -> Iterator[RogueServer]:
    with rogue_server(vendor) as server:
        yield server


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, rogue: RogueServer) -> Iterator[BrokerProcess]:
    directory = tmp_path_factory.mktemp("stray-response")
    document: dict[str, Any] = base_policy()
    path = write_policy(directory, document)
    with broker_process(path, directory, broker_environment(rogue.url)) as running:
        yield running


def token_for(broker: BrokerProcess, user: str, tenant: str) -> str:
    answer = httpx.post(
        f"{broker.url}/v1/tokens",
        json={"embed": "sales-overview"},
        headers=bearer(session_token(user, tenant, ("viewer",))),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


@pytest.mark.parametrize("mode", list(STRAY_WRITES))
def test_a_stray_answer_is_never_another_users_token(
    broker: BrokerProcess, rogue: RogueServer, mode: str
) -> None:
    MODE["now"] = mode
    alice, bob, carol = f"alice-{mode}", f"bob-{mode}", f"carol-{mode}"
    written_before = rogue.strays_sent
    port = int(rogue.url.rsplit(":", 1)[1])

    assert user_of(token_for(broker, alice, "acme")) == alice  # acme: region eu
    # The stray bytes have been sent and the broker's event loop has read them.
    eventually(
        lambda: (
            rogue.strays_sent >= written_before + STRAY_WRITES[mode]
            and unread_bytes_from(port) == 0
        ),
        what="the stray answer sent and read by the broker",
    )

    # globex is in region us, on the same vendor host: before the guard, alice's token.
    assert user_of(token_for(broker, bob, "globex")) == bob
    # Nor was anything wrong cached under bob's key, and alice's own region is clean.
    assert user_of(token_for(broker, bob, "globex")) == bob
    assert user_of(token_for(broker, carol, "acme")) == carol
    assert user_of(token_for(broker, alice, "acme")) == alice  # her cached token
