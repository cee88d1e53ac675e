"""app.outbound: the stray-response guard (issue 14 item 5), proxy routing, descriptions.

The malicious vendor is a raw-socket server on loopback: it answers the first request
on a connection, then sends an unsolicited second response on the kept-alive
connection. Whoever asks next on that connection, another tenant's user, must never
read it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

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
from tests.providers.test_http import jwt_with

pytestmark = pytest.mark.anyio


def _response(token: str) -> bytes:
    body = orjson.dumps({"token": token})
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


@dataclass
class StrayVendor:
    """Answers each request with a token naming its connection and request; after the
    first answer on a connection it sends a stray answer (at once, in the same write,
    or later, while the connection sits idle in the client's pool)."""

    delayed: bool
    port: int = 0
    stray_sent: asyncio.Event = field(default_factory=asyncio.Event)
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def token(self, label: str) -> str:
        return jwt_with({"label": label, "exp": 4_102_444_800})

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        connection = self.connections
        requests = 0
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                requests += 1
                answer = _response(self.token(f"conn{connection}-request{requests}"))
                if requests > 1:
                    writer.write(answer)
                    await writer.drain()
                    continue
                stray = _response(self.token("stray-answer-for-nobody"))
                if self.delayed:
                    writer.write(answer)
                    await writer.drain()
                    # The client has its answer and has pooled the connection by now:
                    # its next read on this socket sees the stray bytes first.
                    await asyncio.sleep(0.3)
                    writer.write(stray)
                else:
                    writer.write(answer + stray)
                await writer.drain()
                self.stray_sent.set()


@contextlib.asynccontextmanager
async def stray_vendor(*, delayed: bool) -> AsyncIterator[StrayVendor]:
    vendor = StrayVendor(delayed=delayed)
    server = await asyncio.start_server(vendor.handle, "127.0.0.1", 0)
    vendor.port = int(server.sockets[0].getsockname()[1])
    try:
        yield vendor
    finally:
        server.close()
        for writer in vendor.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


async def _loop_has_read(vendor: StrayVendor) -> None:
    """Wait until the stray answer was sent and the client's loop has run its reads."""
    await vendor.stray_sent.wait()
    # A full poll of the loop: the socket with the stray bytes was readable in it.
    _, writer = await asyncio.open_connection("127.0.0.1", vendor.port)
    writer.close()
    await writer.wait_closed()


def _label(token: str) -> str:
    import base64

    payload = token.split(".")[1]
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["label"])


@pytest.mark.parametrize("delayed", [True, False], ids=["stray-while-idle", "stray-with-answer"])
async def test_a_stray_answer_never_reaches_the_next_caller(delayed: bool) -> None:
    async with (
        stray_vendor(delayed=delayed) as vendor,
        create_outbound_client(OutboundOptions(trust_env=False)) as client,
    ):
        url = f"http://127.0.0.1:{vendor.port}/api/v1/security-token"
        first = await client.post(url, content=b"{}")
        await _loop_has_read(vendor)
        second = await client.post(url, content=b"{}")

    assert _label(first.json()["token"]) == "conn1-request1"
    # Not "stray-answer-for-nobody", nor conn1's: a fresh connection answered.
    assert _label(second.json()["token"]) != "stray-answer-for-nobody"
    assert _label(second.json()["token"]).endswith("-request1")


async def test_the_control_plain_aiohttp_hands_the_stray_answer_on() -> None:
    """The same vendor against aiohttp's own pool: the next caller gets the stray answer.
    (This is the attack the guard above stops; it keeps the scenario honest.)"""
    async with stray_vendor(delayed=True) as vendor, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{vendor.port}/"
        async with session.post(url, data=b"{}") as first:
            await first.read()
        await _loop_has_read(vendor)
        async with session.post(url, data=b"{}") as second:
            token = orjson.loads(await second.read())["token"]

    assert _label(token) == "stray-answer-for-nobody"


async def test_one_regions_stray_answer_never_becomes_another_regions_token() -> None:
    """Two regions (two tenants' accounts) on one vendor host share the pool: a stray
    answer after a ``us`` token must not become the ``eu`` user's token."""
    async with (
        stray_vendor(delayed=True) as vendor,
        create_outbound_client(OutboundOptions(trust_env=False)) as client,
    ):
        base = f"http://127.0.0.1:{vendor.port}"
        config = EmbeddableConfig.model_validate(
            {
                "type": "embeddable",
                "regions": {
                    "us": {"api_key": "us-key-0123456789", "base_url": f"{base}/us"},
                    "eu": {"api_key": "eu-key-0123456789", "base_url": f"{base}/eu"},
                },
            }
        )
        provider = EmbeddableProvider("embeddable", config, http_client=client)
        body = {"embeddableId": "c2b1a0de-0000-4000-8000-000000000001", "user": "u"}
        us = await provider.issue(body, 600, "us")
        await _loop_has_read(vendor)
        eu = await provider.issue(body, 600, "eu")

    assert _label(us.token) == "conn1-request1"
    assert _label(eu.token) not in ("stray-answer-for-nobody", "conn1-request1")


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
