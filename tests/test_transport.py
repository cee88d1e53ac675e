"""LeanTransport over real loopback HTTP: reuse, bounds, servers that close, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.transport import LeanTransport
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.anyio


class Recorder:
    """An ASGI app that records the client port of each request (= its connection)."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.cookies: list[bytes | None] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.ports.append(scope["client"][1])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            delay = float(dict(scope["headers"]).get(b"x-delay", b"0"))
            await asyncio.sleep(delay)
            close = dict(scope["headers"]).get(b"x-close") == b"1"
            status = 500 if scope["path"] == "/fail" else 200
            headers = [(b"content-type", b"text/plain"), (b"set-cookie", b"session=vendor; Path=/")]
            headers += [(b"connection", b"close")] if close else []
            self.cookies.append(dict(scope["headers"]).get(b"cookie"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})
        finally:
            self.in_flight -= 1


@pytest.fixture
def server() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    with serve_in_thread(recorder) as url:
        yield url, recorder


async def test_sequential_requests_reuse_one_connection(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    async with httpx.AsyncClient(transport=LeanTransport()) as client:
        for _ in range(5):
            assert (await client.get(url)).text == "ok"
    assert len(set(recorder.ports)) == 1


async def test_concurrent_requests_open_connections_then_reuse_them(
    server: tuple[str, Recorder],
) -> None:
    url, recorder = server
    async with httpx.AsyncClient(transport=LeanTransport()) as client:
        for _ in range(3):
            responses = await asyncio.gather(
                *(client.get(url, headers={"x-delay": "0.05"}) for _ in range(8))
            )
            assert all(r.status_code == 200 for r in responses)
    assert len(set(recorder.ports)) <= 8
    assert len(recorder.ports) == 24


async def test_max_connections_bounds_requests_in_flight(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    async with httpx.AsyncClient(transport=LeanTransport(max_connections=2)) as client:
        responses = await asyncio.gather(
            *(client.get(url, headers={"x-delay": "0.05"}) for _ in range(6))
        )
    assert [r.status_code for r in responses] == [200] * 6
    assert recorder.max_in_flight == 2
    assert len(set(recorder.ports)) == 2


async def test_a_connection_the_server_closes_is_not_reused(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    async with httpx.AsyncClient(transport=LeanTransport()) as client:
        assert (await client.get(url, headers={"x-close": "1"})).status_code == 200
        assert (await client.get(url)).status_code == 200
        assert (await client.get(url)).status_code == 200
    assert len(set(recorder.ports)) == 2


async def test_error_statuses_and_streamed_reads_give_the_connection_back(
    server: tuple[str, Recorder],
) -> None:
    url, recorder = server
    async with httpx.AsyncClient(transport=LeanTransport(max_connections=1)) as client:
        assert (await client.get(f"{url}/fail")).status_code == 500
        async with client.stream("GET", url) as response:
            assert [part async for part in response.aiter_bytes()] == [b"ok"]
        assert (await client.get(url)).status_code == 200
    assert len(set(recorder.ports)) == 1


async def test_connect_errors_release_the_slot() -> None:
    async with httpx.AsyncClient(transport=LeanTransport(max_connections=1)) as client:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                await client.get("http://127.0.0.1:9/")


async def test_the_vendor_client_never_keeps_or_sends_cookies(server: tuple[str, Recorder]) -> None:
    from app.runtime import vendor_http_client

    url, recorder = server
    async with vendor_http_client() as client:
        for _ in range(3):
            assert (await client.get(url)).status_code == 200
    assert recorder.cookies == [None, None, None]
