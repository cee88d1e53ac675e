"""``create_app()`` and the lifespan that owns the process's shared resources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import httpx
from fastapi import FastAPI

from app.api import client, metrics, probes, tokens
from app.api.cors import DynamicCORSMiddleware
from app.api.docs import install_docs
from app.api.middleware import RequestContextMiddleware
from app.api.problems import install_exception_handlers
from app.api.routing import TokenRouter
from app.collector import ServingCollector
from app.config.loader import load_policy_file
from app.observability.metrics import Metrics
from app.observability.tracing import Tracing
from app.outbound import create_outbound_client, outbound_description
from app.reload import PolicyReloader
from app.runtime import Runtime
from app.settings import Settings
from app.version import package_version

log = logging.getLogger("token_broker.main")


class State(TypedDict):
    runtime: Runtime
    metrics: Metrics


def create_app(
    settings: Settings | None = None,
    *,
    http_client: httpx.AsyncClient | None = None,
    tracing: Tracing | None = None,
) -> FastAPI:
    """Build the ASGI app. Settings come from the environment unless given.

    ``http_client`` replaces the outbound client the lifespan would build from the
    ``BROKER_OUTBOUND_*`` settings (tests, benchmarks); its owner closes it, and traces
    its calls if it wants them (wrap its transports with :meth:`Tracing.transport`).
    ``tracing`` replaces what ``BROKER_OTEL_ENABLED`` and the ``OTEL_*`` variables
    would give (tests hand in a provider with an in-memory exporter).
    """
    settings = settings if settings is not None else Settings()
    if tracing is None:
        tracing = Tracing.from_environment() if settings.otel_enabled else Tracing.off()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        config = await asyncio.to_thread(load_policy_file, settings.config)
        metrics = Metrics.create(
            redis=settings.redis_url is not None, embed_labels=settings.metrics_embed_labels
        )
        async with contextlib.AsyncExitStack() as owned:
            http = http_client
            if http is None:
                http = create_outbound_client(settings.outbound_options(), wrap=tracing.transport)
                owned.push_async_callback(http.aclose)
            runtime = await Runtime.start(settings, config, http, metrics, tracing)
            reloader = PolicyReloader(runtime, settings.config, settings.reload_interval_seconds)
            try:
                await reloader.start()
                # Last: what start-up built is frozen out of later collections.
                async with ServingCollector(settings.gc_full_interval_seconds):
                    log.info(
                        "broker.started",
                        extra={
                            "config": str(settings.config),
                            "outbound": outbound_description(http),
                        },
                    )
                    yield {"runtime": runtime, "metrics": metrics}
            finally:
                await reloader.aclose()
                await runtime.aclose()
                # Exports what is still batched; blocking, so off the event loop.
                await asyncio.to_thread(tracing.shutdown)
        log.info("broker.stopped")

    app = FastAPI(
        title="token-broker",
        version=package_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by app.api.docs, per policy
        # The request span (tracing on), or nothing at all (off): app.observability.tracing.
        telemetry=tracing.fastapi_telemetry(),
    )
    install_exception_handlers(app)
    app.include_router(probes.router)
    app.include_router(metrics.router)
    app.include_router(client.router)
    client.client_script()  # read now, not on the event loop; a missing file fails start-up
    install_docs(app, package_version(), tokens.ROUTES, docs_enabled=settings.docs_enabled)
    # Added first = innermost; added last = outermost. The token routes are served by
    # TokenRouter only (app.api.routing), inside the request-id and CORS middleware:
    # every response, CORS ones included, gets a request id.
    app.add_middleware(TokenRouter, routes=tokens.ROUTES, on_route=tracing.route_hook())
    app.add_middleware(DynamicCORSMiddleware)
    app.add_middleware(RequestContextMiddleware)
    return app
