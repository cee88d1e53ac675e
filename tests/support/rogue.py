"""A deliberately malicious HTTP server on loopback, written on raw asyncio streams.

The sandbox is a well-behaved vendor served by uvicorn; an attacker's server is not
bound by any framework. :func:`rogue_server` reads each request (head and a
``Content-Length`` body) and writes whatever bytes ``respond`` returns, verbatim: wrong
encodings, bombs, lies in headers. It runs its own event loop in a thread, so a broker
under test (in-process or a child process) talks to it over real TCP.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import orjson

from tests.support.servers import LOOPBACK

Responder = Callable[["RogueRequest"], "bytes | Trailing | None"]
"""The bytes to answer with, an answer with unsolicited bytes behind it (:class:`Trailing`),
or None to never answer (hold the connection open)."""


@dataclass(frozen=True)
class Trailing:
    """An answer followed by bytes nobody asked for, on the same kept-alive connection.

    ``now`` goes out in the same write as the answer; ``later`` after ``delay_seconds``
    (the attack: the client has pooled the connection by then), or, with
    ``later_on_next_request``, just before the answer to the next request on the
    connection (a middlebox's delayed segment that arrives after the next request left).
    """

    answer: bytes
    now: bytes = b""
    later: bytes = b""
    delay_seconds: float = 0.3
    later_on_next_request: bool = False


@dataclass(frozen=True)
class RogueRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RogueServer:
    url: str
    respond: Responder
    """What the server answers; a test may replace it while the server runs."""
    requests: list[RogueRequest] = field(default_factory=list)
    hanging: int = 0
    """Requests held open right now (``respond`` returned None)."""
    release: Callable[[], None] = lambda: None
    """Ask ``respond`` again for every held request and answer it (or keep holding)."""
    strays_sent: int = 0
    """:class:`Trailing` parts due so far (``now`` and ``later`` each count once written,
    or once dropped because the client had already closed the connection)."""
    connections: int = 0
    """Connections accepted so far."""


def http_response(
    status: int, body: bytes, headers: dict[str, str] | None = None, reason: str = "X"
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def vendor_token(user: str) -> str:
    """A JWT-shaped token (the vendor alphabet) that names the user it was issued to:
    the stray-response tests tell by it whose answer a caller received."""

    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    claims = orjson.dumps({"user": user, "exp": 4_102_444_800})
    return ".".join([part(b'{"alg":"none"}'), part(claims), part(b"sig")])


def user_of(token: str) -> str:
    """The user a :func:`vendor_token` names."""
    payload = token.split(".")[1]
    return str(orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["user"])


def token_answer(user: str) -> bytes:
    """Embeddable's 200 with ``user``'s :func:`vendor_token`."""
    body = orjson.dumps({"token": vendor_token(user)})
    return http_response(200, body, {"Content-Type": "application/json"}, reason="OK")


@functools.lru_cache(maxsize=8)
def gzip_bomb(decoded_bytes: int, layers: int = 1) -> bytes:
    """``decoded_bytes`` zeros, gzipped ``layers`` times (built once per size)."""
    data = _gzip_zeros(decoded_bytes)
    for _ in range(layers - 1):
        data = _gzip(data)
    return data


def _gzip_zeros(size: int) -> bytes:
    # Compressing 1 GiB takes tens of seconds; after a full flush the compressor starts
    # afresh, so every further 1 MiB block of zeros compresses to the same bytes:
    # compress two blocks, repeat the second, and write the gzip trailer by hand.
    block = bytes(1 << 20)
    blocks, rest = divmod(size, len(block))
    encoder = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = encoder.compress(block) + encoder.flush(zlib.Z_FULL_FLUSH)
    repeated = encoder.compress(block) + encoder.flush(zlib.Z_FULL_FLUSH)
    tail = encoder.compress(bytes(rest)) + encoder.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(blocks):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(bytes(rest), crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    body = (first + repeated * (blocks - 1) + tail) if blocks else tail
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    return header + body + trailer


def _gzip(data: bytes) -> bytes:
    encoder = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return encoder.compress(data) + encoder.flush()


@contextlib.contextmanager
def rogue_server(respond: Responder) -> Iterator[RogueServer]:
    """Serve ``respond`` on a free loopback port until the block ends."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, object] = {}

    writers: set[asyncio.StreamWriter] = set()
    late: set[asyncio.Task[None]] = set()  # Trailing parts still to send (cancelled at stop)
    release_event = asyncio.Event()

    async def send_later(writer: asyncio.StreamWriter, trailing: Trailing) -> None:
        await asyncio.sleep(trailing.delay_seconds)  # the attack's timing, not a wait
        try:
            if not writer.is_closing():
                writer.write(trailing.later)
                await writer.drain()
        except ConnectionError:
            pass  # the client had closed the connection: nothing can reach it
        finally:
            server.strays_sent += 1

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        server.connections += 1
        pending = b""  # a Trailing's later part, held for the next request
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, _ = request_line.split(" ", 2)
                headers = {}
                for line in header_lines:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = RogueRequest(method, target, headers, body)
                server.requests.append(request)
                answer = server.respond(request)
                while answer is None:  # hold until the client gives up or a release
                    server.hanging += 1
                    eof = asyncio.ensure_future(reader.read())
                    released = asyncio.ensure_future(release_event.wait())
                    try:
                        await asyncio.wait({eof, released}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        server.hanging -= 1
                        released.cancel()
                    if eof.done():
                        return
                    eof.cancel()  # and wait for it: the reader allows one waiter at a time
                    with contextlib.suppress(asyncio.CancelledError):
                        await eof
                    answer = server.respond(request)
                if pending:
                    writer.write(pending)
                    server.strays_sent += 1
                    pending = b""
                if isinstance(answer, Trailing):
                    writer.write(answer.answer + answer.now)
                    await writer.drain()
                    if answer.now:
                        server.strays_sent += 1
                    if answer.later and answer.later_on_next_request:
                        pending = answer.later
                    elif answer.later:
                        task = asyncio.ensure_future(send_later(writer, answer))
                        late.add(task)
                        task.add_done_callback(late.discard)
                    continue
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writers.discard(writer)
            writer.close()

    async def start() -> None:
        listener = await asyncio.start_server(handle, LOOPBACK, 0)
        state["listener"] = listener
        state["port"] = listener.sockets[0].getsockname()[1]
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, name="rogue-server", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("rogue server did not start")
    server = RogueServer(url=f"http://{LOOPBACK}:{state['port']}", respond=respond)

    def release() -> None:
        def pulse() -> None:
            release_event.set()
            release_event.clear()

        loop.call_soon_threadsafe(pulse)

    server.release = release
    try:
        yield server
    finally:

        async def stop() -> None:
            listener = state["listener"]
            assert isinstance(listener, asyncio.Server)
            listener.close()
            for task in list(late):
                task.cancel()
            for writer in list(writers):
                writer.close()
            await listener.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def unread_bytes_from(port: int) -> int:
    """Bytes that loopback connections to ``port`` have received but their owner (the
    broker, or this test's own client) has not read yet (``rx_queue`` in /proc/net/tcp).

    0 once every stray byte a rogue server sent has been read by the client's event loop,
    which hands them to the connection's protocol in the same step.
    """
    unread = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01":  # ESTABLISHED, client side
                    unread += int(fields[4].split(":")[1], 16)
    return unread


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water mark of resident memory (``VmHWM``), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")
