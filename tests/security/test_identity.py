"""The same ``sub`` at two issuers is two users everywhere (issue 14, item 7).

Before: the rate limiter separated them, but the token cache did not (the second
issuer's user got the first one's cached token) and audit events had no issuer. Real
broker process, real sandbox, two HS256 issuers with different secrets.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from jose import jwt

from tests.integration.brokers import Sandbox, broker_environment, running_sandbox
from tests.support.eventually import eventually
from tests.support.policies import AUDIENCE, HS_ISSUER, HS_SECRET, base_policy, write_policy
from tests.support.process import BrokerProcess, broker_process
from tests.support.stack import bearer

pytestmark = pytest.mark.slow

OTHER_ISSUER = "partner-portal"
OTHER_SECRET = "partner-portal-secret-0123456789-abcdefghij"


def session(issuer: str, secret: str, sub: str) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": sub,
        "org_id": "acme",
        "roles": ["viewer"],
        "iat": now,
        "exp": now + 600,
    }
    return str(jwt.encode(claims, secret, algorithm="HS256"))


def policy() -> dict[str, Any]:
    document = base_policy()
    document["session"]["issuers"].append(
        {
            "issuer": OTHER_ISSUER,
            "audiences": [AUDIENCE],
            "algorithms": ["HS256"],
            "secret": "${OTHER_HS_SECRET}",
        }
    )
    qualified = copy.deepcopy(document["embeds"]["sales-overview"])
    qualified["request"]["user"] = "{user.issuer}|{user.id}"
    qualified["request"]["securityContext"]["userId"] = "{user.issuer}|{user.id}"
    document["embeds"]["sales-by-issuer"] = qualified
    return document


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, BrokerProcess]]:
    directory = tmp_path_factory.mktemp("identity")
    with running_sandbox() as sandbox:
        env = {**broker_environment(sandbox.url), "OTHER_HS_SECRET": OTHER_SECRET}
        with broker_process(write_policy(directory, policy()), directory, env) as broker:
            yield sandbox, broker


def ask(broker: BrokerProcess, token: str, embed: str = "sales-overview") -> httpx.Response:
    return httpx.post(
        f"{broker.url}/v1/tokens", json={"embed": embed}, headers=bearer(token), timeout=30
    )


def audit_events(broker: BrokerProcess, user: str, count: int) -> list[dict[str, Any]]:
    def logged() -> list[dict[str, Any]]:
        events = [
            event
            for line in broker.log_path.read_bytes().splitlines()
            if line.startswith(b"{")
            for event in [orjson.loads(line)]
            if event.get("event") == "token.issued" and event.get("user_id") == user
        ]
        return events if len(events) >= count else []

    # The log is written by a background listener: wait for the lines, not for a time.
    return eventually(logged, timeout=30, what=f"{count} token.issued events for {user}")


def test_same_sub_at_two_issuers_never_shares_a_cached_token(
    running: tuple[Sandbox, BrokerProcess],
) -> None:
    sandbox, broker = running
    sub = f"user-{time.monotonic_ns()}"
    first = ask(broker, session(HS_ISSUER, HS_SECRET, sub))
    second = ask(broker, session(OTHER_ISSUER, OTHER_SECRET, sub))
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json()["token"] != second.json()["token"]
    assert sandbox.calls_for(sub) == 2  # the second was not a cache hit
    again = ask(broker, session(OTHER_ISSUER, OTHER_SECRET, sub))
    assert again.json()["token"] == second.json()["token"]  # each still has its own cache

    events = audit_events(broker, sub, 3)
    assert [event.get("issuer") for event in events] == [HS_ISSUER, OTHER_ISSUER, OTHER_ISSUER]
    assert [event["cache"] for event in events] == ["miss", "miss", "hit"]


def test_user_issuer_template_qualifies_the_vendor_identity(
    running: tuple[Sandbox, BrokerProcess],
) -> None:
    sandbox, broker = running
    sub = f"user-{time.monotonic_ns()}"
    for issuer, secret in ((HS_ISSUER, HS_SECRET), (OTHER_ISSUER, OTHER_SECRET)):
        assert ask(broker, session(issuer, secret, sub), "sales-by-issuer").status_code == 200
    users = [
        (call["body"] or {}).get("user")
        for call in sandbox.requests()
        if sub in str((call["body"] or {}).get("user"))
    ]
    assert users == [f"{HS_ISSUER}|{sub}", f"{OTHER_ISSUER}|{sub}"]
