"""What a client may send before the app sees it, against a real ``token-broker serve``.

Regressions for issue 14 (red team), item 4: 64 MiB and 200 MiB headers and 10,000
header fields were read whole; connections with unfinished headers or bodies were held
for as long as the client liked; 1,100 idle partial connections under a 1,024-descriptor
limit took ``/healthz`` down. The attacker is a raw socket on loopback. Bounds are
proven by counting (bytes the broker let a client push, connections it still holds),
timeouts by waiting for the condition (:func:`eventually`), never by timing.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.connections import DESCRIPTOR_HEADROOM
from tests.integration.brokers import broker_environment
from tests.support.eventually import eventually
from tests.support.policies import base_policy, write_policy
from tests.support.process import ROOT, BrokerProcess, broker_process
from tests.support.stack import session_token

pytestmark = pytest.mark.slow  # two broker processes, and timeouts that must expire

MAX_HEADER_BYTES = 8192
MAX_HEADER_FIELDS = 20
MAX_CONNECTIONS = 6
PROBE_RESERVE = 2
MIB = 1 << 20
# What a refused client may have pushed in all: the header bound, plus what the two
# kernels' socket buffers hold while the refusal travels back (the client's send buffer
# is pinned small; the broker's receive buffer is the loopback default). Reading
# everything, as the old code did, lets the whole attempt through.
MAX_ACCEPTED_BYTES = 8 * MIB
ATTEMPT_BYTES = 64 * MIB


@contextlib.contextmanager
def broker_with_limits(
    folder: Path, settings: dict[str, str], policy: dict[str, Any] | None = None
) -> Iterator[BrokerProcess]:
    """``token-broker serve`` with these BROKER_* limit settings (no vendor is called)."""
    path = write_policy(folder, policy if policy is not None else base_policy())
    with broker_process(path, folder, broker_environment("http://127.0.0.1:9", **settings)) as b:
        yield b


@pytest.fixture(scope="module")
def limits_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """Small header bounds and one-second read timeouts; the default connection cap."""
    policy = base_policy()
    policy["session"]["max_token_bytes"] = 4096  # what an 8 KiB header bound can carry
    settings = {
        "max_header_bytes": str(MAX_HEADER_BYTES),
        "max_header_fields": str(MAX_HEADER_FIELDS),
        "header_timeout_seconds": "1",
        "body_timeout_seconds": "1",
    }
    with broker_with_limits(tmp_path_factory.mktemp("limits"), settings, policy) as broker:
        yield broker


@pytest.fixture(scope="module")
def capped_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """A small connection cap, and read timeouts long enough never to be what frees one."""
    settings = {
        "max_connections": str(MAX_CONNECTIONS),
        "probe_reserve": str(PROBE_RESERVE),
        "header_timeout_seconds": "600",
        "body_timeout_seconds": "600",
    }
    with broker_with_limits(tmp_path_factory.mktemp("capped"), settings) as broker:
        yield broker


def address(broker: BrokerProcess) -> tuple[str, int]:
    host, port = broker.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@contextlib.contextmanager
def raw(broker: BrokerProcess) -> Iterator[socket.socket]:
    sock = socket.create_connection(address(broker), timeout=10)
    try:
        yield sock
    finally:
        sock.close()


def head(lines: list[bytes]) -> bytes:
    return b"\r\n".join([*lines, b"", b""])


def read_response(sock: socket.socket) -> tuple[int, dict[str, object]]:
    """Status and JSON body of the one response the broker sends before closing."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), orjson.loads(body) if body else {}


def is_closed(sock: socket.socket) -> bool:
    """Has the broker closed this connection? (EOF or reset; never blocks)."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def closed_after_answer(sock: socket.socket, received: bytearray) -> bool:
    """Drain what the broker sent so far into ``received``; True once it closed."""
    sock.setblocking(False)
    try:
        while chunk := sock.recv(65536):
            received += chunk
        return True
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def healthz(broker: BrokerProcess) -> int | None:
    try:
        return httpx.get(f"{broker.url}/healthz", timeout=2).status_code
    except httpx.TransportError:
        return None


# --- header size and count ----------------------------------------------------------


def padded_request(total: int) -> bytes:
    """A GET /healthz whose request line and headers are exactly ``total`` bytes."""
    start = b"GET /healthz HTTP/1.1\r\nHost: broker\r\nConnection: close\r\nX-Pad: "
    end = b"\r\n\r\n"
    return start + b"a" * (total - len(start) - len(end)) + end


def test_headers_at_the_bound_pass_and_one_byte_more_is_431(limits_broker: BrokerProcess) -> None:
    with raw(limits_broker) as sock:
        sock.sendall(padded_request(MAX_HEADER_BYTES))
        status, _ = read_response(sock)
    assert status == 200
    with raw(limits_broker) as sock:
        sock.sendall(padded_request(MAX_HEADER_BYTES + 1))
        status, problem = read_response(sock)
    assert status == 431
    assert problem["code"] == "headers_too_large"
    assert str(MAX_HEADER_BYTES) in str(problem["detail"])
    assert problem["request_id"]


def test_an_endless_header_is_cut_off_after_a_bounded_number_of_bytes(
    limits_broker: BrokerProcess,
) -> None:
    """The finding: a 64 MiB header value was read (and buffered) whole."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small send buffer, so bytes counted as sent are bytes the broker's side took.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.settimeout(10)
    sock.connect(address(limits_broker))
    chunk = b"a" * 65536
    sent = 0
    # The broker's refusal ends the attempt: the next send meets a closed connection.
    with sock, contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: broker\r\nX-Big: ")
        while sent < ATTEMPT_BYTES:
            sock.sendall(chunk)
            sent += len(chunk)
    assert sent < MAX_ACCEPTED_BYTES, f"the broker took {sent / MIB:.0f} MiB of one header"
    assert healthz(limits_broker) == 200


def test_a_body_arriving_with_its_headers_does_not_count_as_header(
    limits_broker: BrokerProcess,
) -> None:
    """Headers and a body larger than the header bound, in one send: only the headers
    count (the parser is fed up to the bound, then the rest once the headers end)."""
    body = b'{"embed": "' + b"a" * (MAX_HEADER_BYTES + 1000) + b'"}'
    request = head(
        [
            b"POST /v1/tokens HTTP/1.1",
            b"Host: broker",
            b"Connection: close",
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
        ]
    )
    with raw(limits_broker) as sock:
        sock.sendall(request + body)
        status, problem = read_response(sock)
    assert (status, problem["code"]) == (401, "unauthenticated")


@pytest.mark.parametrize("fields", [MAX_HEADER_FIELDS + 1, 10_000])
def test_too_many_header_fields_are_431(limits_broker: BrokerProcess, fields: int) -> None:
    lines = [b"GET /healthz HTTP/1.1", b"Host: broker"]
    lines += [b"X-%d: 1" % index for index in range(fields - 1)]
    with raw(limits_broker) as sock:
        with contextlib.suppress(ConnectionError):  # 10,000 fields: refused mid-send
            sock.sendall(head(lines))
        status, problem = read_response(sock)
    assert status == 431
    assert problem["code"] == "headers_too_large"


def refusals(broker: BrokerProcess, reason: str) -> float:
    prefix = f'token_broker_connections_refused_total{{reason="{reason}"}} '
    metrics = httpx.get(f"{broker.url}/metrics", timeout=5).text
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


def test_a_refused_client_still_sending_reads_its_431(limits_broker: BrokerProcess) -> None:
    # Before: the broker closed at once with the rest of the request unread, so the
    # kernel answered with a reset that destroyed the 431 before the client read it
    # (CI saw ConnectionResetError). Now the answer is followed by a FIN and the rest is
    # read and discarded (within LINGER_MAX_BYTES). The client here reads only once the
    # broker has counted the refusal, i.e. after the old code had already closed.
    lines = [b"GET /healthz HTTP/1.1", b"Host: broker"]
    lines += [b"X-%d: %s" % (index, b"v" * 40) for index in range(2_000)]  # ~100 KB, > 8 KiB
    before = refusals(limits_broker, "header_too_large")
    with raw(limits_broker) as sock:
        sock.sendall(head(lines))
        eventually(
            lambda: refusals(limits_broker, "header_too_large") > before,
            what="the broker refused the request",
        )
        status, problem = read_response(sock)
    assert (status, problem["code"]) == (431, "headers_too_large")


def test_exactly_the_allowed_header_fields_pass(limits_broker: BrokerProcess) -> None:
    lines = [b"GET /healthz HTTP/1.1", b"Host: broker", b"Connection: close"]
    lines += [b"X-%d: 1" % index for index in range(MAX_HEADER_FIELDS - 2)]
    with raw(limits_broker) as sock:
        sock.sendall(head(lines))
        status, _ = read_response(sock)
    assert status == 200


# --- read timeouts ------------------------------------------------------------------


def test_unfinished_headers_are_answered_408_and_closed(limits_broker: BrokerProcess) -> None:
    """The finding: 500 connections with unfinished headers were still held after 90 s.
    Some stall, one drips a byte per poll (a per-read timer would never fire for it)."""
    stalled = [socket.create_connection(address(limits_broker)) for _ in range(20)]
    dripping = socket.create_connection(address(limits_broker))
    try:
        for sock in stalled:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n")
        dripping.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        answers = [bytearray() for _ in stalled]

        def drip_and_check() -> bool:
            with contextlib.suppress(OSError):
                dripping.send(b"a")
            return is_closed(dripping)

        eventually(drip_and_check, what="the dripping client is disconnected")
        eventually(
            lambda: all(closed_after_answer(s, a) for s, a in zip(stalled, answers, strict=True)),
            what="every stalled client is disconnected",
        )
    finally:
        for sock in [*stalled, dripping]:
            sock.close()
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), bytes(answer[:80])
        assert b'"code":"request_timeout"' in answer


def test_an_unfinished_body_is_answered_408_and_closed(limits_broker: BrokerProcess) -> None:
    """An authenticated request whose body never completes: the app waits in receive()."""
    token = session_token("mallory", "acme", ("viewer",))
    request = head(
        [
            b"POST /v1/tokens HTTP/1.1",
            b"Host: broker",
            b"Authorization: Bearer " + token.encode(),
            b"Content-Type: application/json",
            b"Content-Length: 200",
        ]
    )
    answer = bytearray()
    with raw(limits_broker) as sock:
        sock.sendall(request + b'{"embed": ')
        eventually(lambda: closed_after_answer(sock, answer), what="the broker closes")
    assert answer.startswith(b"HTTP/1.1 408 "), bytes(answer[:80])
    assert b'"code":"request_timeout"' in answer


def test_an_unfinished_body_after_an_early_answer_is_closed(
    limits_broker: BrokerProcess,
) -> None:
    """The app answers before reading the body (no credentials: 401); a client that
    keeps dripping that body (each byte used to cancel uvicorn's keep-alive timer) no
    longer holds the connection, and gets no second answer."""
    request = head(
        [
            b"POST /v1/tokens HTTP/1.1",
            b"Host: broker",
            b"Content-Type: application/json",
            b"Content-Length: 100000",
        ]
    )
    answer = bytearray()
    with raw(limits_broker) as sock:
        sock.sendall(request + b'{"embed": ')

        def drip_and_check() -> bool:
            with contextlib.suppress(OSError):
                sock.send(b" ")
            return closed_after_answer(sock, answer)

        eventually(drip_and_check, what="the broker closes")
    assert answer.startswith(b"HTTP/1.1 401 "), bytes(answer[:80])
    assert answer.count(b"HTTP/1.1 ") == 1


# --- connections ----------------------------------------------------------------------


def test_probes_answer_while_idle_partial_connections_exceed_the_descriptor_limit(
    capped_broker: BrokerProcess,
) -> None:
    """The finding: 1,100 idle partial connections under a 1,024-descriptor limit made
    /healthz fail. Here the broker may open 128 descriptors and the attacker opens 300
    connections that never finish their headers (the header timeout is 10 minutes)."""
    pid = capped_broker.process.pid
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (128, 128))
    attackers: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(address(capped_broker))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n")
            attackers.append(sock)
        eventually(lambda: healthz(capped_broker) == 200, what="/healthz answers")
        for path in ("/readyz", "/metrics"):
            assert httpx.get(f"{capped_broker.url}{path}", timeout=5).status_code == 200
        # Counted: the broker holds no more of them than its cap and reserve.
        eventually(
            lambda: sum(not is_closed(s) for s in attackers) <= MAX_CONNECTIONS + PROBE_RESERVE,
            what="the broker holds at most its cap of the attacker's connections",
        )
    finally:
        for sock in attackers:
            sock.close()
    metrics = httpx.get(f"{capped_broker.url}/metrics", timeout=5).text
    assert 'token_broker_connections_refused_total{reason="evicted"}' in metrics


def test_busy_connections_leave_the_reserve_to_probes(capped_broker: BrokerProcess) -> None:
    """Every ordinary connection busy (requests in flight, not idle): probes still get
    a reserve connection; anything else is refused with 503 overloaded at once."""
    token = session_token("mallory", "acme", ("viewer",)).encode()
    request = head(
        [
            b"POST /v1/tokens HTTP/1.1",
            b"Host: broker",
            b"Authorization: Bearer " + token,
            b"Content-Type: application/json",
            b"Content-Length: 200",
        ]
    )
    busy: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = socket.create_connection(address(capped_broker))
            sock.sendall(request + b"{")
            busy.append(sock)
        assert healthz(capped_broker) == 200
        with raw(capped_broker) as sock:
            sock.sendall(request + b"{")
            status, problem = read_response(sock)
        assert status == 503
        assert problem["code"] == "overloaded"
        assert not any(is_closed(s) for s in busy)
    finally:
        for sock in busy:
            sock.close()


# --- file descriptors -----------------------------------------------------------------


def test_serve_refuses_a_cap_the_descriptor_limit_cannot_hold(tmp_path: Path) -> None:
    """The cap only protects probes while accept() has descriptors left: a hard limit
    below what BROKER_MAX_CONNECTIONS needs is a start-up error naming it, not a
    broker that falls over under load."""
    path = write_policy(tmp_path, base_policy())
    env = {**broker_environment("http://127.0.0.1:9"), "BROKER_CONFIG": str(path)}
    env["BROKER_PORT"] = "0"

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))

    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=low_limit,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("token-broker: BROKER_MAX_CONNECTIONS: "), lines[0]
    assert "at most 300" in lines[0]


def test_the_soft_descriptor_limit_is_raised_to_what_the_cap_needs() -> None:
    script = textwrap.dedent(
        """
        import resource
        from app.connections import ConnectionLimits, descriptor_problem
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 4096))
        limits = ConnectionLimits(8192, 100, 10.0, 10.0, 512, 8)
        print(descriptor_problem(limits), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split() == ["None", str(512 + 8 + DESCRIPTOR_HEADROOM)]
