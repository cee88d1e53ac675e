"""The whole stack on loopback for the security tests, with one session issuer per
key source: HS secret (two issuers), static PEM, and JWKS issuers whose key sets are
served by a loopback server that counts every fetch.

One stack per test module: starting uvicorn twice and fetching JWKS costs more than
the whole catalogue.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.auth.conftest import LoopbackServer
from tests.auth.keys import HS_SECRET as OTHER_HS_SECRET
from tests.auth.keys import ec_key, jwks_document, rsa_key
from tests.support.eventually import eventually
from tests.support.policies import AUDIENCE, HS_ISSUER, base_policy
from tests.support.servers import serve_in_thread
from tests.support.stack import Stack, running_stack

RS_ISSUER = "https://rs.example.test/"
ES_ISSUER = "https://es.example.test/"
PEM_ISSUER = "https://pem.example.test/"
MIXED_ISSUER = "https://mixed.example.test/"
BURST_ISSUER = "https://burst.example.test/"
OTHER_HS_ISSUER = "other-backend"

JWKS_PATHS = {
    RS_ISSUER: "rs/jwks.json",
    ES_ISSUER: "es/jwks.json",
    MIXED_ISSUER: "mixed/jwks.json",
    BURST_ISSUER: "burst/jwks.json",
}
READY_TIMEOUT_SECONDS = 20.0


def publish_issuer_keys(server: LoopbackServer) -> None:
    server.publish(JWKS_PATHS[RS_ISSUER], jwks_document(rsa_key("rs-1"), rsa_key("rs-2")))
    server.publish(
        JWKS_PATHS[ES_ISSUER], jwks_document(ec_key("es-256"), ec_key("es-384", "P-384"))
    )
    server.publish(
        JWKS_PATHS[MIXED_ISSUER],
        jwks_document(
            rsa_key("mixed-rs512").jwk(alg="RS512"),
            rsa_key("mixed-rsa"),
            ec_key("mixed-p384", "P-384"),
        ),
    )
    server.publish(JWKS_PATHS[BURST_ISSUER], jwks_document(rsa_key("burst-1")))


def security_policy(keys_server: LoopbackServer) -> dict[str, Any]:
    """The standard test policy plus one issuer per asymmetric key source."""
    document = base_policy()

    def jwks_issuer(name: str, algorithms: list[str]) -> dict[str, Any]:
        return {
            "issuer": name,
            "audiences": [AUDIENCE],
            "algorithms": algorithms,
            "jwks_url": keys_server.url(JWKS_PATHS[name]),
        }

    document["session"]["issuers"] += [
        jwks_issuer(RS_ISSUER, ["RS256"]),
        jwks_issuer(ES_ISSUER, ["ES256", "ES384"]),
        jwks_issuer(MIXED_ISSUER, ["RS256", "RS512", "ES256", "ES384"]),
        jwks_issuer(BURST_ISSUER, ["RS256"]),
        {
            "issuer": PEM_ISSUER,
            "audiences": [AUDIENCE],
            "algorithms": ["RS256"],
            "public_key": rsa_key("pem").public_pem(),
        },
        {
            "issuer": OTHER_HS_ISSUER,
            "audiences": [AUDIENCE],
            "algorithms": ["HS256"],
            "secret": "${OTHER_HS_SECRET}",
        },
    ]
    assert document["session"]["issuers"][0]["issuer"] == HS_ISSUER
    return document


@dataclass
class SecurityStack:
    """The running stack and the JWKS server its issuers fetch from."""

    stack: Stack
    keys_server: LoopbackServer

    def jwks_fetches(self, issuer: str) -> int:
        return self.keys_server.hits(JWKS_PATHS[issuer])


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
            env={"OTHER_HS_SECRET": OTHER_HS_SECRET},
        ) as stack:
            wait_until_ready(stack.client, stack.broker)
            yield SecurityStack(stack, keys_server)
