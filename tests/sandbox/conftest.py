from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sandbox.harness import Sandbox, running_sandbox


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[Sandbox]:
    yield from running_sandbox()


@pytest.fixture
def sandbox(sandbox_server: Sandbox) -> Sandbox:
    sandbox_server.reset()
    return sandbox_server
