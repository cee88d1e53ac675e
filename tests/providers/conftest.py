from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from app.runtime import vendor_transport
from tests.sandbox.harness import Sandbox, running_sandbox


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[Sandbox]:
    yield from running_sandbox()


@pytest.fixture
def sandbox(sandbox_server: Sandbox) -> Sandbox:
    sandbox_server.reset()
    return sandbox_server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncBaseTransport]:
    """The broker's own outbound transport (vendor calls go through it directly)."""
    async with vendor_transport() as shared:
        yield shared
