"""``POST /v1/tokens``, ``GET /v1/embeds`` and ``POST /internal/v1/tokens`` (api.md)."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import math
import time
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.api.body import read_model
from app.api.problems import NO_STORE_HEADERS
from app.api.routing import TokenRoute
from app.api.schemas import InternalTokenRequest, TokenRequest
from app.auth import extract_session_token
from app.auth.session import SessionUser
from app.config.models import ServiceConfig
from app.errors import AuthenticationError, InvalidRequest, InvalidServiceKey, OriginNotAllowed
from app.issuance import Grant, rate_limit_headers
from app.observability.audit import session_rejected
from app.observability.tracing import attribute
from app.policy import ServiceUser
from app.runtime import ActivePolicy, Runtime


class JsonResponse(Response):
    """A JSON answer whose fixed headers are encoded once, not per response.

    Starlette's Response encodes every header of every response; the token routes
    answer the same content type and cache headers every time (S1 measures it).
    """

    media_type = "application/json"
    FIXED_HEADERS: tuple[tuple[bytes, bytes], ...] = (
        (b"content-type", b"application/json"),
        *((name.lower().encode(), value.encode()) for name, value in NO_STORE_HEADERS.items()),
    )

    def __init__(self, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
        self.status_code = 200
        self.background = None
        self.body = orjson.dumps(body)
        raw = [(b"content-length", str(len(self.body)).encode()), *self.FIXED_HEADERS]
        if headers:
            raw += [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in headers.items()
            ]
        self.raw_headers = raw


@functools.lru_cache(maxsize=8192)
def _rfc3339(whole_seconds: int) -> str:
    return dt.datetime.fromtimestamp(whole_seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _token_response(grant: Grant) -> Response:
    expires_in = max(0, math.floor(grant.expires_at - time.time()))
    body = {
        "token": grant.token,
        "provider": grant.rule.provider_type,
        "embed": grant.rule.name,
        "tenant": grant.tenant,
        "expires_at": _rfc3339(int(grant.expires_at)),
        "expires_in": expires_in,
        "element": grant.element.describe(grant.token),
    }
    return JsonResponse(body, rate_limit_headers(grant.rate))


async def _session_user(request: Request, runtime: Runtime, active: ActivePolicy) -> SessionUser:
    session = active.config.session
    with runtime.tracing.spans.span("session.verify") as span:
        try:
            token = extract_session_token(
                request.headers,
                cookie_name=session.cookie,
                allow_origins=active.config.cors.allow_origins,
            )
            user = await active.verifier.verify(token)
        except (AuthenticationError, OriginNotAllowed) as exc:
            session_rejected(runtime.metrics, exc, caller="session")
            raise
        # The issuer names an IdP from the policy file; the user id stays out of traces.
        span.set_attribute(attribute("issuer"), user.issuer)
        span.set_attribute(attribute("outcome"), "ok")
        return user


async def create_token(request: Request) -> Response:
    runtime: Runtime = request.state.runtime
    active = runtime.active
    user = await _session_user(request, runtime, active)
    wanted = await read_model(request, TokenRequest)
    grant = await runtime.flow.issue(active, user, embed=wanted.embed, tenant=wanted.tenant)
    return _token_response(grant)


async def list_embeds(request: Request) -> Response:
    runtime: Runtime = request.state.runtime
    active = runtime.active
    user = await _session_user(request, runtime, active)
    tenants = request.query_params.getlist("tenant")
    if len(tenants) > 1 or (tenants and not 1 <= len(tenants[0]) <= 128):
        raise InvalidRequest("tenant must be given once, 1 to 128 characters")
    tenant = tenants[0] if tenants else None
    chosen = active.policy.resolve_tenant(user, tenant)
    embeds = [
        {"name": rule.name, "title": rule.title, "provider": rule.provider_type}
        for rule in active.policy.embeds_for(user, chosen)
    ]
    return JsonResponse({"tenant": chosen, "embeds": embeds})


def _service_for(request: Request, active: ActivePolicy) -> tuple[str, ServiceConfig]:
    values = request.headers.getlist("authorization")
    if len(values) != 1:
        raise InvalidServiceKey()
    scheme, _, key = values[0].partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise InvalidServiceKey()
    presented = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest().encode()
    found: tuple[str, ServiceConfig] | None = None
    # Compare against every configured hash, without stopping early.
    for name, service in active.config.services.items():
        if hmac.compare_digest(presented, service.key_sha256.encode()):
            found = (name, service)
    if found is None:
        raise InvalidServiceKey()
    return found


async def create_token_for_service(request: Request) -> Response:
    runtime: Runtime = request.state.runtime
    active = runtime.active
    with runtime.tracing.spans.span("service.authenticate") as span:
        try:
            name, service = _service_for(request, active)
        except InvalidServiceKey as exc:
            session_rejected(runtime.metrics, exc, caller="service")
            raise
        span.set_attribute(attribute("service"), name)
        span.set_attribute(attribute("outcome"), "ok")
    wanted = await read_model(request, InternalTokenRequest)
    user = ServiceUser(
        id=wanted.user.id,
        tenants=(wanted.user.tenant,),
        roles=tuple(wanted.user.roles),
        email=wanted.user.email,
        claims=wanted.user.claims,
        issuer=f"service:{name}",
    )
    grant = await runtime.flow.issue(
        active,
        user,
        embed=wanted.embed,
        tenant=wanted.user.tenant,
        caller=f"service:{name}",
        service=service,
    )
    return _token_response(grant)


# The only way these handlers are reached (app.api.routing); documented in app.api.openapi.
ROUTES = (
    TokenRoute("POST", "/v1/tokens", create_token, "createToken", "session"),
    TokenRoute("GET", "/v1/embeds", list_embeds, "listEmbeds", "session"),
    TokenRoute(
        "POST", "/internal/v1/tokens", create_token_for_service, "createServiceToken", "service"
    ),
)
