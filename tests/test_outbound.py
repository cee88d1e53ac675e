"""app.outbound: the stray-response guard (issue 14 item 5), proxy routing, descriptions.

The malicious vendor is :func:`tests.support.rogue.rogue_server`, raw sockets on
loopback in a thread of its own: it answers alice's token call, then sends the same
answer again, unasked, on the kept-alive connection (300 ms later while the connection
sits in the client's pool, or in the same write, or split across both). The next call,
bob's (another tenant, another region of the same vendor host), must get bob's token:
never alice's. Against aiohttp's own pool (the control) the same attack succeeds.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx
import orjson
import pytest

from app.outbound import (
    OutboundOptions,
    create_outbound_client,
    describe,
    outbound_description,
    proxy_routes,
    without_credentials,
)
from app.providers.embeddable import EmbeddableConfig, EmbeddableProvider
from tests.support.eventually import eventually_async
from tests.support.rogue import (
    RogueRequest,
    RogueServer,
    Trailing,
    rogue_server,
    token_answer,
    unread_bytes_from,
    user_of,
    vendor_token,
)

pytestmark = pytest.mark.anyio

ALICE = "alice-of-acme"
BOB = "bob-of-globex"
SPLIT_AT = 20  # the stray answer's first bytes: part of its status line


# How the stray copy of alice's answer arrives, and how many stray writes that takes
# before bob asks (split-next sends its second part only when bob's request arrives).
MODES: dict[str, tuple[dict[str, object], int]] = {
    "late": ({"later": "all"}, 1),
    "same-write": ({"now": "all"}, 1),
    "split-late": ({"now": "head", "later": "rest"}, 2),
    "split-next": ({"now": "head", "later": "rest", "later_on_next_request": True}, 1),
}


def trailing(mode: str, answer: bytes) -> Trailing:
    plan, _ = MODES[mode]
    parts = {"all": answer, "head": answer[:SPLIT_AT], "rest": answer[SPLIT_AT:]}
    return Trailing(
        answer=answer,
        now=parts[str(plan["now"])] if "now" in plan else b"",
        later=parts[str(plan["later"])] if "later" in plan else b"",
        later_on_next_request=bool(plan.get("later_on_next_request", False)),
    )


@pytest.fixture
def stray_mode() -> str:
    return "late"


@pytest.fixture
def rogue(stray_mode: str) -> Iterator[RogueServer]:
    def respond(request: RogueRequest) -> bytes | Trailing:
        user = str(json.loads(request.body)["user"])
        answer = token_answer(user)
        return trailing(stray_mode, answer) if user == ALICE else answer

    with rogue_server(respond) as server:
        yield server


async def strays_read(rogue: RogueServer, mode: str) -> None:
    """Until the stray bytes were sent and the client's event loop has read them all."""
    _, writes = MODES[mode]
    port = int(rogue.url.rsplit(":", 1)[1])
    await eventually_async(
        lambda: rogue.strays_sent >= writes and unread_bytes_from(port) == 0,
        what="the stray answer sent and read by the client",
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with create_outbound_client(OutboundOptions(trust_env=False)) as outbound:
        yield outbound


def two_region_provider(rogue: RogueServer, client: httpx.AsyncClient) -> EmbeddableProvider:
    """Two tenants' accounts (regions) of one vendor on one host: one pool serves both."""
    config = EmbeddableConfig.model_validate(
        {
            "type": "embeddable",
            "regions": {
                "eu": {"api_key": "eu-key-0123456789", "base_url": f"{rogue.url}/eu"},
                "us": {"api_key": "us-key-0123456789", "base_url": f"{rogue.url}/us"},
            },
        }
    )
    return EmbeddableProvider("embeddable", config, http_client=client)


def body(user: str) -> dict[str, str]:
    return {"embeddableId": "c2b1a0de-0000-4000-8000-000000000001", "user": user}


@pytest.mark.parametrize("stray_mode", list(MODES))
@pytest.mark.parametrize("bob_region", ["us", "eu"], ids=["other-region", "same-region"])
async def test_a_stray_answer_never_reaches_the_next_caller(
    rogue: RogueServer, client: httpx.AsyncClient, stray_mode: str, bob_region: str
) -> None:
    provider = two_region_provider(rogue, client)

    alice = await provider.issue(body(ALICE), 600, "eu")
    await strays_read(rogue, stray_mode)
    bob = await provider.issue(body(BOB), 600, bob_region)

    assert user_of(alice.token) == ALICE
    assert user_of(bob.token) == BOB  # before the guard: ALICE (the stray answer)
    # Alice's connection was dropped, not reused: bob's call opened a second one.
    assert rogue.connections == 2


async def test_a_well_behaved_vendors_connection_is_reused(
    rogue: RogueServer, client: httpx.AsyncClient
) -> None:
    # The guard must not cost keep-alive: without stray bytes, one connection serves all.
    provider = two_region_provider(rogue, client)
    for user in (BOB, "carol", "dave"):
        issued = await provider.issue(body(user), 600, "us")
        assert user_of(issued.token) == user
    assert rogue.connections == 1


async def test_a_chunked_answer_keeps_its_connection_too(client: httpx.AsyncClient) -> None:
    # A chunked answer's end is its empty last chunk, not a length: still reusable.
    def respond(request: RogueRequest) -> bytes:
        payload = orjson.dumps({"token": vendor_token(str(json.loads(request.body)["user"]))})
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:9], payload[9:])
        )
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"

    with rogue_server(respond) as rogue:
        provider = two_region_provider(rogue, client)
        for user in (BOB, "carol"):
            issued = await provider.issue(body(user), 600, "us")
            assert user_of(issued.token) == user
        assert rogue.connections == 1


@pytest.mark.parametrize(
    ("stray_mode", "bob_gets"),
    [("late", ALICE), ("split-late", ALICE), ("split-next", "an error"), ("same-write", BOB)],
)
async def test_the_control_aiohttps_own_pool_hands_the_stray_answer_on(
    rogue: RogueServer, stray_mode: str, bob_gets: str
) -> None:
    """The same vendor against a plain aiohttp pool: the attack the guard stops works
    there. aiohttp alone drops a connection with a *whole* second answer buffered, and
    parses each answer with a new parser, so a stray's rest arriving after the next
    request left breaks that request instead of answering it."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{rogue.url}/eu", json=body(ALICE)) as first:
            alice = orjson.loads(await first.read())["token"]
        await strays_read(rogue, stray_mode)
        try:
            async with session.post(f"{rogue.url}/us", json=body(BOB)) as second:
                bob = user_of(orjson.loads(await second.read())["token"])
        except aiohttp.ClientResponseError:
            bob = "an error"

    assert user_of(alice) == ALICE
    assert bob == bob_gets


# --- proxy routes and what is shown -------------------------------------------------------


def test_routes_follow_httpx_reading_of_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "idp.internal,.corp.example")
    for name in ("HTTP_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)

    routes = proxy_routes(OutboundOptions())

    assert routes["https://"] == "http://proxy.internal:3128"
    assert routes["all://*idp.internal"] is None
    assert "http://" not in routes
    assert proxy_routes(OutboundOptions(trust_env=False)) == {}


def test_the_broker_proxy_setting_wins_and_no_proxy_still_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://other.internal:8080")
    monkeypatch.setenv("NO_PROXY", "idp.internal")

    routes = proxy_routes(OutboundOptions(proxy="http://egress.internal:3128"))

    assert routes == {"all://": "http://egress.internal:3128", "all://*idp.internal": None}


def test_descriptions_never_show_proxy_credentials() -> None:
    shown = describe({"all://": "http://user:s3cret-pw@egress.internal:3128/?token=x"})

    assert shown["proxy"] == {"all://": "http://egress.internal:3128"}
    assert shown["transport"].startswith("aiohttp ")
    assert "s3cret" not in str(shown)
    assert without_credentials("https://u:p@[::1]:8443/x") == "https://[::1]:8443"


async def test_an_injected_client_is_described_as_injected() -> None:
    async with httpx.AsyncClient() as client:
        assert outbound_description(client) == {
            "transport": "injected AsyncClient",
            "proxy": None,
        }
