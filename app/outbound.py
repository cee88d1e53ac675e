"""Outbound HTTP: the one ``httpx.AsyncClient`` that every vendor and JWKS call goes through.

The lifespan (``app.main``) builds it once with :func:`create_outbound_client` and hands
it to the providers and the JWKS store (``http_client=``); tests inject their own. So
whatever an operator sets here applies to every outbound call (operations.md "Outbound
HTTP in enterprise networks"):

- **proxy**: ``BROKER_OUTBOUND_PROXY``, else ``HTTPS_PROXY`` / ``HTTP_PROXY`` /
  ``ALL_PROXY``, read by httpx itself (:func:`proxy_routes`); ``NO_PROXY`` exempts hosts
  either way. https goes through the proxy as a ``CONNECT`` tunnel, so the proxy sees
  the host name, never the API key. A proxy that refuses, or answers the ``CONNECT``
  with an error, is :class:`httpx.ProxyError` naming the proxy (without credentials);
- **trust**: the system store (which honours ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``) plus
  ``BROKER_OUTBOUND_CA_BUNDLE``; certifi's bundle only when the system store is empty;
- **client certificate** (mTLS): ``BROKER_OUTBOUND_CLIENT_CERT`` / ``_KEY``;
- **dual-stack hosts**: Happy Eyeballs (RFC 8305, aiohttp's ``aiohappyeyeballs``): a
  second address is tried 250 ms after the first instead of after the first's timeout.

The transport under the client is aiohttp's connection pool behind httpx's documented
transport interface (:class:`AiohttpTransport`). Measured (bench/RESULTS.md, S9): on
httpx's own transport (httpcore + anyio + h11) the broker's cache-miss path could not
reach the S3 target, httpcore's pool spends far more CPU per call and queues under 64
concurrent calls; aiohttp (C parser, well kept) supports all of the above. A
hand-written transport was faster still in CPU per call but supported none of the
enterprise settings and was deleted for that reason.

One guard is added to aiohttp's pool: a kept-alive connection that receives bytes
while no request is in flight (a stray second response from a vendor or middlebox), or
more bytes than the answer it was reading, is closed, never reused: otherwise the
*next* caller on it, another tenant's user, would read the first user's token (issue
14 item 5; :class:`_GuardedConnector`). That rule, not a pool per tenant or region, is
what keeps answers apart: the pool is shared by every provider and region on a host
(docs/outbound.md explains why).

Exceptions follow httpx's tree (``httpx.TransportError``): ``ProxyError``,
``ConnectError`` (TCP/TLS/DNS; nothing was sent), ``ConnectTimeout``, ``ReadTimeout``,
``RemoteProtocolError`` (closed before or during the answer, malformed answer),
``ReadError`` (broken body), ``UnsupportedProtocol``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar
from importlib.metadata import version
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import aiohttp
import certifi
import httpx
from aiohttp.abc import AbstractResolver
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_parser import RawResponseMessage
from aiohttp.streams import StreamReader
from httpx._utils import get_environment_proxies

MAX_CONNECTIONS: Final = 512
KEEPALIVE_SECONDS: Final = 30.0
HAPPY_EYEBALLS_DELAY_SECONDS: Final = 0.25
"""RFC 8305's recommended "Connection Attempt Delay"."""
DEFAULT_TIMEOUT: Final = httpx.Timeout(5.0, connect=2.0)
USER_AGENT: Final = "token-broker"
TRANSPORT_NAME: Final = f"aiohttp {version('aiohttp')}"


class OutboundConfigError(ValueError):
    """An outbound setting that cannot work (a file that is no PEM, a bad proxy URL)."""


@dataclass(frozen=True, slots=True)
class OutboundOptions:
    """What an operator can set about outbound calls (``BROKER_OUTBOUND_*``)."""

    proxy: str | None = None
    """Proxy for every outbound call; None: the standard environment variables."""
    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    trust_env: bool = True
    """Read HTTP(S)_PROXY / ALL_PROXY / NO_PROXY (tests turn it off to stay hermetic)."""


# --- TLS and proxies ------------------------------------------------------------------


def tls_context(options: OutboundOptions) -> ssl.SSLContext:
    """Certificate and host name verification on; the trust and identity set above."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not context.cert_store_stats().get("x509_ca"):
        # A slim image without the system bundle (and no SSL_CERT_FILE): httpx's own.
        context.load_verify_locations(cafile=certifi.where())
    if options.ca_bundle is not None:
        check_ca_bundle(options.ca_bundle, context)
    if options.client_cert is not None:
        check_client_identity(options.client_cert, options.client_key, context)
    return context


def check_ca_bundle(path: Path, context: ssl.SSLContext | None = None) -> None:
    """Load ``path`` as trusted CAs into ``context`` (a scratch one: just check it)."""
    context = context or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise OutboundConfigError(
            f"not a readable PEM file of CA certificates ({_reason(exc)})"
        ) from None


def check_client_identity(
    cert: Path, key: Path | None, context: ssl.SSLContext | None = None
) -> None:
    """Load the client certificate (and key) into ``context`` (a scratch one: check it)."""
    context = context or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(cert), str(key) if key is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise OutboundConfigError(
            "BROKER_OUTBOUND_CLIENT_CERT and its key (in the same file or in "
            "BROKER_OUTBOUND_CLIENT_KEY) are not readable PEM files that belong together "
            f"({_reason(exc)})"
        ) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or "no PEM data"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


def check_proxy_url(url: str) -> str:
    """``url`` when it is an http(s) proxy URL, else OutboundConfigError (without the URL:
    it may carry credentials)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise OutboundConfigError("not a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise OutboundConfigError("a proxy URL must be http://host:port or https://host:port")
    return url


def proxy_routes(options: OutboundOptions) -> dict[str, str | None]:
    """URL pattern → proxy URL (None: direct), as httpx reads the environment.

    With ``BROKER_OUTBOUND_PROXY`` every scheme goes through it; ``NO_PROXY`` entries
    still go direct (an internal IdP next to the broker is the usual case).
    """
    # httpx's own reading of the variables (private helper, stable since httpx 0.18):
    # the broker routes exactly as a stock httpx.AsyncClient would.
    environment = get_environment_proxies() if options.trust_env else {}
    for pattern, url in environment.items():
        if url is not None:
            try:
                check_proxy_url(url)
            except OutboundConfigError as exc:
                raise OutboundConfigError(
                    f"HTTP_PROXY / HTTPS_PROXY / ALL_PROXY (for {pattern}): {exc}"
                ) from None
    if options.proxy is None:
        return environment
    routes: dict[str, str | None] = {"all://": options.proxy}
    routes.update({pattern: None for pattern, url in environment.items() if url is None})
    return routes


def check_outbound(options: OutboundOptions) -> None:
    """Everything :func:`create_outbound_client` would refuse, checked before serving."""
    tls_context(options)
    proxy_routes(options)


def without_credentials(url: str) -> str:
    """``http://proxy.internal:3128`` for ``http://user:pass@proxy.internal:3128/?x=y``."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{host}{port}"


def describe(routes: Mapping[str, str | None]) -> dict[str, Any]:
    """What the start-up log and ``/readyz`` say about outbound HTTP: no credentials."""
    proxies = {
        pattern: without_credentials(url) for pattern, url in routes.items() if url is not None
    }
    direct = sorted(pattern for pattern, url in routes.items() if url is None)
    return {
        "transport": TRANSPORT_NAME,
        "proxy": proxies or None,
        **({"no_proxy": direct} if direct and proxies else {}),
    }


# --- the transport --------------------------------------------------------------------


HEAD_SCAN_LIMIT: Final = 64 * 1024
"""How much of a response is searched for the end of its head (aiohttp refuses longer
heads anyway); a head not found within it leaves the connection unfit for reuse."""


class _WatchedHandler(ResponseHandler):
    """aiohttp's connection protocol, keeping the count that says whether the connection
    is still in step with its peer: every byte received belongs to an answer.

    Two ways it can fall out of step, both closing the connection instead of pooling it:

    - bytes arrive while it sits idle in the pool (a stray answer sent late): the count
      moved since release (:meth:`_GuardedConnector._get`);
    - bytes arrive past the end of the answer, in the same read (a stray answer sent in
      the same write, or its first part): more bytes than the answer's head and body
      (:meth:`overran`). aiohttp drops a connection with a whole second message
      buffered, but a *partial* one lives on inside its parser, and the rest, arriving
      after the next request went out, would be read as that request's answer.
    """

    received_bytes = 0
    received_at_release = 0
    _answer_from = 0
    _head: bytearray | None = None
    _head_length: int | None = None
    _answer: StreamReader | None = None
    _last_bytes = b""

    def set_response_params(self, **kwargs: Any) -> None:
        # Called once per request, before it is sent: a new answer starts here.
        super().set_response_params(**kwargs)
        self._answer_from = self.received_bytes
        self._head = bytearray()
        self._head_length = None
        self._answer = None

    def data_received(self, data: bytes) -> None:
        self.received_bytes += len(data)
        head = self._head
        if head is not None and self._head_length is None and len(head) < HEAD_SCAN_LIMIT:
            start = max(0, len(head) - 3)
            head += data[: HEAD_SCAN_LIMIT - len(head)]
            end = head.find(b"\r\n\r\n", start)
            if end >= 0:
                self._head_length = end + 4
                self._head = None
        self._last_bytes = (self._last_bytes + data[-4:])[-4:]
        super().data_received(data)

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        # Each parsed answer passes here on its way to the waiting response.
        if self._answer is None:
            self._answer = data[1]
        super().feed_data(data, size)

    def overran(self) -> bool:
        """Whether bytes arrived past the end of the answer to the last request.

        With a ``Content-Length`` the answer ends exactly after its head and body; a
        chunked answer ends with an empty line (``0\\r\\n\\r\\n``), which no partial
        next answer can end with (an answer's head ends at its first empty line, and a
        complete one is already refused by aiohttp). Anything else: out of step.
        """
        if self._head_length is None:
            return True
        body = self._answer.total_bytes if self._answer is not None else 0
        received = self.received_bytes - self._answer_from
        return received != self._head_length + body and self._last_bytes != b"\r\n\r\n"


class _GuardedConnector(aiohttp.TCPConnector):
    """aiohttp's pool, but a connection out of step with its peer is never reused.

    aiohttp checks only that an idle connection is still open; a stray response that
    arrived while it sat in the pool, or the start of one that arrived just behind the
    answer, would be read as the answer to the next request (:class:`_WatchedHandler`).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._factory = functools.partial(_WatchedHandler, loop=self._loop)  # type: ignore[assignment]

    def _release(self, key: Any, protocol: ResponseHandler, *, should_close: bool = False) -> None:
        if isinstance(protocol, _WatchedHandler):
            protocol.received_at_release = protocol.received_bytes
            should_close = should_close or protocol.overran()
        super()._release(key, protocol, should_close=should_close)

    async def _get(self, key: Any, traces: list[Any]) -> aiohttp.connector.Connection | None:
        while True:
            connection = await super()._get(key, traces)
            if connection is None:
                return None
            protocol = connection.protocol
            if (
                isinstance(protocol, _WatchedHandler)
                and protocol.received_bytes != protocol.received_at_release
            ):
                connection.close()  # out of step with its peer: a fresh one instead
                continue
            return connection


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped_errors(None):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # Back to the pool when the body was read to its end, closed otherwise.
        self._response.release()


class _Pool:
    """One aiohttp session and connection pool, shared by a transport and its proxy views."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        # Created on first use: aiohttp binds it to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=_GuardedConnector(**self.settings),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                # Proxies are chosen by the httpx client (its mounts), not by aiohttp.
                trust_env=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """aiohttp's HTTP/1.1 connection pool under httpx's transport interface.

    :meth:`via_proxy` gives a transport that sends through a proxy over the same pool
    (aiohttp keys pooled connections by proxy too, so a tunnelled connection is never
    used for a direct request or through another proxy).
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        max_connections: int = MAX_CONNECTIONS,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
        happy_eyeballs_delay: float | None = HAPPY_EYEBALLS_DELAY_SECONDS,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._pool = _Pool(
            {
                "ssl": ssl_context,
                "limit": max_connections,
                "limit_per_host": 0,
                "keepalive_timeout": keepalive_seconds,
                "happy_eyeballs_delay": happy_eyeballs_delay,
                "resolver": resolver,
            }
        )
        self._proxy: str | None = None
        self._proxy_headers: dict[str, str] | None = None

    def __repr__(self) -> str:
        proxy = without_credentials(self._proxy) if self._proxy else None
        return f"AiohttpTransport(proxy={proxy!r})"

    @property
    def connector_settings(self) -> Mapping[str, Any]:
        """What aiohttp's connector is built with (pool size, keep-alive, Happy Eyeballs)."""
        return MappingProxyType(self._pool.settings)

    def via_proxy(self, proxy_url: str) -> AiohttpTransport:
        """A transport over this pool that sends every request through ``proxy_url``."""
        view = copy.copy(self)
        parsed = httpx.URL(proxy_url)
        view._proxy = str(parsed.copy_with(username=None, password=None))
        view._proxy_headers = (
            {
                "Proxy-Authorization": aiohttp.encode_basic_auth(
                    urllib.parse.unquote(parsed.username), urllib.parse.unquote(parsed.password)
                )
            }
            if parsed.username
            else None
        )
        return view

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        key = (timeouts.get("connect"), timeouts.get("pool"), timeouts.get("read"))
        timeout = self._pool.timeouts.get(key)
        if timeout is None:  # a handful of distinct ones per process: built once each
            connect, pool, read = key
            timeout = self._pool.timeouts[key] = aiohttp.ClientTimeout(
                total=None,
                connect=None if pool is None or connect is None else pool + connect,
                sock_connect=connect,
                sock_read=read,
            )
        # Header bytes as sent (httpx validated them); latin-1 maps every byte.
        headers = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw
        ]
        if self._proxy_headers and request.url.scheme == "http":
            # Plain http is sent to the proxy itself (absolute-form), so its credentials
            # go with it; over https they are sent only in the CONNECT, never to the origin.
            headers += self._proxy_headers.items()
        with _mapped_errors(self._proxy):
            response = await self._pool.session().request(
                request.method,
                str(request.url),
                headers=headers,
                data=request.content or None,
                allow_redirects=False,
                timeout=timeout,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
            )
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self._pool.aclose()  # the client closes every view: the first one wins


@contextlib.contextmanager
def _mapped_errors(proxy: str | None) -> Iterator[None]:
    """aiohttp's exceptions as httpx's, without chaining (a request may carry a key)."""
    try:
        yield
    except aiohttp.ClientHttpProxyError as exc:
        raise httpx.ProxyError(
            f"the proxy {without_credentials(proxy or '')} refused the tunnel (HTTP {exc.status})"
        ) from None
    except aiohttp.ClientProxyConnectionError:
        raise httpx.ProxyError(
            f"the proxy {without_credentials(proxy or '')} could not be reached"
        ) from None
    except aiohttp.ConnectionTimeoutError:
        raise httpx.ConnectTimeout("connecting timed out") from None
    except aiohttp.SocketTimeoutError:
        raise httpx.ReadTimeout("no data within the read timeout") from None
    except TimeoutError:
        raise httpx.ReadTimeout("timed out") from None
    except aiohttp.ClientConnectorCertificateError as exc:
        raise httpx.ConnectError(
            f"the server's TLS certificate was refused ({_reason(exc.certificate_error)})"
        ) from None
    except aiohttp.ClientConnectorSSLError:
        raise httpx.ConnectError("the TLS handshake failed") from None
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(f"could not connect ({exc.strerror or 'refused'})") from None
    except aiohttp.ServerDisconnectedError:
        raise httpx.RemoteProtocolError("the server closed the connection") from None
    except aiohttp.ClientPayloadError:
        raise httpx.ReadError("the response body was broken off") from None
    except aiohttp.ClientResponseError:
        raise httpx.RemoteProtocolError("malformed HTTP response") from None
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError):
        raise httpx.UnsupportedProtocol("not an http:// or https:// URL") from None
    except aiohttp.ClientOSError as exc:
        raise httpx.ReadError(f"the connection broke ({exc.strerror or 'error'})") from None
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(f"outbound call failed ({type(exc).__name__})") from None


# --- the client -----------------------------------------------------------------------


class NoCookies(CookieJar):
    """A jar that never keeps or sends a cookie: vendor token and JWKS calls are
    stateless, and a cookie one vendor answer sets must not ride along on the next call
    (possibly for another tenant)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def add_cookie_header(self, request: Any) -> None:
        return None


class OutboundClient(httpx.AsyncClient):
    """The process's outbound client; ``description`` is what logs and ``/readyz`` show."""

    description: dict[str, Any]


def create_outbound_client(
    options: OutboundOptions,
    *,
    transport: AiohttpTransport | None = None,
    wrap: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] | None = None,
) -> OutboundClient:
    """The process's outbound client: proxies mounted per :func:`proxy_routes`.

    Per-call timeouts come from each caller; these defaults only bound what sets none.
    No redirects (a vendor or JWKS endpoint that redirects is misconfigured), no
    cookies, identity encoding (size caps on bodies then bound memory). Closing the
    client closes the pool. Raises :class:`OutboundConfigError` for unusable settings.

    ``wrap`` is applied to the direct transport and to each proxy's, so that a request
    passes through it exactly once whichever route it takes (tracing's client spans).
    """
    routes = proxy_routes(options)
    pool = transport or AiohttpTransport(ssl_context=tls_context(options))
    views: dict[str, httpx.AsyncBaseTransport] = {}
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {}
    for pattern, url in routes.items():
        if url is None:
            mounts[pattern] = None
            continue
        if url not in views:
            view: httpx.AsyncBaseTransport = pool.via_proxy(url)
            views[url] = wrap(view) if wrap is not None else view
        mounts[pattern] = views[url]
    client = OutboundClient(
        transport=wrap(pool) if wrap is not None else pool,
        mounts=mounts,
        trust_env=False,
        cookies=NoCookies(),
        timeout=DEFAULT_TIMEOUT,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    )
    client.description = describe(routes)
    return client


def outbound_description(client: httpx.AsyncClient) -> dict[str, Any]:
    """What start-up logs and ``/readyz`` say about ``client`` (an injected one included)."""
    if isinstance(client, OutboundClient):
        return client.description
    return {"transport": f"injected {type(client).__name__}", "proxy": None}
