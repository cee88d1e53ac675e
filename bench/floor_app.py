"""Reference system "framework floor" (performance.md): what a request costs with no work.

A FastAPI app whose ``POST /v1/tokens`` returns a fixed JSON token, written the way
FastAPI's documentation writes a route (return a dict). The body has the broker's
response shape and about its size, so both answers put the same bytes on the wire.
It reads neither the request body nor the Authorization header.

Served by bench/run.py exactly like the broker: ``uvicorn bench.floor_app:create_app
--factory`` with 1 worker, uvloop, httptools, access log off, no server header.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

# A JWT-shaped string as long as the sandbox's Embeddable tokens.
FIXED_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzZWN1cml0eVRva2VuSWQiOiIwMDAwMDAwMC0wMDAwLTQwMDAtODAwMC0wMDAwMDAwMDAwMDAiLCJpYXQi"
    "OjE3OTUzMzU1MTUsImV4cCI6MTc5NTMzNjQxNX0."
    "jXfW3AR1lT1heXCe52lpVeCWpLx_AnmzWTVjqygWRn4"
)
FIXED_RESPONSE: dict[str, Any] = {
    "token": FIXED_TOKEN,
    "provider": "embeddable",
    "embed": "sales-overview",
    "tenant": "acme",
    "expires_at": "2030-01-01T00:15:00Z",
    "expires_in": 900,
    "element": {
        "tag": "em-beddable",
        "attributes": {"base-url": "http://127.0.0.1:8090/embeddable/eu/"},
    },
}


def create_app() -> FastAPI:
    app = FastAPI(title="bench framework floor")

    @app.post("/v1/tokens")
    async def create_token() -> dict[str, Any]:
        return FIXED_RESPONSE

    return app
