"""Liveness and readiness probes. No credentials, no secrets."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from app.runtime import Runtime

router = APIRouter(tags=["probes"])


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "not_ready",
                    "checks": {
                        "config": "ok",
                        "jwks": {"https://id.example.com/": "no keys yet"},
                        "redis": "not configured",
                    },
                }
            ]
        }
    )

    status: Literal["ready", "not_ready"]
    checks: dict[str, Any] = Field(
        description="config, jwks (per issuer: ok or no keys yet), redis (its status)"
    )


@router.get(
    "/healthz",
    operation_id="getHealth",
    summary="Liveness: 200 while the process serves",
    response_model=Health,
    response_description="the process serves",
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="getReadiness",
    summary="Readiness: config loaded, every JWKS issuer has keys",
    response_model=Readiness,
    response_description="ready",
    responses={
        503: {"description": "not ready; the body names what is missing", "model": Readiness}
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
