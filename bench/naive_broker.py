"""Reference system "naive broker" (performance.md): the vendor-sample style.

What teams write by hand today, translated from the vendors' sample backends: verify
the session JWT with a PEM string on every request (python-jose), build the vendor
body, call the vendor with a new ``httpx.AsyncClient`` per request, no cache, no
single-flight, no pooling. It is deliberately not "improved": it is the baseline the
broker must beat by 2x on cache misses (S3).

Configuration comes from the environment (bench/run.py sets it):
``NAIVE_PUBLIC_KEY_FILE`` (PEM of the session issuer), ``NAIVE_ISSUER``,
``NAIVE_AUDIENCE``, ``NAIVE_VENDOR_URL`` (an Embeddable base URL, e.g. the sandbox's
``http://127.0.0.1:PORT/embeddable/eu``), ``NAIVE_API_KEY``, ``NAIVE_EMBEDDABLE_ID``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Header, HTTPException
from jose import JWTError, jwt
from pydantic import BaseModel

TOKEN_TTL_SECONDS = 900
# The samples keep per-tenant settings in code.
TENANTS: dict[str, dict[str, Any]] = {
    "acme": {"environment": "acme-prod", "regions": ["eu-west"]},
}


class TokenRequest(BaseModel):
    embed: str
    tenant: str | None = None


def create_app() -> FastAPI:
    public_key_pem = Path(os.environ["NAIVE_PUBLIC_KEY_FILE"]).read_text()
    issuer = os.environ["NAIVE_ISSUER"]
    audience = os.environ["NAIVE_AUDIENCE"]
    vendor_url = os.environ["NAIVE_VENDOR_URL"].rstrip("/") + "/api/v1/security-token"
    api_key = os.environ["NAIVE_API_KEY"]
    embeddable_id = os.environ["NAIVE_EMBEDDABLE_ID"]

    app = FastAPI(title="bench naive broker")

    @app.post("/v1/tokens")
    async def create_token(
        body: TokenRequest, authorization: str = Header(default="")
    ) -> dict[str, Any]:
        scheme, _, session_token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not session_token:
            raise HTTPException(status_code=401, detail="missing session")
        try:
            claims = jwt.decode(
                session_token,
                public_key_pem,
                algorithms=["RS256"],
                audience=audience,
                issuer=issuer,
            )
        except JWTError:
            raise HTTPException(status_code=401, detail="invalid session") from None
        tenant = claims["org_id"]
        settings = TENANTS[tenant]
        vendor_body = {
            "embeddableId": embeddable_id,
            "savedVersion": "production",
            "expiryInSeconds": TOKEN_TTL_SECONDS,
            "user": claims["sub"],
            "environment": settings["environment"],
            "securityContext": {
                "userId": claims["sub"],
                "tenantId": tenant,
                "regions": settings["regions"],
            },
        }
        async with httpx.AsyncClient() as client:
            response = await client.post(
                vendor_url,
                json=vendor_body,
                headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            )
        if response.status_code != 200:
            raise HTTPException(status_code=502, detail="vendor error")
        return {
            "token": response.json()["token"],
            "provider": "embeddable",
            "embed": body.embed,
            "tenant": tenant,
            "expires_in": TOKEN_TTL_SECONDS,
        }

    return app
