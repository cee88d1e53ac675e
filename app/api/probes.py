"""Liveness and readiness probes. No credentials, no secrets."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from app.runtime import Runtime

router = APIRouter(tags=["probes"])


@router.get("/healthz", summary="Liveness: 200 while the process serves")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: config loaded, every JWKS issuer has keys",
    responses={
        200: {"description": "ready", "content": {"application/json": {}}},
        503: {"description": "not ready; the body names what is missing"},
    },
)
async def readyz(request: Request) -> Response:
    runtime: Runtime = request.state.runtime
    ready, checks = runtime.readiness()
    body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "checks": checks}
    return Response(
        orjson.dumps(body),
        status_code=200 if ready else 503,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
