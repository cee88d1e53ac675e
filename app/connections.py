"""Limits on what a client may send before the app sees it (issue 14, item 4).

The broker serves HTTP/1.1 with uvicorn's httptools protocol, which on its own reads
whatever arrives: a header of any size (httptools keeps an unfinished header value by
repeated concatenation, so a 64 MiB header costs hundreds of MiB and seconds of
event-loop time), any number of header fields, at any pace, on as many connections as
the process has file descriptors. uvicorn only times out a kept-alive connection
*after* a response, and its ``limit_concurrency`` keeps accepting connections and then
answers 503 to every request, probes included. h11's ``max_incomplete_event_size``
would bound one thing (header size) and give up httptools' parser. So the bounds are
added here, where the bytes arrive, in a subclass of uvicorn's own protocol that uvicorn
is handed through its ``http=`` option (:class:`ConnectionGuard` is that factory):

- **header size**: the request line and header fields of one request, counted on the
  wire, at most ``BROKER_MAX_HEADER_BYTES``; the parser is never fed a byte beyond the
  bound, so an unfinished header holds at most that much. ``431 headers_too_large``.
- **header count**: at most ``BROKER_MAX_HEADER_FIELDS``; ``431 headers_too_large``.
- **header time**: a request's headers must be complete within
  ``BROKER_HEADER_TIMEOUT_SECONDS`` of the connection opening or of the request's first
  byte; ``408 request_timeout``, then the connection is closed.
- **body time**: the body must be complete within ``BROKER_BODY_TIMEOUT_SECONDS`` of
  its first bytes; ``408 request_timeout`` (or a plain close when the app already
  answered), and the app sees the client as disconnected.
- **connections**: at most ``BROKER_MAX_CONNECTIONS`` ordinary connections per process.
  Over that, a new connection first displaces the oldest *idle* one (no request in
  flight: between requests, or headers unfinished; the idle partial connections of a
  slow-loris attack are what it finds). When every connection is busy, up to
  ``BROKER_PROBE_RESERVE`` more are accepted for probes only (``GET``/``HEAD`` of
  ``/healthz``, ``/readyz``, ``/metrics``; anything else on them is ``503 overloaded``),
  and beyond that a connection is answered ``503 overloaded`` and closed at once, so the
  process never runs out of file descriptors (``app.cli`` checks the descriptor limit
  at start-up).

Every refusal is a problem+json body with a stable code and a request id, counted in
``token_broker_connections_refused_total{reason}``. The limits apply per worker process.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import resource
from asyncio import TimerHandle
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.errors import (
    PROBLEM_CONTENT_TYPE,
    BrokerError,
    HeadersTooLarge,
    Overloaded,
    RequestTimeout,
)
from app.observability.metrics import Metrics
from app.settings import Settings

log = logging.getLogger("token_broker.connections")

PROBE_PATHS = frozenset({b"/healthz", b"/readyz", b"/metrics"})
PROBE_METHODS = frozenset({b"GET", b"HEAD"})


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    max_header_fields: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    max_connections: int
    probe_reserve: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_header_fields=settings.max_header_fields,
            header_timeout_seconds=settings.header_timeout_seconds,
            body_timeout_seconds=settings.body_timeout_seconds,
            max_connections=settings.max_connections,
            probe_reserve=settings.probe_reserve,
        )


LINGER_SECONDS = 2.0
"""After refusing a request whose client may still be sending (a header too large, too
many fields, a deadline passed), the answer is followed by a FIN and whatever still
arrives is read and discarded for at most this long, then the connection is closed.
Closing at once with unread input makes the kernel answer with a reset, which can
destroy the 431/408 in the client's receive buffer before it reads it (the "lingering
close" every HTTP server needs). Nothing read in that time is kept."""
LINGER_MAX_BYTES = 256 * 1024
"""...and at most this much: a client that goes on sending past it is cut off at once
(it gets a reset; what a refused client can make the broker read stays bounded)."""
# Descriptors the process needs besides client connections: listening sockets, vendor
# and JWKS pools, Redis, log and metric files, and connections accepted in one burst
# before the ones they displace are closed.
DESCRIPTOR_HEADROOM = 256


def descriptor_problem(limits: ConnectionLimits) -> str | None:
    """Why this process cannot hold ``limits`` connections, in one line; None when it
    can. Raises the soft ``RLIMIT_NOFILE`` toward the hard one first, as servers do: the
    cap only protects the probes while accept() still has descriptors to give."""
    needed = limits.max_connections + limits.probe_reserve + DESCRIPTOR_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard == resource.RLIM_INFINITY or hard >= needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        return None
    return (
        f"BROKER_MAX_CONNECTIONS: {limits.max_connections} connections plus "
        f"{limits.probe_reserve} for probes need about {needed} file descriptors, but this "
        f"process may open at most {hard} (ulimit -n); lower BROKER_MAX_CONNECTIONS or "
        "raise the limit"
    )


# What a request sends besides the session token: the request line, Host, Origin,
# Content-Type, a user agent, "Authorization: Bearer " or the cookie's name.
HEADER_ROOM_BESIDES_TOKEN = 2048


def header_room_problem(max_header_bytes: int, max_token_bytes: int) -> str | None:
    """Why the header bound would refuse sessions the policy accepts, in one line;
    None when it does not. A session travels in a header (bearer or cookie), so a
    token of ``session.max_token_bytes`` must fit with room to spare."""
    needed = max_token_bytes + HEADER_ROOM_BESIDES_TOKEN
    if max_header_bytes >= needed:
        return None
    return (
        f"BROKER_MAX_HEADER_BYTES: {max_header_bytes} bytes cannot carry the session "
        f"tokens of up to {max_token_bytes} bytes that session.max_token_bytes allows; "
        f"set it to at least {needed}"
    )


class Admission(enum.Enum):
    ORDINARY = "ordinary"
    PROBES_ONLY = "probes_only"
    REFUSED = "refused"


class ConnectionGuard:
    """The protocol factory uvicorn calls for each connection (its ``http=`` option),
    and the registry of the open connections it made, oldest first.

    One per server process: with several workers each gets its own copy (uvicorn pickles
    its config into the spawned workers; the registry is empty then)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._open: dict[GuardedHttpProtocol, None] = {}

    def __call__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> GuardedHttpProtocol:
        return GuardedHttpProtocol(config, server_state, app_state, _loop, guard=self)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def admit(self, connection: GuardedHttpProtocol) -> Admission:
        self._open[connection] = None
        if len(self._open) <= self.limits.max_connections:
            return Admission.ORDINARY
        victim = next((c for c in self._open if c is not connection and c.idle), None)
        if victim is not None:
            del self._open[victim]
            victim.evict()
            return Admission.ORDINARY
        if len(self._open) <= self.limits.max_connections + self.limits.probe_reserve:
            return Admission.PROBES_ONLY
        del self._open[connection]
        return Admission.REFUSED

    def forget(self, connection: GuardedHttpProtocol) -> None:
        self._open.pop(connection, None)


class _Refused(Exception):
    """Raised from a parser callback to stop httptools mid-feed; the refusal itself is
    kept on the protocol (httptools wraps callback exceptions)."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`ConnectionLimits`."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        guard: ConnectionGuard,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard = guard
        self._limits = guard.limits
        self._probes_only = False
        self._done = False  # refused or evicted: nothing more is read or written
        self._refusal: tuple[BrokerError, str] | None = None
        # Per request: reading its request line and headers, and how much of them.
        self._reading_headers = True
        self._header_bytes = 0
        self._header_timer: TimerHandle | None = None
        self._body_timer: TimerHandle | None = None
        self._linger_timer: TimerHandle | None = None
        self._linger_bytes_left = 0

    # --- connection ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        admission = self._guard.admit(self)
        if admission is Admission.REFUSED:
            self._refuse(Overloaded(), "over_capacity")
            return
        self._probes_only = admission is Admission.PROBES_ONLY
        self._header_timer = self.loop.call_later(
            self._limits.header_timeout_seconds, self._header_timed_out
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._guard.forget(self)
        super().connection_lost(exc)

    @property
    def idle(self) -> bool:
        """No request in flight: between requests, or its headers unfinished."""
        return (
            self._reading_headers
            and not self._done
            and (self.cycle is None or self.cycle.response_complete)
        )

    def evict(self) -> None:
        """Close to make room for a new connection (:meth:`ConnectionGuard.admit`)."""
        self._done = True
        self._cancel_timers()
        self._count("evicted")
        self.transport.close()

    # --- reading --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._done:
            if self._linger_timer is not None:  # refused: discard, within the bound
                self._linger_bytes_left -= len(data)
                if self._linger_bytes_left < 0:
                    self.transport.close()
            return
        if not self._reading_headers:
            fed = self._feed(data)
        elif len(data) <= self._limits.max_header_bytes - self._header_bytes:
            self._header_bytes += len(data)
            fed = self._feed(data)
        else:
            fed = self._feed_bounded(data)
        if not fed:
            return
        # Timers only for what is still unfinished after this read: a request that
        # arrives whole (the common case) arms none.
        if self._reading_headers:
            if self._header_bytes and self._header_timer is None:
                self._header_timer = self.loop.call_later(
                    self._limits.header_timeout_seconds, self._header_timed_out
                )
        elif (
            self._body_timer is None
            and self.cycle is not None
            and self.cycle.more_body
            and not self.cycle.response_complete
        ):
            self._body_timer = self.loop.call_later(
                self._limits.body_timeout_seconds, self._body_timed_out
            )

    def _feed_bounded(self, data: bytes) -> bool:
        """Feed ``data`` in parts, never a header byte beyond the bound: what the parser
        buffers for an unfinished header stays bounded, whatever arrives at once."""
        while data:
            if self._reading_headers:
                room = self._limits.max_header_bytes - self._header_bytes
                if room <= 0:
                    self._refuse(HeadersTooLarge(self._size_detail()), "header_too_large")
                    return False
                part, data = data[:room], data[room:]
                self._header_bytes += len(part)
            else:
                part, data = data, b""
            if not self._feed(part):
                return False
        return True

    def _feed(self, data: bytes) -> bool:
        """Feed the parser as uvicorn does; False when the connection is done."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
            else:
                self._invalid()
            return False
        except httptools.HttpParserError:
            self._invalid()
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return not self.transport.is_closing()

    def _invalid(self) -> None:
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self._done = True
        self._cancel_timers()
        self.send_400_response(message)

    def _size_detail(self) -> str:
        return f"the request line and headers exceed {self._limits.max_header_bytes} bytes"

    # --- parser callbacks -------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        # Counted once they are parsed: their bytes were bounded while they arrived.
        if len(self.headers) > self._limits.max_header_fields:
            detail = f"more than {self._limits.max_header_fields} header fields"
            self._refusal = (HeadersTooLarge(detail), "too_many_headers")
            raise _Refused
        if self._probes_only and not self._is_probe():
            detail = "the broker is at its connection limit; retry shortly"
            self._refusal = (Overloaded(detail), "reserve_not_probe")
            raise _Refused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._reading_headers = True
        self._header_bytes = 0

    def _is_probe(self) -> bool:
        if self.parser.get_method() not in PROBE_METHODS:
            return False
        try:
            return httptools.parse_url(self.url).path in PROBE_PATHS
        except httptools.HttpParserInvalidURLError:
            return False

    # --- timers -----------------------------------------------------------------------

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._done or not self._reading_headers or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request waits behind one still being answered: its clock
            # restarts rather than cut that answer short.
            self._header_timer = self.loop.call_later(
                self._limits.header_timeout_seconds, self._header_timed_out
            )
            return
        detail = (
            f"the request headers did not arrive within {self._limits.header_timeout_seconds:g} s"
        )
        self._refuse(RequestTimeout(detail), "header_timeout")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self._done or cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        detail = f"the request body did not arrive within {self._limits.body_timeout_seconds:g} s"
        self._refuse(RequestTimeout(detail), "body_timeout")

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = self._linger_timer = None

    # --- refusing ---------------------------------------------------------------------

    def _refuse(self, error: BrokerError, reason: str) -> None:
        """Answer ``error`` and close; only close when this connection's current answer
        has begun already (a second status line would be a response nobody asked for)."""
        self._done = True
        self._cancel_timers()
        self._count(reason)
        log.debug("http.refused", extra={"reason": reason})
        cycle = self.cycle
        in_flight = cycle is not None and not cycle.response_complete
        if cycle is not None and in_flight:
            # The app waits in receive() or is still working: it now sees a disconnect,
            # and whatever it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        # The last cycle is the current request's while its body is read, or while it
        # is still being answered; between requests it is a finished one.
        current = in_flight or not self._reading_headers
        answered = cycle is not None and current and cycle.response_started
        if not answered and not self.transport.is_closing():
            self.transport.write(self._problem_bytes(error))
        if reason == "over_capacity" or self.transport.is_closing():
            # Nothing was read from it yet: close at once, the slot is what is short.
            self.transport.close()
            return
        self._linger()

    def _linger(self) -> None:
        """Send what is queued and a FIN, keep discarding input (``data_received``)
        until the client closes, :data:`LINGER_SECONDS` pass or more than
        :data:`LINGER_MAX_BYTES` arrive."""
        transport = self.transport
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if not transport.is_reading():  # paused by flow control while a body was read
            transport.resume_reading()
        self._linger_bytes_left = LINGER_MAX_BYTES
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, transport.close)

    def _problem_bytes(self, error: BrokerError) -> bytes:
        # Unique, not secret (as app.api.middleware): nothing reached the app to log it.
        request_id = f"{random.getrandbits(128):032x}"
        body = orjson.dumps(error.problem(request_id))
        lines = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            lines.append(name + b": " + value + b"\r\n")
        for name_text, value_text in error.headers.items():
            lines.append(name_text.encode("ascii") + b": " + value_text.encode("ascii") + b"\r\n")
        lines += [
            b"content-type: " + PROBLEM_CONTENT_TYPE.encode("ascii") + b"\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"x-request-id: " + request_id.encode("ascii") + b"\r\n",
            b"x-content-type-options: nosniff\r\n",
            b"cache-control: no-store\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
        return b"".join(lines)

    def _count(self, reason: str) -> None:
        metrics = self.app_state.get("metrics")
        if isinstance(metrics, Metrics):
            metrics.connections_refused_total.labels(reason=reason).inc()
