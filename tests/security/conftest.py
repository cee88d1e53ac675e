"""The whole stack on loopback for the security tests, trusting the attack
catalogue's issuers (tests/auth/catalogue.py): HS secrets (two issuers), a static
PEM key, and JWKS issuers whose key sets are served by a loopback server that counts
every fetch.

One stack per test module: starting uvicorn twice and fetching JWKS costs more than
the whole catalogue.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.auth.catalogue import JWKS_ISSUERS, Issuer, secret_environment, session_section
from tests.auth.conftest import LoopbackServer
from tests.support.eventually import eventually
from tests.support.policies import base_policy
from tests.support.servers import serve_in_thread
from tests.support.stack import Stack, running_stack

READY_TIMEOUT_SECONDS = 20.0


def publish_issuer_keys(server: LoopbackServer) -> None:
    for issuer in JWKS_ISSUERS:
        server.publish(issuer.jwks_path, issuer.jwks())


def security_policy(keys_server: LoopbackServer) -> dict[str, Any]:
    """The standard test policy, its session section the catalogue's."""
    document = base_policy()
    document["session"] = session_section(keys_server.url, secret_by_name=True)
    return document


@dataclass
class SecurityStack:
    """The running stack and the JWKS server its issuers fetch from."""

    stack: Stack
    keys_server: LoopbackServer

    def jwks_fetches(self, issuer: Issuer) -> int:
        return self.keys_server.hits(issuer.jwks_path)


def wait_until_ready(client: httpx.Client, broker: str) -> None:
    """Every JWKS issuer has keys: the catalogue must not race the first fetch."""
    eventually(
        lambda: client.get(f"{broker}/readyz").status_code == 200,
        timeout=READY_TIMEOUT_SECONDS,
        what="every JWKS issuer has keys (/readyz)",
    )


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurityStack]:
    keys_server = LoopbackServer()
    publish_issuer_keys(keys_server)
    with serve_in_thread(keys_server.app) as keys_url:
        keys_server.base_url = keys_url
        with running_stack(
            tmp_path_factory.mktemp("security"),
            security_policy(keys_server),
            env=secret_environment(),
        ) as stack:
            wait_until_ready(stack.client, stack.broker)
            yield SecurityStack(stack, keys_server)
