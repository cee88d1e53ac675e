"""How a ``redis-server`` of our own is started and asked whether it answers.

Kept apart from :mod:`tests.support.redis` (pytest skips, redis-py clients) because the
benchmark (``bench/harness.py``, row S8) starts the same server and should not import
pytest to do it: the test fixtures and the benchmark share this one command line.
"""

from __future__ import annotations

import socket

from tests.support.servers import LOOPBACK


def ping(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True when a Redis answers ``PING`` at host:port (plain socket, no client state)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_server_args(port: int, *extra: str) -> list[str]:
    """``redis-server`` arguments: ``port`` on loopback, no persistence, warnings only;
    ``extra`` adds options (``--dir``, cluster or replica settings)."""
    return [
        "--port",
        str(port),
        "--bind",
        LOOPBACK,
        "--save",
        "",
        "--appendonly",
        "no",
        "--loglevel",
        "warning",
        *extra,
    ]
