"""LeanTransport over real loopback HTTP: reuse, bounds, servers that close, errors.

The first tests talk to a real uvicorn server; the rest to raw TCP servers that send
exactly the bytes a case needs (chunked bodies, informational answers, malformed or
oversized heads, connections that close at the wrong moment) and to a TLS server with
a certificate made for the test. Every test runs on the standard asyncio loop and on
uvloop (the one the broker serves with).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.transport import LeanTransport
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    if request.param == "uvloop":
        return ("asyncio", {"use_uvloop": True})
    return "asyncio"


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


# --- raw servers ------------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server on loopback whose connections are handled by ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.received: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Head and body of one request (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lowered = head.lower()
    if b"transfer-encoding: chunked" in lowered:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return head, body
            body += chunk[:-2]
    length = 0
    for line in lowered.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def answering(*responses: bytes, then_close: bool = False) -> Handler:
    """A handler that answers successive requests on a connection with ``responses``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            await read_request(reader)
            writer.write(response)
            await writer.drain()
        if not then_close:
            await reader.read()  # keep the connection until the client closes it

    return handle


OK_2 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_a_chunked_body_is_reassembled() -> None:
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
    )
    async with (
        RawServer(answering(response, OK_2)) as url,
        httpx.AsyncClient(transport=LeanTransport()) as client,
    ):
        assert (await client.get(url)).text == "hello world"
        assert (await client.get(url)).text == "ok"  # the same connection, reused


async def test_a_body_ended_by_closing_the_connection_is_complete() -> None:
    response = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"
    server = RawServer(answering(response, then_close=True))
    async with server as url, httpx.AsyncClient(transport=LeanTransport()) as client:
        assert (await client.get(url)).text == "until the end"
        server.handler = answering(OK_2)
        assert (await client.get(url)).text == "ok"
    assert server.connections == 2  # not reused after Connection: close


async def test_informational_answers_are_skipped() -> None:
    response = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK_2
    async with (
        RawServer(answering(response)) as url,
        httpx.AsyncClient(transport=LeanTransport()) as client,
    ):
        answer = await client.get(url)
    assert (answer.status_code, answer.text, answer.headers.get("link")) == (200, "ok", None)


async def test_head_responses_end_with_their_head_and_the_connection() -> None:
    server = RawServer(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"))
    async with server as url, httpx.AsyncClient(transport=LeanTransport()) as client:
        head = await client.head(url)
        assert (head.status_code, head.headers["content-length"], head.content) == (
            200,
            "5",
            b"",
        )
        server.handler = answering(OK_2)
        assert (await client.get(url)).text == "ok"
    assert server.connections == 2


async def test_status_reason_and_repeated_headers_reach_httpx() -> None:
    response = b"HTTP/1.1 418 I'm a teapot\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 0\r\n\r\n"
    async with (
        RawServer(answering(response)) as url,
        httpx.AsyncClient(transport=LeanTransport()) as client,
    ):
        answer = await client.get(url)
    assert answer.status_code == 418
    assert answer.reason_phrase == "I'm a teapot"
    assert answer.headers.get_list("x-a") == ["1", "2"]


async def test_a_streamed_request_body_is_sent_chunked() -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await read_request(reader)
        seen.append(body)
        writer.write(OK_2)
        await writer.drain()
        await reader.read()

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one ", b"", b"two"):
            yield part

    async with RawServer(handle) as url, httpx.AsyncClient(transport=LeanTransport()) as client:
        assert (await client.post(url, content=parts())).status_code == 200
    assert seen == [b"one two"]


async def test_a_large_body_streams_and_an_unfinished_one_is_not_reused() -> None:
    size = 3 * 1024 * 1024
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    server = RawServer(answering(big, big))
    async with server as url, httpx.AsyncClient(transport=LeanTransport()) as client:
        assert len((await client.get(url)).content) == size
        async with client.stream("GET", url) as response:
            async for _ in response.aiter_bytes():
                break  # stop reading early
        server.handler = answering(OK_2)
        assert (await client.get(url)).text == "ok"
    assert server.connections == 2


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (b"", httpx.RemoteProtocolError),  # closed without an answer
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", httpx.ReadError),
        (b"NOT HTTP AT ALL\r\n\r\n", httpx.RemoteProtocolError),
        (
            b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"y" * (70 * 1024) + b"\r\n\r\n",
            httpx.RemoteProtocolError,
        ),
        (b"HTTP/1.1 200 OK\r\n" + b"X-N: 1\r\n" * 101 + b"\r\n", httpx.RemoteProtocolError),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", httpx.RemoteProtocolError),
    ],
    ids=["no-answer", "cut-body", "not-http", "huge-head", "too-many-headers", "upgrade"],
)
async def test_broken_answers_raise_httpx_errors_and_free_the_slot(
    response: bytes, error: type[Exception]
) -> None:
    server = RawServer(answering(response, then_close=True))
    async with (
        server as url,
        httpx.AsyncClient(transport=LeanTransport(max_connections=1)) as client,
    ):
        with pytest.raises(error):
            await client.get(url)
        server.handler = answering(OK_2)
        assert (await client.get(url)).text == "ok"  # the one slot was given back


async def test_no_answer_in_time_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with (
        RawServer(silent) as url,
        httpx.AsyncClient(transport=LeanTransport(max_connections=1)) as client,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await client.get(url, timeout=0.1)
        with pytest.raises(httpx.ReadTimeout):  # the slot is free again
            await client.get(url, timeout=0.1)


async def test_waiting_too_long_for_a_connection_slot_is_a_pool_timeout() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.5)
        writer.write(OK_2)
        await writer.drain()

    async with (
        RawServer(slow) as url,
        httpx.AsyncClient(transport=LeanTransport(max_connections=1)) as client,
    ):
        first = asyncio.ensure_future(client.get(url))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await client.get(url, timeout=httpx.Timeout(5.0, pool=0.05))
        assert (await first).text == "ok"


async def test_a_kept_alive_connection_closed_by_the_server_is_retried_only_when_idempotent() -> (
    None
):
    async def one_answer_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(OK_2)
        await writer.drain()
        await read_request(reader)  # the next request on this connection: hang up instead

    server = RawServer(one_answer_per_connection)
    async with server as url, httpx.AsyncClient(transport=LeanTransport()) as client:
        assert (await client.get(url)).text == "ok"
        assert (await client.get(url)).text == "ok"  # hung up on, retried on a new connection
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(url, content=b"y")  # not retried: it may have been acted on
    assert server.connections == 2


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\x00b"])
async def test_a_header_value_that_would_add_headers_is_refused_before_sending(value: str) -> None:
    server = RawServer(answering(OK_2))
    async with server as url, httpx.AsyncClient(transport=LeanTransport()) as client:
        request = client.build_request("GET", url)
        request.headers["Authorization"] = value
        with pytest.raises(httpx.LocalProtocolError):
            await client.send(request)
    assert server.connections == 0


async def test_only_http_and_https() -> None:
    async with httpx.AsyncClient(transport=LeanTransport()) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("ftp://127.0.0.1/x")


# --- TLS ----------------------------------------------------------------------------------


def self_signed(host: str) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for ``host`` (an IP address)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token-broker test vendor")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cert, key = self_signed("127.0.0.1")
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert)
    (folder / "key.pem").write_bytes(key)
    return folder / "cert.pem", folder / "key.pem"


async def tls_server(cert: Path, key: Path) -> tuple[asyncio.Server, str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answering(OK_2, OK_2)(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    return server, f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_https_with_a_trusted_certificate(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server, url = await tls_server(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        async with httpx.AsyncClient(transport=LeanTransport(ssl_context=trusting)) as client:
            assert (await client.get(url)).text == "ok"
            assert (await client.get(url)).text == "ok"
    finally:
        server.close()


async def test_https_refuses_an_untrusted_certificate(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server, url = await tls_server(cert, key)
    try:
        async with httpx.AsyncClient(transport=LeanTransport()) as client:  # system CAs
            with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|SSL"):
                await client.get(url)
    finally:
        server.close()


# --- found in review ----------------------------------------------------------------------


async def test_a_reset_during_a_body_ended_by_close_is_not_a_complete_body() -> None:
    async def reset_midway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"token": "abc')
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # with linger 0: RST, not FIN

    async with (
        RawServer(reset_midway) as url,
        httpx.AsyncClient(transport=LeanTransport()) as client,
    ):
        with pytest.raises(httpx.ReadError):
            await client.get(url)


async def test_over_tls_a_body_ended_by_close_is_refused(tls_files: tuple[Path, Path]) -> None:
    """Without close_notify a truncated body looks like a finished one: never accept it."""
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        async with httpx.AsyncClient(transport=LeanTransport(ssl_context=trusting)) as client:
            with pytest.raises(httpx.ReadError):
                await client.get(url)
    finally:
        server.close()


@pytest.mark.parametrize(
    "endless",
    [b"HTTP/1.1 200 OK\r\nX-Endless: " + b"y" * 65536, b"HTTP/1.1 100 \r\n\r\n" * 8192],
    ids=["one-endless-header", "informational-flood"],
)
async def test_a_head_that_never_ends_is_cut_off_at_the_limit(endless: bytes) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for _ in range(200):  # ~13 MB unless the client gives up first
            writer.write(endless)
            await writer.drain()

    async with RawServer(flood) as url, httpx.AsyncClient(transport=LeanTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="head is too large"):
            await client.get(url, timeout=30)


async def test_an_idle_connection_the_server_closed_leaves_the_pool_at_once() -> None:
    async with RawServer(answering(OK_2)) as url:
        transport = LeanTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.get(url)).text == "ok"
            (idle,) = next(iter(transport._idle.values()))
            idle.eof_received()  # what the loop calls first when the server's FIN arrives
            assert transport._take_idle(idle.key) is None


@pytest.mark.parametrize(
    ("headers", "content"),
    [
        ({"Transfer-Encoding": "chunked"}, b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"),
        ({"Transfer-Encoding": "gzip"}, None),
    ],
    ids=["chunked-header-on-a-byte-body", "unframed-coding"],
)
async def test_framing_the_transport_does_not_write_is_refused(
    headers: dict[str, str], content: bytes | None
) -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"x"

    server = RawServer(answering(OK_2))
    async with server as url, httpx.AsyncClient(transport=LeanTransport()) as client:
        request = client.build_request(
            "POST", url, content=content if content is not None else parts()
        )
        request.headers.update(headers)
        with pytest.raises(httpx.LocalProtocolError):
            await client.send(request)
    assert server.connections == 0
