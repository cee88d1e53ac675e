"""Context for S3 and S9: a bare forwarder.

A plain ASGI app that, for each ``POST``, reads the body and makes one fixed vendor
token request with the broker's own vendor-call function (``app.providers.http.
post_json``) over the outbound client of ``FORWARD_TRANSPORT`` (``bench/transports.py``;
default ``aiohttp``, the shipped one), then answers with the token. No JWT, no policy,
no cache, no logging, no metrics. Its latency over the 50 ms vendor is what uvicorn,
the client, the transport, the sandbox and wrk cost on the machine before the broker
does any work of its own: the floor S3's ratios are taken against.

Configuration from the environment (bench/run.py sets it): ``FORWARD_VENDOR_URL`` (an
Embeddable token URL of the sandbox), ``FORWARD_API_KEY`` and ``FORWARD_TRANSPORT``.
``GET`` answers ``{}`` (the harness waits for ``GET /openapi.json``).
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from app.providers.http import CallContext, VendorEndpoint, post_json
from app.sandbox.asgi import respond
from bench.transports import outbound_client

BODY = {
    "embeddableId": "c2b1a0de-0000-4000-8000-000000000001",
    "savedVersion": "production",
    "expiryInSeconds": 900,
    "user": "forwarded",
    "environment": "acme-prod",
}


class Forwarder:
    def __init__(self, vendor_url: str, api_key: str, transport: str) -> None:
        key = SecretStr(api_key)
        self.endpoint = VendorEndpoint.prepare(
            vendor_url,
            api_key=key,
            timeout_seconds=5.0,
            context=CallContext("embeddable", "eu", (key,)),
        )
        self.transport = transport
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.client = outbound_client(self.transport)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if self.client is not None:
                        await self.client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["method"] != "POST":
            await respond(send, 200, b"{}")
            return
        assert self.client is not None
        response = await post_json(self.client, self.endpoint, BODY)
        if response.status != 200:
            await respond(send, 502, b'{"code":"upstream_error"}')
            return
        await respond(send, 200, orjson.dumps({"token": orjson.loads(response.body)["token"]}))


def create_app() -> Forwarder:
    return Forwarder(
        os.environ["FORWARD_VENDOR_URL"],
        os.environ["FORWARD_API_KEY"],
        os.environ.get("FORWARD_TRANSPORT", "aiohttp"),
    )
