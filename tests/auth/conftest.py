"""Fixtures for auth tests: a real JWKS server on loopback, a fake monotonic clock,
and a verifier built from the standard test policy."""

from __future__ import annotations

import json
import ssl
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.auth import JwksStore, SessionVerifier
from app.config.models import SessionConfig
from app.observability.metrics import Metrics
from tests.auth.catalogue import ES, HS, PEM, RS
from tests.auth.keys import DEFAULT_AUDIENCE, ec_key, jwks_document, rsa_key
from tests.support.policies import HS_SECRET
from tests.support.servers import serve_in_thread

# The attack catalogue's issuers (and, below, their keys): one set for every level.
RS_ISSUER, ES_ISSUER, HS_ISSUER, PEM_ISSUER = RS.name, ES.name, HS.name, PEM.name


@dataclass
class Published:
    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


class LoopbackServer:
    """A real HTTP server that serves whatever a test publishes and counts requests
    per path (``/<path>``), including paths nobody published (404)."""

    def __init__(self) -> None:
        self.base_url = ""
        self._published: dict[str, Published] = {}
        self._hits: Counter[str] = Counter()
        self.app = Starlette(routes=[Route("/{path:path}", self._serve)])

    async def _serve(self, request: Request) -> Response:
        path = request.path_params["path"]
        self._hits[path] += 1
        published = self._published.get(path)
        if published is None:
            return Response(status_code=404)
        return Response(
            published.body,
            status_code=published.status,
            headers=published.headers,
            media_type="application/json",
        )

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    def publish(
        self,
        path: str,
        document: Any,
        *,
        status: int = 200,
        cache_control: str | None = None,
    ) -> None:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        headers = {"Cache-Control": cache_control} if cache_control else {}
        self._published[path] = Published(body, status, headers)

    def take_down(self, path: str, status: int = 503) -> None:
        self._published[path] = Published(b'{"error":"down"}', status)

    def hits(self, path: str) -> int:
        return self._hits[path]


class FakeClock:
    """A monotonic clock the test moves by hand (for the 30 s refetch window)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def loopback_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    with serve_in_thread(server.app) as base_url:
        server.base_url = base_url
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics.create()


@pytest.fixture(scope="session")
def tls_context() -> ssl.SSLContext:
    # Building one costs ~80 ms; a fresh client per test would otherwise build its own.
    return ssl.create_default_context()


@pytest.fixture
async def http_client(tls_context: ssl.SSLContext) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=tls_context) as client:
        yield client


@pytest.fixture
async def jwks_store(
    http_client: httpx.AsyncClient, metrics: Metrics, clock: FakeClock
) -> AsyncIterator[JwksStore]:
    store = JwksStore(http_client, metrics, clock=clock)
    yield store
    await store.aclose()


def standard_config(rs_jwks_url: str, es_jwks_url: str, **overrides: Any) -> dict[str, Any]:
    """The test policy's session section: one issuer per key source."""
    config: dict[str, Any] = {
        "issuers": [
            {
                "issuer": RS_ISSUER,
                "audiences": [DEFAULT_AUDIENCE, "second-app"],
                "algorithms": ["RS256"],
                "jwks_url": rs_jwks_url,
            },
            {
                "issuer": ES_ISSUER,
                "audiences": [DEFAULT_AUDIENCE],
                "algorithms": ["ES256", "ES384"],
                "jwks_url": es_jwks_url,
            },
            {
                "issuer": HS_ISSUER,
                "audiences": [DEFAULT_AUDIENCE],
                "algorithms": ["HS256"],
                "secret": HS_SECRET,
            },
            {
                "issuer": PEM_ISSUER,
                "audiences": [DEFAULT_AUDIENCE],
                "algorithms": ["RS256"],
                "public_key": rsa_key("pem").public_pem(),
            },
        ],
        "leeway_seconds": 30,
        "max_token_bytes": 8192,
        "claims": {"user_id": "sub", "tenants": "org_id", "roles": "roles", "email": "email"},
    }
    config.update(overrides)
    return config


@dataclass
class AuthEnv:
    """A started verifier on the standard policy, its JWKS paths on the server."""

    verifier: SessionVerifier
    store: JwksStore
    server: LoopbackServer
    clock: FakeClock
    metrics: Metrics
    rs_path: str
    es_path: str

    def rs_fetches(self) -> int:
        return self.server.hits(self.rs_path)


MakeVerifier = Callable[[dict[str, Any]], SessionVerifier]


@pytest.fixture
def make_verifier(jwks_store: JwksStore, metrics: Metrics) -> MakeVerifier:
    def make(session: dict[str, Any]) -> SessionVerifier:
        return SessionVerifier(SessionConfig.model_validate(session), jwks_store, metrics=metrics)

    return make


@pytest.fixture
async def env(
    loopback_server: LoopbackServer,
    jwks_store: JwksStore,
    make_verifier: MakeVerifier,
    clock: FakeClock,
    metrics: Metrics,
) -> AuthEnv:
    prefix = uuid.uuid4().hex
    rs_path, es_path = f"{prefix}/rs/jwks.json", f"{prefix}/es/jwks.json"
    loopback_server.publish(rs_path, jwks_document(rsa_key("rs-1"), rsa_key("rs-2")))
    loopback_server.publish(es_path, jwks_document(ec_key("es-256"), ec_key("es-384", "P-384")))
    verifier = make_verifier(
        standard_config(loopback_server.url(rs_path), loopback_server.url(es_path))
    )
    await verifier.start()
    return AuthEnv(verifier, jwks_store, loopback_server, clock, metrics, rs_path, es_path)
