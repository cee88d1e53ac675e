"""The token paths form no reference cycles.

``app.collector`` turns automatic full collections off while serving, on the premise
that a request's objects are freed by reference counting alone. This drives the real
app in-process (raw ASGI calls, so no test client's objects are in the way) against
the sandbox as a separate process, and checks that granted tokens, cache hits and
misses, leave nothing for the cyclic collector.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.support.eventually import eventually, eventually_async
from tests.support.policies import BASE_ENV, base_policy, write_policy
from tests.support.servers import LOOPBACK, free_port
from tests.support.stack import sandbox_env, session_token

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sandbox_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    env = {
        **os.environ,
        "SANDBOX_EMBEDDABLE_US_API_KEY": BASE_ENV["EMBEDDABLE_US_API_KEY"],
        "SANDBOX_EMBEDDABLE_EU_API_KEY": BASE_ENV["EMBEDDABLE_EU_API_KEY"],
        "SANDBOX_DATABRAIN_API_KEY": BASE_ENV["DATABRAIN_API_KEY"],
        "SANDBOX_LOG_LEVEL": "warning",
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "sandbox", "--host", LOOPBACK, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{LOOPBACK}:{port}"
    try:

        def healthy() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"sandbox did not start:\n{log.read_text()}")
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        eventually(healthy, timeout=30, what="the sandbox's /healthz")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


class InProcessApp:
    """The broker app with its lifespan, called with raw ASGI messages."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lifespan_sent: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> InProcessApp:
        async def receive() -> dict[str, Any]:
            return await self._lifespan.get()

        async def send(message: dict[str, Any]) -> None:
            self._lifespan_sent.append(message)

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        self._task = asyncio.create_task(self.app(scope, receive, send))
        await self._lifespan.put({"type": "lifespan.startup"})
        await eventually_async(lambda: self._lifespan_sent, what="the lifespan's answer")
        assert self._lifespan_sent[0]["type"] == "lifespan.startup.complete", self._lifespan_sent
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._lifespan.put({"type": "lifespan.shutdown"})
        assert self._task is not None
        await self._task

    async def post_token(self, session: str) -> int:
        body = b'{"embed":"sales-overview"}'
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "http",
            "server": (LOOPBACK, 80),
            "client": (LOOPBACK, 50000),
            "method": "POST",
            "root_path": "",
            "path": "/v1/tokens",
            "raw_path": b"/v1/tokens",
            "query_string": b"",
            "headers": [
                (b"host", b"broker"),
                (b"authorization", f"Bearer {session}".encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "state": dict(self.state),
        }
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await self.app(scope, receive, send)
        return statuses[0]


async def test_granted_tokens_leave_no_cyclic_garbage(
    sandbox_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in sandbox_env(sandbox_url).items():
        monkeypatch.setenv(key, value)
    path = write_policy(tmp_path, base_policy())
    broker = InProcessApp(create_app(Settings(config=path, gc_full_interval_seconds=0)))
    async with broker:
        for n in range(5):  # first calls build what is then reused (endpoints, metrics)
            session = session_token(f"warm-{n}")
            assert await broker.post_token(session) == 200
            assert await broker.post_token(session) == 200
        sessions = [session_token(f"user-{n}") for n in range(20)]
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for session in sessions:
                assert await broker.post_token(session) == 200  # a miss: the vendor is called
                assert await broker.post_token(session) == 200  # a hit
            gc.collect()
            left = collections.Counter(
                f"{type(item).__module__}.{type(item).__qualname__}" for item in gc.garbage
            )
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert not left, f"cyclic garbage per 40 requests: {dict(left.most_common(10))}"
