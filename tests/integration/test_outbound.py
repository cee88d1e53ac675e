"""Outbound HTTP in an enterprise network, against real parts on loopback.

A forwarding proxy and a TLS origin (the vendor sandbox plus a JWKS document) run as
their own processes (``tests.support.forward_proxy``, ``tests.support.origin``); the
certificates come from a test CA (trustme). Vendor calls go through real provider
objects and JWKS fetches through the real JWKS store, both on the client that
``app.outbound`` builds from the settings an operator would give.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiohttp.abc import AbstractResolver, ResolveResult
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.auth import JwksStore
from app.observability.tracing import Tracing
from app.outbound import AiohttpTransport, OutboundOptions, create_outbound_client, tls_context
from app.providers.embeddable import EmbeddableConfig, EmbeddableProvider
from app.providers.errors import ProviderConnectError, ProviderProxyError
from app.providers.mapping import to_broker_error
from app.sandbox.settings import DEV_EMBEDDABLE_EU_API_KEY
from tests.auth.keys import jwks_document, rsa_key
from tests.support.eventually import eventually

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 20.0

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


# --- real processes -----------------------------------------------------------------------


@contextlib.contextmanager
def _child(module: str, directory: Path, *args: str) -> Iterator[int]:
    """``python -m module --port-file ... *args``; yields its port once it listens."""
    port_file = directory / f"{module.rsplit('.', 1)[-1]}-{time.monotonic_ns()}.port"
    log_path = port_file.with_suffix(".log")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--port-file", str(port_file), *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def listening() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{module} exited:\n{log_path.read_text()[-2000:]}")
            return port_file.exists()

        eventually(listening, timeout=START_TIMEOUT_SECONDS, what=f"{module} listening")
        yield int(port_file.read_text())
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Pki:
    ca: trustme.CA
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("token-broker.client.test")
    paths = Pki(
        ca,
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server-key.pem",
        directory / "client.pem",
        directory / "client-key.pem",
    )
    ca.cert_pem.write_to_path(str(paths.ca_file))
    server.cert_chain_pems[0].write_to_path(str(paths.server_cert))
    server.private_key_pem.write_to_path(str(paths.server_key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    client.private_key_pem.write_to_path(str(paths.client_key))
    return paths


@pytest.fixture(scope="module")
def jwks_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps(jwks_document(rsa_key("outbound-test"))))
    return path


@contextlib.contextmanager
def _origin(pki: Pki, jwks_file: Path, directory: Path, *extra: str) -> Iterator[int]:
    """Sandbox + JWKS over TLS with the test CA's certificate for localhost/127.0.0.1;
    ``extra`` adds options of ``tests.support.origin`` (``--client-ca``)."""
    with _child(
        "tests.support.origin",
        directory,
        "--certfile",
        str(pki.server_cert),
        "--keyfile",
        str(pki.server_key),
        "--jwks",
        str(jwks_file),
        *extra,
    ) as port:
        yield port


@pytest.fixture(scope="module")
def tls_origin(
    pki: Pki, jwks_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    with _origin(pki, jwks_file, tmp_path_factory.mktemp("origin")) as port:
        yield port


@pytest.fixture(scope="module")
def mtls_origin(
    pki: Pki, jwks_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """The same origin, but the TLS handshake requires a client certificate of the CA."""
    directory = tmp_path_factory.mktemp("mtls-origin")
    with _origin(pki, jwks_file, directory, "--client-ca", str(pki.ca_file)) as port:
        yield port


@dataclass
class ForwardProxy:
    port: int
    record: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def carried(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@contextlib.contextmanager
def _proxy(directory: Path, *flags: str) -> Iterator[ForwardProxy]:
    record = directory / f"proxy-{time.monotonic_ns()}.jsonl"
    with _child("tests.support.forward_proxy", directory, "--record", str(record), *flags) as port:
        yield ForwardProxy(port, record)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ForwardProxy]:
    with _proxy(tmp_path) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        for variable in (name, name.lower()):
            monkeypatch.delenv(variable, raising=False)


# --- helpers --------------------------------------------------------------------------------


def embeddable(client: httpx.AsyncClient, base_url: str) -> EmbeddableProvider:
    config = EmbeddableConfig.model_validate(
        {
            "type": "embeddable",
            "timeout_seconds": 5,
            "regions": {"eu": {"api_key": DEV_EMBEDDABLE_EU_API_KEY, "base_url": base_url}},
        }
    )
    return EmbeddableProvider("embeddable", config, http_client=client)


BODY = {"embeddableId": "c2b1a0de-0000-4000-8000-000000000001", "user": "outbound-user"}


async def vendor_token(client: httpx.AsyncClient, base_url: str) -> str:
    issued = await embeddable(client, base_url).issue(BODY, 600, "eu")
    return issued.token


async def jwks_keys(client: httpx.AsyncClient, url: str) -> int:
    store = JwksStore(client)
    try:
        keys = await store.source("https://idp.example.test/", url).refetch()
    finally:
        await store.aclose()
    return 0 if keys is None else len(keys.keys)


@contextlib.asynccontextmanager
async def outbound(options: OutboundOptions) -> AsyncIterator[httpx.AsyncClient]:
    async with create_outbound_client(options) as client:
        yield client


# --- proxies ----------------------------------------------------------------------------------


async def test_vendor_and_jwks_calls_tunnel_through_the_configured_proxy(
    proxy: ForwardProxy, tls_origin: int, pki: Pki
) -> None:
    options = OutboundOptions(proxy=proxy.url, ca_bundle=pki.ca_file)
    async with outbound(options) as client:
        token = await vendor_token(client, f"https://localhost:{tls_origin}/embeddable/eu")
        keys = await jwks_keys(client, f"https://127.0.0.1:{tls_origin}/jwks.json")

    assert token.count(".") == 2
    assert keys == 1
    carried = {(entry["method"], entry["target"]) for entry in proxy.carried()}
    # https is a CONNECT tunnel: the proxy sees host and port, never the API key.
    assert carried == {
        ("CONNECT", f"localhost:{tls_origin}"),
        ("CONNECT", f"127.0.0.1:{tls_origin}"),
    }


async def test_standard_variables_route_through_the_proxy_except_no_proxy(
    proxy: ForwardProxy, tls_origin: int, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with outbound(OutboundOptions(ca_bundle=pki.ca_file)) as client:
        token = await vendor_token(client, f"https://localhost:{tls_origin}/embeddable/eu")
        keys = await jwks_keys(client, f"https://127.0.0.1:{tls_origin}/jwks.json")

    assert token and keys == 1
    # The vendor went through the proxy; the JWKS host is in NO_PROXY: direct.
    assert [(e["method"], e["target"]) for e in proxy.carried()] == [
        ("CONNECT", f"localhost:{tls_origin}")
    ]


async def test_traced_calls_get_one_client_span_each_proxied_or_direct(
    proxy: ForwardProxy, tls_origin: int, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tracing wraps the direct transport and each proxy route's: one span per call.
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing.with_provider(provider)
    options = OutboundOptions(ca_bundle=pki.ca_file)
    async with create_outbound_client(options, wrap=tracing.transport) as client:
        token = await vendor_token(client, f"https://localhost:{tls_origin}/embeddable/eu")
        keys = await jwks_keys(client, f"https://127.0.0.1:{tls_origin}/jwks.json")
    provider.shutdown()

    assert token and keys == 1
    spans = exporter.get_finished_spans()
    assert sorted(((s.attributes or {})["server.address"], s.kind) for s in spans) == [
        ("127.0.0.1", SpanKind.CLIENT),  # JWKS, direct (NO_PROXY)
        ("localhost", SpanKind.CLIENT),  # the vendor, through the proxy
    ]
    assert [(e["method"], e["target"]) for e in proxy.carried()] == [
        ("CONNECT", f"localhost:{tls_origin}")
    ]


async def test_no_proxy_applies_with_the_broker_proxy_setting_too(
    proxy: ForwardProxy, tls_origin: int, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "localhost")
    async with outbound(OutboundOptions(proxy=proxy.url, ca_bundle=pki.ca_file)) as client:
        await vendor_token(client, f"https://localhost:{tls_origin}/embeddable/eu")
        await jwks_keys(client, f"https://127.0.0.1:{tls_origin}/jwks.json")

    assert [(e["method"], e["target"]) for e in proxy.carried()] == [
        ("CONNECT", f"127.0.0.1:{tls_origin}")
    ]


async def test_without_any_proxy_setting_calls_go_direct(
    proxy: ForwardProxy, tls_origin: int, pki: Pki
) -> None:
    async with outbound(OutboundOptions(ca_bundle=pki.ca_file)) as client:
        await vendor_token(client, f"https://localhost:{tls_origin}/embeddable/eu")

    assert proxy.carried() == []


async def test_proxy_credentials_are_sent_to_the_proxy_and_shown_nowhere(
    proxy: ForwardProxy, tls_origin: int, pki: Pki
) -> None:
    url = f"http://egress-user:proxy-pass-8271@127.0.0.1:{proxy.port}"
    async with outbound(OutboundOptions(proxy=url, ca_bundle=pki.ca_file)) as client:
        await vendor_token(client, f"https://localhost:{tls_origin}/embeddable/eu")
        description = json.dumps(getattr(client, "description", {}))

    assert [e["proxy_authorization"] for e in proxy.carried()] == [True]
    assert "proxy-pass-8271" not in description and "egress-user" not in description
    assert f"http://127.0.0.1:{proxy.port}" in description


async def test_a_refusing_proxy_is_reported_as_the_proxy_not_the_vendor(
    tmp_path: Path, tls_origin: int, pki: Pki
) -> None:
    with _proxy(tmp_path, "--refuse-connect") as refusing:
        url = f"http://egress-user:proxy-pass-8271@127.0.0.1:{refusing.port}"
        async with outbound(OutboundOptions(proxy=url, ca_bundle=pki.ca_file)) as client:
            with pytest.raises(ProviderProxyError) as caught:
                await vendor_token(client, f"https://localhost:{tls_origin}/embeddable/eu")

    error = to_broker_error(caught.value)
    assert error.code == "upstream_unavailable"
    assert f"proxy http://127.0.0.1:{refusing.port}" in str(error.detail)
    assert "HTTP 403" in str(error.detail)
    assert "proxy-pass-8271" not in str(error.detail)
    assert caught.value.retryable


async def test_an_unreachable_proxy_is_reported_as_the_proxy(tls_origin: int, pki: Pki) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens here once the socket closes
    async with outbound(
        OutboundOptions(proxy=f"http://127.0.0.1:{port}", ca_bundle=pki.ca_file)
    ) as client:
        with pytest.raises(ProviderProxyError) as caught:
            await vendor_token(client, f"https://localhost:{tls_origin}/embeddable/eu")
        store = JwksStore(client)
        source = store.source("https://idp.example.test/", f"https://127.0.0.1:{tls_origin}/j")
        assert await source.refetch() is None
        await store.aclose()

    assert f"the proxy http://127.0.0.1:{port} could not be reached" in caught.value.message


# --- trust and client certificates ---------------------------------------------------------


async def test_a_private_ca_is_trusted_only_through_the_bundle_setting(
    tls_origin: int, pki: Pki
) -> None:
    url = f"https://localhost:{tls_origin}/embeddable/eu"
    async with outbound(OutboundOptions()) as client:
        with pytest.raises(ProviderConnectError) as refused:
            await vendor_token(client, url)
    async with outbound(OutboundOptions(ca_bundle=pki.ca_file)) as client:
        token = await vendor_token(client, url)

    assert "ConnectError" in refused.value.message
    assert token.count(".") == 2


async def test_a_vendor_behind_mtls_needs_the_client_certificate(
    mtls_origin: int, pki: Pki
) -> None:
    url = f"https://localhost:{mtls_origin}/embeddable/eu"
    async with outbound(OutboundOptions(ca_bundle=pki.ca_file)) as client:
        with pytest.raises(ProviderConnectError):
            await vendor_token(client, url)
    identity = OutboundOptions(
        ca_bundle=pki.ca_file, client_cert=pki.client_cert, client_key=pki.client_key
    )
    async with outbound(identity) as client:
        token = await vendor_token(client, url)
        keys = await jwks_keys(client, f"https://localhost:{mtls_origin}/jwks.json")

    assert token.count(".") == 2
    assert keys == 1


# --- dual-stack hosts ----------------------------------------------------------------------


class DualStackResolver(AbstractResolver):
    """``dualstack.test`` → ::1 first (nothing answers there), then 127.0.0.1."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        assert host == "dualstack.test"
        return [
            ResolveResult(hostname=host, host=address, port=port, family=family_, proto=0, flags=0)
            for address, family_ in (("::1", socket.AF_INET6), ("127.0.0.1", socket.AF_INET))
        ]

    async def close(self) -> None:
        return None


@contextlib.contextmanager
def silent_ipv6_listener(port: int) -> Iterator[None]:
    """[::1]:port accepts no new connection and refuses none: its accept queue is full,
    so the kernel drops further SYNs and a connect there waits (a broken IPv6 route)."""
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("::1", port))
        listener.listen(0)
        for _ in range(2):
            filler = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("::1", port))
            fillers.append(filler)
        yield
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def _answering_ipv4_server() -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


@pytest.mark.parametrize("happy_eyeballs", [True, False], ids=["happy-eyeballs", "sequential"])
async def test_an_address_family_that_does_not_answer_does_not_eat_the_connect_timeout(
    happy_eyeballs: bool,
) -> None:
    server, port = await _answering_ipv4_server()
    transport = AiohttpTransport(
        ssl_context=tls_context(OutboundOptions()),
        resolver=DualStackResolver(),
        happy_eyeballs_delay=0.25 if happy_eyeballs else None,
    )
    try:
        with silent_ipv6_listener(port):
            async with create_outbound_client(
                OutboundOptions(trust_env=False), transport=transport
            ) as client:
                timeout = httpx.Timeout(5.0, connect=1.5)
                if happy_eyeballs:
                    response = await client.get(f"http://dualstack.test:{port}/", timeout=timeout)
                    assert response.text == "ok"
                else:
                    # The control: without Happy Eyeballs the silent ::1 takes it all.
                    with pytest.raises(httpx.ConnectTimeout):
                        await client.get(f"http://dualstack.test:{port}/", timeout=timeout)
    finally:
        server.close()
        await server.wait_closed()


def test_the_default_client_uses_happy_eyeballs() -> None:
    transport = AiohttpTransport(ssl_context=tls_context(OutboundOptions()))
    assert transport.connector_settings["happy_eyeballs_delay"] == 0.25


# --- the environment of a real process --------------------------------------------------------


def _serve_fails_with(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    from tests.support.policies import BASE_ENV, base_policy, write_policy

    policy = write_policy(tmp_path, base_policy())
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=ROOT,
        env={**os.environ, **BASE_ENV, "BROKER_CONFIG": str(policy), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BROKER_OUTBOUND_CA_BUNDLE": "{tmp}/missing.pem"}, "BROKER_OUTBOUND_CA_BUNDLE"),
        ({"BROKER_OUTBOUND_CA_BUNDLE": "{tmp}/not-pem.txt"}, "BROKER_OUTBOUND_CA_BUNDLE"),
        ({"BROKER_OUTBOUND_CLIENT_CERT": "{tmp}/not-pem.txt"}, "BROKER_OUTBOUND_CLIENT_CERT"),
        ({"BROKER_OUTBOUND_CLIENT_KEY": "{tmp}/not-pem.txt"}, "BROKER_OUTBOUND_CLIENT_KEY"),
        ({"BROKER_OUTBOUND_PROXY": "ftp://user:pw-123@proxy:21"}, "BROKER_OUTBOUND_PROXY"),
        ({"HTTPS_PROXY": "socks9://user:pw-123@proxy:1080"}, "HTTPS_PROXY"),
    ],
)
def test_an_unusable_outbound_setting_is_one_line_and_exit_1(
    env: dict[str, str], named: str, tmp_path: Path
) -> None:
    (tmp_path / "not-pem.txt").write_text("hello")
    completed = _serve_fails_with(
        {key: value.format(tmp=tmp_path) for key, value in env.items()}, tmp_path
    )

    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert named in lines[0]
    assert "pw-123" not in completed.stderr
    assert "Traceback" not in completed.stderr


# --- the whole broker ---------------------------------------------------------------------


def test_a_broker_process_sends_vendor_calls_through_the_proxy_and_names_it(
    proxy: ForwardProxy, tmp_path: Path
) -> None:
    """``token-broker serve`` with ``BROKER_OUTBOUND_PROXY`` (credentials in it): the
    token call goes through the proxy, ``/readyz`` and the start-up log name the proxy
    and the transport, and the credentials appear nowhere."""
    from tests.integration.brokers import (
        broker_environment,
        broker_processes,
        running_sandbox,
    )
    from tests.support.policies import base_policy, write_policy
    from tests.support.stack import bearer, session_token

    credentials = "egress-user:proxy-pass-8271"
    with running_sandbox() as sandbox:
        environment = broker_environment(
            sandbox.url,
            outbound_proxy=f"http://{credentials}@127.0.0.1:{proxy.port}",
        )
        policy = write_policy(tmp_path, base_policy())
        with (
            broker_processes(("proxied",), policy, environment, tmp_path) as brokers,
            httpx.Client(timeout=30, trust_env=False) as client,
        ):
            broker = brokers["proxied"]
            ready = client.get(f"{broker.url}/readyz")
            answer = client.post(
                f"{broker.url}/v1/tokens",
                json={"embed": "sales-overview"},
                headers=bearer(session_token()),
            )
            # Log lines reach the file from a writer thread, in batches: wait for it.
            started = eventually(
                lambda: broker.log_events("broker.started"), what="the broker.started line"
            )
            log_text = broker.log_path.read_text()

    assert answer.status_code == 200, answer.text
    outbound_check = ready.json()["checks"]["outbound"]
    assert outbound_check["proxy"] == {"all://": f"http://127.0.0.1:{proxy.port}"}
    assert outbound_check["transport"].startswith("aiohttp ")
    assert started[0]["outbound"] == outbound_check
    carried = proxy.carried()
    assert [(entry["method"], entry["proxy_authorization"]) for entry in carried] == [
        ("POST", True)
    ]
    assert carried[0]["target"].startswith(f"{sandbox.url}/embeddable/")
    for text in (ready.text, log_text):
        assert "proxy-pass-8271" not in text
