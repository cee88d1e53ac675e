"""The outbound transports S9 compares, each as the ``httpx.AsyncClient`` the broker
(``bench/transport_broker.py``) and the bare forwarder (``bench/forwarder.py``) call
vendors through.

- ``aiohttp``: what the broker ships (``app.outbound.create_outbound_client``);
- ``httpx``: httpx's own transport (httpcore, anyio, h11) with the same pool size
  and keep-alive as the shipped one, so only the transport differs.
"""

from __future__ import annotations

import httpx

from app.outbound import (
    DEFAULT_TIMEOUT,
    KEEPALIVE_SECONDS,
    MAX_CONNECTIONS,
    USER_AGENT,
    NoCookies,
    OutboundOptions,
    create_outbound_client,
)

TRANSPORTS = ("aiohttp", "httpx")


def outbound_client(name: str) -> httpx.AsyncClient:
    if name == "aiohttp":
        return create_outbound_client(OutboundOptions(trust_env=False))
    if name == "httpx":
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(
                limits=httpx.Limits(
                    max_connections=MAX_CONNECTIONS,
                    max_keepalive_connections=MAX_CONNECTIONS,
                    keepalive_expiry=KEEPALIVE_SECONDS,
                )
            ),
            cookies=NoCookies(),
            timeout=DEFAULT_TIMEOUT,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )
    raise ValueError(f"unknown outbound transport {name!r} (known: {', '.join(TRANSPORTS)})")
