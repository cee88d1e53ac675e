"""The outbound HTTP transport: HTTP/1.1 on asyncio protocols, under httpx's client API.

The process has one of these (``app.runtime.vendor_transport``). JWKS fetches use it
under the process's ``httpx.AsyncClient`` (httpx's documented extension point); vendor
token calls hand it a prepared ``httpx.Request`` directly (``app.providers.http``:
no cookies, redirects or auth flow to run). Why not httpx's default transport: with
httpcore, anyio and h11 a vendor call cost about 400 µs of CPU here (a third of a cache
miss; anyio cancel scopes and locks around every read and write, a pure-Python HTTP
state machine); on this transport it costs 65-80 µs, building the httpx.Request
included. Cache misses are the broker's slow path (performance.md S3), so that matters.

What it does:

- one ``asyncio.Protocol`` per connection; responses parsed by ``httptools`` (llhttp,
  the parser uvicorn serves with);
- a pool per origin: a stack of idle keep-alive connections (the most recently used
  is reused; one the peer closed is dropped as soon as the loop sees it close),
  at most ``max_connections`` in use, expired after ``keepalive_expiry`` idle seconds;
- TLS through the loop with an ``ssl.SSLContext`` (``httpx.create_ssl_context()``:
  certificate and host name verification on);
- httpx's timeouts: ``pool`` (waiting for a free connection slot), ``connect``
  (TCP + TLS), ``write`` (while the socket's buffer is full), ``read`` (waiting for
  the response head and for each body chunk); each raises httpx's exception;
- a response body is streamed with back-pressure (reading pauses above 64 KiB
  buffered); a connection is reused only after its response was read completely;
- bounded response heads (64 KiB, 100 headers); CR, LF or NUL in a request header
  are refused before anything is sent.

What it does not do, on purpose: HTTP/2, proxies (``HTTP(S)_PROXY``; httpx ignores
them for a client given a transport), ``Expect: 100-continue``, protocol upgrades,
retries of requests that are not idempotent (a vendor POST is retried, or not, by
:mod:`app.resilience`).

Exceptions (all ``httpx.TransportError``)::

    PoolTimeout, ConnectTimeout, WriteTimeout, ReadTimeout
    ConnectError          TCP or TLS failed; nothing was sent
    WriteError            the connection broke while sending
    ReadError             the connection broke in the middle of a response body
    RemoteProtocolError   closed before any response; malformed response
    LocalProtocolError    a request that cannot be written (bad header)
    UnsupportedProtocol   not http:// or https://
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar
from typing import Any, cast

import httptools
import httpx

log = logging.getLogger("token_broker.transport")

OriginKey = tuple[bytes, bytes, int]

DEFAULT_PORTS = {b"http": 80, b"https": 443}
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
READ_HIGH_WATER = 64 * 1024
READ_LOW_WATER = 16 * 1024
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
_BAD_HEADER_BYTES = re.compile(rb"[\r\n\x00]")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class _Exchange:
    """What one request/response on a connection has produced so far."""

    __slots__ = (
        "body",
        "complete",
        "error",
        "head",
        "head_bytes",
        "headers",
        "keep_alive",
        "reason",
        "status",
        "waiter",
    )

    def __init__(self) -> None:
        self.head: asyncio.Future[None] | None = None
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.body: deque[bytes] = deque()
        self.complete = False
        self.keep_alive = False
        self.error: httpx.TransportError | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one exchange at a time, parsed as bytes arrive."""

    def __init__(self, pool: LeanTransport, key: OriginKey) -> None:
        self._pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False
        """True once a response was read on it: a reused connection may be stale."""
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._exchange: _Exchange | None = None
        self._buffered = 0
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._eof_body = False
        self._head_only = False
        self._tls = False
        self._head_raw = 0
        """Bytes received while the final response head is incomplete (httptools buffers
        a header before calling back, so the callbacks alone cannot bound it)."""
        self.received = False
        """True once a byte of the current exchange's answer arrived: a failure before
        that, on a kept-alive connection, means the peer had closed it already."""

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)
        self._tls = transport.get_extra_info("sslcontext") is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        exchange = self._exchange
        if exchange is None or exchange.complete or exchange.error is not None:
            return
        if exchange.head is not None and not exchange.head.done():
            self._fail(httpx.RemoteProtocolError("server disconnected without sending a response"))
        elif self._eof_body and exc is None and not self._tls:
            # A body delimited by the end of the connection. Not over TLS: asyncio
            # reports a TCP close without close_notify as a clean end, so a truncated
            # body could not be told from a complete one.
            exchange.complete = True
            exchange.wake()
        else:
            self._fail(httpx.ReadError("server disconnected in the middle of the response body"))

    def eof_received(self) -> bool:
        if self._exchange is None:
            # An idle connection the server closed: out of the pool now, not a loop
            # iteration later in connection_lost (a request could take it meanwhile).
            self.closed = True
            self._pool.forget(self)
        return False  # let the transport close; connection_lost does the rest

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self._exchange is None:
            # Bytes nobody asked for: the connection is out of step; never reuse it.
            self.close()
            return
        exchange = self._exchange
        try:
            self._parser.feed_data(data)
            if exchange.status == 0 and exchange.error is None:  # the final head is unfinished
                self._head_raw += len(data)
                if self._head_raw > MAX_HEAD_BYTES:
                    self._fail(httpx.RemoteProtocolError("response head is too large"))
        except httptools.HttpParserCallbackError as exc:
            raised = exc.__context__  # what one of the callbacks below raised
            if not isinstance(raised, httpx.TransportError):
                raised = httpx.RemoteProtocolError("malformed HTTP response")
            self._fail(raised)
        except httptools.HttpParserError:
            self._fail(httpx.RemoteProtocolError("malformed HTTP response"))

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        exchange = self._exchange
        if exchange is None or exchange.complete:
            # A second response to one request: the connection is out of step.
            raise httpx.RemoteProtocolError("unexpected data after the response")

    def on_status(self, reason: bytes) -> None:
        exchange = self._exchange
        if exchange is not None:
            exchange.reason += reason
            self._count_head(exchange, len(reason))

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self._exchange
        if exchange is not None:
            exchange.headers.append((name, value))
            self._count_head(exchange, len(name) + len(value))
            if len(exchange.headers) > MAX_HEADERS:
                raise httpx.RemoteProtocolError("response has too many headers")

    def on_headers_complete(self) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                raise httpx.RemoteProtocolError("the server switched protocols")
            exchange.headers.clear()  # an informational answer; the real one follows
            exchange.reason = b""
            return
        exchange.status = status
        names = {name.lower() for name, _ in exchange.headers}
        self._eof_body = (
            b"content-length" not in names
            and b"transfer-encoding" not in names
            and status not in (204, 304)
        )
        if exchange.head is not None and not exchange.head.done():
            exchange.head.set_result(None)
        if self._head_only:
            # The parser cannot be told a HEAD response has no body: finish here and
            # never reuse the connection (it could mistake the next bytes for a body).
            exchange.complete = True
            exchange.keep_alive = False
            exchange.wake()

    def on_body(self, body: bytes) -> None:
        exchange = self._exchange
        if exchange is None or exchange.complete:
            return
        exchange.body.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self._exchange
        if exchange is None or exchange.complete or not exchange.status:
            return  # an informational response ended (or a HEAD response, done already)
        exchange.complete = True
        exchange.keep_alive = self._parser.should_keep_alive()
        exchange.wake()

    # --- used by the transport -----------------------------------------------------------

    def _count_head(self, exchange: _Exchange, size: int) -> None:
        exchange.head_bytes += size
        if exchange.head_bytes > MAX_HEAD_BYTES:
            raise httpx.RemoteProtocolError("response head is too large")

    def _fail(self, error: httpx.TransportError) -> None:
        exchange = self._exchange
        if exchange is not None and exchange.error is None and not exchange.complete:
            exchange.error = error
            if exchange.head is not None and not exchange.head.done():
                exchange.head.set_result(None)
            exchange.wake()
        self.close()

    def close(self) -> None:
        """Drop the connection now: unsent bytes of a failed exchange are not flushed
        (a graceful close would keep a dead connection, and its buffer, open)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close_idle(self) -> None:
        """Close a connection with nothing in flight, politely (FIN, not RST)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def is_reusable(self, now: float, keepalive_expiry: float) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since < keepalive_expiry
        )

    async def send(self, request: httpx.Request, head: bytes, write_timeout: float | None) -> None:
        assert self.transport is not None
        exchange = _Exchange()
        exchange.head = asyncio.get_running_loop().create_future()
        self._exchange = exchange
        self._head_only = request.method == "HEAD"
        self._eof_body = False
        self.received = False
        self._head_raw = 0
        body = request.stream
        if isinstance(body, httpx.ByteStream):
            self.transport.write(head + bytes(request.content))
            await self._drain(write_timeout)
            return
        self.transport.write(head)
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        async for chunk in body:  # type: ignore[union-attr]
            if not chunk:
                continue
            if self.closed or self.transport.is_closing():
                raise httpx.WriteError("the connection closed while the request was sent")
            if chunked:
                self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                self.transport.write(chunk)
            await self._drain(write_timeout)
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        await self._drain(write_timeout)

    async def _drain(self, write_timeout: float | None) -> None:
        if self.closed:
            raise httpx.WriteError("the connection closed while the request was sent")
        writable = self._writable
        if writable is None:
            return
        try:
            async with asyncio.timeout(write_timeout):
                await writable
        except TimeoutError:
            raise httpx.WriteTimeout("timed out sending the request") from None
        if self.closed:
            raise httpx.WriteError("the connection closed while the request was sent")

    async def response_head(self, read_timeout: float | None) -> _Exchange:
        exchange = self._exchange
        assert exchange is not None
        assert exchange.head is not None
        if not exchange.head.done():
            try:
                async with asyncio.timeout(read_timeout):
                    await exchange.head
            except TimeoutError:
                raise httpx.ReadTimeout("timed out waiting for the response") from None
        if exchange.error is not None:
            raise exchange.error
        return exchange

    async def body_chunks(self, read_timeout: float | None) -> AsyncIterator[bytes]:
        exchange = self._exchange
        assert exchange is not None
        loop = asyncio.get_running_loop()
        while True:
            while exchange.body:
                chunk = exchange.body.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered < READ_LOW_WATER and self.transport:
                    self._reading_paused = False
                    self.transport.resume_reading()
                yield chunk
            if exchange.error is not None:
                raise exchange.error
            if exchange.complete:
                return
            exchange.waiter = loop.create_future()
            try:
                async with asyncio.timeout(read_timeout):
                    await exchange.waiter
            except TimeoutError:
                raise httpx.ReadTimeout("timed out reading the response body") from None
            finally:
                exchange.waiter = None

    def finish(self) -> bool:
        """End the exchange; True when the connection can serve another request."""
        exchange = self._exchange
        self._exchange = None
        self._buffered = 0
        reusable = (
            exchange is not None
            and exchange.complete
            and exchange.error is None
            and exchange.keep_alive
            and not exchange.body
            and not self.closed
        )
        if self._reading_paused and self.transport is not None and reusable:
            self._reading_paused = False
            self.transport.resume_reading()
        return reusable


class _ResponseStream(httpx.AsyncByteStream):
    """The body of one response; hands the connection back when closed."""

    def __init__(
        self, pool: LeanTransport, connection: _Connection, read_timeout: float | None
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._read_timeout = read_timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._connection.body_chunks(self._read_timeout):
            yield chunk

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._connection)


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        *,
        max_connections: int = 512,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._ssl_context = ssl_context if ssl_context is not None else httpx.create_ssl_context()
        self._keepalive_expiry = keepalive_expiry
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[OriginKey, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._closed = False

    async def __aenter__(self) -> LeanTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        url = request.url
        scheme = url.raw_scheme
        if scheme not in DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"only http:// and https:// URLs: {url.scheme!r}")
        key: OriginKey = (scheme, url.raw_host, url.port or DEFAULT_PORTS[scheme])
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        head = _request_head(request)
        await self._acquire_slot(timeouts.get("pool"))
        try:
            return await self._exchange(request, key, head, timeouts)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(
        self,
        request: httpx.Request,
        key: OriginKey,
        head: bytes,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        read_timeout = timeouts.get("read")
        retry_stale = request.method.encode() in IDEMPOTENT_METHODS
        while True:
            connection = self._take_idle(key) or await self._connect(key, timeouts.get("connect"))
            try:
                await connection.send(request, head, timeouts.get("write"))
                exchange = await connection.response_head(read_timeout)
            except httpx.RemoteProtocolError:
                connection.finish()
                connection.close()
                if retry_stale and connection.used and not connection.received:
                    retry_stale = False  # the peer closed a kept-alive connection: once more
                    continue
                raise
            except BaseException:
                connection.finish()
                connection.close()
                raise
            return httpx.Response(
                exchange.status,
                headers=exchange.headers,
                stream=_ResponseStream(self, connection, read_timeout),
                extensions={"http_version": b"HTTP/1.1", "reason_phrase": exchange.reason},
            )

    async def _acquire_slot(self, pool_timeout: float | None) -> None:
        if not self._slots.locked():
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout(pool_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no free connection slot in time") from None

    def _take_idle(self, key: OriginKey) -> _Connection | None:
        stack = self._idle.get(key)
        now = time.monotonic()
        while stack:
            connection = stack.pop()
            if connection.is_reusable(now, self._keepalive_expiry):
                return connection
            self._open.discard(connection)
            connection.close_idle()
        return None

    async def _connect(self, key: OriginKey, connect_timeout: float | None) -> _Connection:
        scheme, raw_host, port = key
        host = raw_host.decode("ascii")
        tls = self._ssl_context if scheme == b"https" else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, key),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
        except TimeoutError:
            log.debug("transport.connect_timeout", extra={"origin": _origin(key)})
            raise httpx.ConnectTimeout("timed out connecting") from None
        except OSError as exc:  # ssl.SSLError included
            # The reason (refused, unreachable, certificate) without the address.
            reason = f"{type(exc).__name__}: {exc.strerror or 'no detail'}"
            log.debug("transport.connect_failed", extra={"origin": _origin(key), "reason": reason})
            raise httpx.ConnectError(f"connection failed ({reason})") from None
        self._open.add(connection)
        log.debug("transport.connected", extra={"origin": _origin(key), "open": len(self._open)})
        return connection

    def release(self, connection: _Connection) -> None:
        """The response is closed: keep the connection for reuse, or close it."""
        self._slots.release()
        if connection.finish() and not self._closed:
            connection.used = True
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.key, []).append(connection)
        else:
            self._discard(connection)

    def forget(self, connection: _Connection) -> None:
        """The peer closed the connection (called from ``connection_lost``)."""
        self._open.discard(connection)
        stack = self._idle.get(connection.key)
        if stack and connection in stack:
            stack.remove(connection)

    def _discard(self, connection: _Connection) -> None:
        self._open.discard(connection)
        connection.close()

    async def aclose(self) -> None:
        self._closed = True
        idle = {connection for stack in self._idle.values() for connection in stack}
        connections = list(self._open)
        self._open.clear()
        self._idle.clear()
        for connection in connections:
            if connection in idle:
                connection.close_idle()
            else:
                connection.close()
        await asyncio.sleep(0)  # let the loop run the transports' close callbacks


def _origin(key: OriginKey) -> str:
    scheme, host, port = key
    return f"{scheme.decode()}://{host.decode()}:{port}"


def _request_head(request: httpx.Request) -> bytes:
    method = request.method.encode("ascii", "replace")
    if not _TOKEN.fullmatch(method):
        raise httpx.LocalProtocolError("the request method is not a valid token")
    headers = request.headers
    if "transfer-encoding" in headers and (
        "content-length" in headers
        or headers["transfer-encoding"].lower() != "chunked"
        or isinstance(request.stream, httpx.ByteStream)
    ):
        # Only the framing this transport writes itself: anything else could make the
        # server read part of the body as another request.
        raise httpx.LocalProtocolError("a Transfer-Encoding this transport does not frame")
    target = request.url.raw_path
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        if not _TOKEN.fullmatch(name) or _BAD_HEADER_BYTES.search(value):
            # An API key or header value with a line break would add headers of its own.
            raise httpx.LocalProtocolError("a request header contains a forbidden character")
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class NoCookies(CookieJar):
    """A jar that never keeps or sends a cookie.

    Vendor token and JWKS calls are stateless; a cookie set by one vendor answer must
    not ride along on the next call (possibly for another tenant).
    """

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def add_cookie_header(self, request: Any) -> None:
        return None
