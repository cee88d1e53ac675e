"""Context for S3 (not a target): a bare forwarder.

A plain ASGI app that, for each ``POST``, reads the body and makes one fixed vendor
token request over the broker's own outbound transport (``app.transport``), then
answers with the token. No JWT, no policy, no cache, no logging, no metrics. Its
latency over the 50 ms vendor is what uvicorn, the transport, the sandbox and wrk
cost on the machine before the broker does any work of its own: the floor under S3's
latency target.

Configuration from the environment (bench/run.py sets it): ``FORWARD_VENDOR_URL`` (an
Embeddable token URL of the sandbox) and ``FORWARD_API_KEY``. ``GET`` answers ``{}``
(the harness waits for ``GET /openapi.json``).
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import orjson

from app.sandbox.asgi import respond
from app.transport import LeanTransport

BODY = {
    "embeddableId": "c2b1a0de-0000-4000-8000-000000000001",
    "savedVersion": "production",
    "expiryInSeconds": 900,
    "user": "forwarded",
    "environment": "acme-prod",
}
TIMEOUTS = {"connect": 2.0, "read": 5.0, "write": 5.0, "pool": 5.0}


class Forwarder:
    def __init__(self, vendor_url: str, api_key: str) -> None:
        self.url = httpx.URL(vendor_url)
        self.headers = httpx.Headers(
            {
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            }
        )
        self.transport: LeanTransport | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.transport = LeanTransport()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if self.transport is not None:
                        await self.transport.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["method"] != "POST":
            await respond(send, 200, b"{}")
            return
        assert self.transport is not None
        request = httpx.Request(
            "POST",
            self.url,
            headers=self.headers,
            content=orjson.dumps(BODY),
            extensions={"timeout": TIMEOUTS},
        )
        response = await self.transport.handle_async_request(request)
        try:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        if response.status_code != 200:
            await respond(send, 502, b'{"code":"upstream_error"}')
            return
        await respond(send, 200, orjson.dumps({"token": orjson.loads(raw)["token"]}))


def create_app() -> Forwarder:
    return Forwarder(os.environ["FORWARD_VENDOR_URL"], os.environ["FORWARD_API_KEY"])
