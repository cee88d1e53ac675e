from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from app.outbound import OutboundOptions, create_outbound_client
from tests.sandbox.harness import Sandbox, running_sandbox


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[Sandbox]:
    yield from running_sandbox()


@pytest.fixture
def sandbox(sandbox_server: Sandbox) -> Sandbox:
    sandbox_server.reset()
    return sandbox_server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The broker's own outbound client (no proxy from the environment: hermetic)."""
    async with create_outbound_client(OutboundOptions(trust_env=False)) as shared:
        yield shared
