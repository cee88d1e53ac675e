"""A real Redis for tests.

- :func:`redis_url`: the machine's Redis on 127.0.0.1:6379 when it answers
  ``PING``, otherwise a ``redis-server`` this helper starts on a free port. Tests that
  use it must keep to their own key prefix (:func:`unique_prefix`) and delete their keys
  (:func:`delete_keys`), because the server may be a developer's own.
- :func:`start_private_redis`: always a ``redis-server`` of its own, on a free port, that
  a test may stop (even ``SIGKILL``) and start again on the same port. Tests that break
  Redis use this one and never touch the shared server.

When no Redis can be had, :func:`redis_unavailable` fails the test under ``CI=true``
(CI installs redis-server, so a missing one is a broken CI, not a reason to skip) and
skips it elsewhere with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest
import redis

from tests.support.eventually import eventually
from tests.support.redis_server import ping, redis_server_args
from tests.support.servers import LOOPBACK, free_port

DEFAULT_PORT = 6379
STARTUP_TIMEOUT_SECONDS = 10.0


def redis_unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Redis is required in CI: {reason}")
    pytest.skip(f"no Redis for this test: {reason} (install redis-server to run it)")


def wait_until_answering(process: subprocess.Popen[bytes], port: int) -> None:
    """Until the ``redis-server`` just started as ``process`` answers ``PING`` on ``port``;
    an early exit or silence is :func:`redis_unavailable` (and the process is stopped)."""

    def answering() -> bool:
        if process.poll() is not None:
            redis_unavailable(f"redis-server exited at start on port {port}")
        return ping(port)

    try:
        eventually(answering, timeout=STARTUP_TIMEOUT_SECONDS, what=f"redis-server on {port}")
    except AssertionError:
        process.kill()
        process.wait(timeout=10)
        redis_unavailable(f"redis-server did not answer on port {port}")


def redis_server_executable() -> str:
    found = shutil.which("redis-server")
    if found is None:
        redis_unavailable("redis-server is not on PATH")
    return found


def stop_process(process: subprocess.Popen[bytes] | None, *, kill: bool = False) -> None:
    """Stop a server process: SIGTERM, or SIGKILL (a crash) with ``kill``; SIGKILL
    after 10 s either way. Nothing to do when it is gone already."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class RedisServer:
    """A ``redis-server`` subprocess on a fixed loopback port, without persistence."""

    def __init__(self, port: int | None = None) -> None:
        self.executable = redis_server_executable()
        self.port = port if port is not None else free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="tb-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self._process = subprocess.Popen(
            [self.executable, *redis_server_args(self.port, "--dir", self._dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_answering(self._process, self.port)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server; ``kill`` sends SIGKILL (a crash) instead of SIGTERM."""
        process, self._process = self._process, None
        stop_process(process, kill=kill)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def start_private_redis() -> Iterator[RedisServer]:
    """A ``redis-server`` of the caller's own on a free port; stopped at exit."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """The machine's Redis when it answers on 6379, otherwise one started here."""
    if ping(DEFAULT_PORT):
        yield f"redis://{LOOPBACK}:{DEFAULT_PORT}/0"
        return
    with start_private_redis() as server:
        yield server.url


def unique_prefix() -> str:
    """A key prefix no other test (or developer) uses."""
    return f"tb-test:{uuid.uuid4().hex[:12]}:"


def delete_keys(url: str, prefix: str) -> int:
    """Delete every key under ``prefix``; returns how many there were."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
        return len(keys)
    except redis.RedisError:
        return 0  # a private server a test stopped: nothing left to clean
    finally:
        client.close()
