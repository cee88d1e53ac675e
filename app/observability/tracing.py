"""OpenTelemetry tracing: off by default, and then free on the hot path.

With ``BROKER_OTEL_ENABLED=true`` a request to the broker becomes one trace:

    POST /v1/tokens                 SERVER  (FastAPI's own telemetry, W3C context
    ├── session.verify                       continued from the caller)
    └── token.issue                 provider, region, tenant, embed, cache, outcome
        ├── policy.decide
        ├── cache.lookup            cache hit or not
        └── vendor.call             provider, region, outcome (a cache miss only)
            └── POST                CLIENT, one per HTTP attempt; sends traceparent

Why it is built this way:

- **Off costs nothing measurable.** Whether tracing is on is decided once, when the
  app is built (:class:`Tracing`): off, FastAPI's telemetry is switched off, no
  transport wrapper is installed, and the flow's spans come from :data:`NO_SPANS`,
  whose ``span()`` hands back one shared object whose enter, exit and
  ``set_attribute`` do nothing. No per-request check of a flag, no context lookup.
- **Standard parts.** The request span is FastAPI's native telemetry (pure ASGI,
  semantic-convention attributes, ``traceparent`` extracted with the configured
  propagators), given the broker's own tracer provider rather than a global one, so
  nothing else in the process starts tracing by accident. The SDK reads the standard
  ``OTEL_*`` variables itself (sampler, resource, batch processor, exporter endpoint,
  headers, TLS); this module only picks the exporter the way the specification says
  (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL``).
- **Nothing secret in a span.** Spans carry names the policy file gives (provider,
  region, tenant, embed), outcome codes and HTTP statuses; never a header, a body, a
  query string of a vendor URL, an exception message, a user id or a token. Outbound,
  only the W3C trace context (``traceparent``, ``tracestate``) is sent to a vendor:
  a caller's ``baggage`` is its own business, not the vendor's.
- **Every outbound call once.** The client span comes from a transport wrapper under
  the one shared HTTP client, so vendor calls and JWKS fetches alike get exactly one
  span per attempt, whichever code path made them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Protocol

import httpx
from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.errors import BrokerError
from app.version import package_version

try:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
except ImportError:  # pragma: no cover - the otel extra is absent; app.settings refuses
    pass  # BROKER_OTEL_ENABLED then, so nothing below that needs the SDK is reached.

SERVICE_NAME = "token-broker"
INSTRUMENTATION_NAME = "token_broker"
ATTRIBUTE_PREFIX = "token_broker."
EXPORTER_GROUP = "opentelemetry_traces_exporter"
OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
DEFAULT_OTLP_PROTOCOL = "http/protobuf"  # the OpenTelemetry specification's default

AttributeValue = str | bool | int | float


class SpanLike(Protocol):
    """What the flow does with a span: name what it decided."""

    def set_attribute(self, key: str, value: AttributeValue) -> None: ...


class Spans(Protocol):
    """Where the broker's own spans come from (:data:`NO_SPANS` when tracing is off)."""

    def span(self, name: str) -> contextlib.AbstractContextManager[SpanLike]: ...

    def record(self, span: SpanLike, values: Mapping[str, object], names: Iterable[str]) -> None:
        """Copy ``values[name]`` for each of ``names`` (when a str, int or bool) onto
        ``span`` as ``token_broker.<name>``: many attributes in one call."""


class _NoSpan:
    """The one span of the off state: enter, exit and attributes do nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None


_NO_SPAN = _NoSpan()


class _NoSpans:
    __slots__ = ()

    def span(self, name: str) -> _NoSpan:
        return _NO_SPAN

    def record(self, span: SpanLike, values: Mapping[str, object], names: Iterable[str]) -> None:
        return None


NO_SPANS: Spans = _NoSpans()
"""Tracing off: every span is the same inert object."""


def attribute(name: str) -> str:
    """The broker's attribute names: ``token_broker.provider`` and so on."""
    return ATTRIBUTE_PREFIX + name


def mark_failure(span: trace.Span, exc: BaseException) -> None:
    """Name what went wrong by its stable code or type, never by its message.

    A client error (a rejected session, a forbidden embed) is an outcome, not a broker
    failure: only 5xx answers and unexpected exceptions set the span's status to ERROR.
    """
    if isinstance(exc, BrokerError):
        span.set_attribute(attribute("outcome"), exc.code)
        span.set_attribute("error.type", exc.code)
        if exc.status >= 500:
            span.set_status(StatusCode.ERROR)
        return
    span.set_attribute("error.type", type(exc).__qualname__)
    span.set_status(StatusCode.ERROR)


class TracerSpans:
    """Spans from a real tracer, children of whatever span is current."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[SpanLike]:
        parent = trace.get_current_span()
        if parent.get_span_context().is_valid and not parent.is_recording():
            # The request was not sampled, and every built-in sampler decides the same
            # for its children (parent-based, or by the same trace id): making them
            # would cost ~10 us each and record nothing. The trace id still reaches the
            # vendor, from the request span's context.
            yield _NO_SPAN
            return
        with self._tracer.start_as_current_span(
            name, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield span
            except BaseException as exc:
                mark_failure(span, exc)
                raise

    def record(self, span: SpanLike, values: Mapping[str, object], names: Iterable[str]) -> None:
        for name in names:
            value = values.get(name)
            if isinstance(value, str | int | float):  # bool is an int
                span.set_attribute(ATTRIBUTE_PREFIX + name, value)


def name_request_span(method: str, route: str) -> None:
    """``POST /v1/tokens`` rather than ``POST``, with ``http.route``, as FastAPI names
    the spans of its own routes (semantic conventions for HTTP server spans)."""
    span = trace.get_current_span()
    span.set_attribute("http.route", route)
    span.update_name(f"{method} {route}")


# --- outbound -------------------------------------------------------------------------

_W3C = TraceContextTextMapPropagator()


class TracedTransport(httpx.AsyncBaseTransport):
    """One CLIENT span per outbound request, with the W3C trace context sent along.

    Wraps the shared client's transport (so every outbound call passes here exactly
    once, retries each as their own attempt). The span ends when the answer's headers
    arrive: what follows is the caller reading a small, bounded body.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, tracer: trace.Tracer) -> None:
        self.inner = inner
        self._tracer = tracer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        attributes: dict[str, AttributeValue] = {
            "http.request.method": request.method,
            "server.address": url.host,
            # No query string and no user info: a JWKS URL may carry a credential there.
            "url.full": f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}",
        }
        if url.port is not None:
            attributes["server.port"] = url.port
        with self._tracer.start_as_current_span(
            request.method,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            _W3C.inject(request.headers)
            try:
                response = await self.inner.handle_async_request(request)
            except BaseException as exc:
                mark_failure(span, exc)
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 400:
                span.set_attribute("error.type", str(response.status_code))
                span.set_status(StatusCode.ERROR)
            return response

    async def aclose(self) -> None:
        await self.inner.aclose()


# --- the switch -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tracing:
    """Tracing as the app was built with it: on with a tracer provider, or off."""

    provider: trace.TracerProvider | None = None
    spans: Spans = field(default=NO_SPANS)
    owned: bool = False
    """The broker built the provider (from the environment), so it shuts it down."""

    @classmethod
    def off(cls) -> Tracing:
        return cls()

    @classmethod
    def with_provider(cls, provider: trace.TracerProvider, *, owned: bool = False) -> Tracing:
        tracer = provider.get_tracer(INSTRUMENTATION_NAME, package_version())
        return cls(provider=provider, spans=TracerSpans(tracer), owned=owned)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Tracing:
        """A provider configured the standard way: exporter from ``OTEL_TRACES_EXPORTER``
        (default OTLP) and the ``OTEL_EXPORTER_OTLP_*`` variables, sampler from
        ``OTEL_TRACES_SAMPLER``, resource from ``OTEL_SERVICE_NAME`` and
        ``OTEL_RESOURCE_ATTRIBUTES`` (service name ``token-broker`` unless set)."""
        environ = os.environ if environ is None else environ
        provider = TracerProvider(resource=_resource())
        for exporter in exporter_classes(environ):
            processor: SpanProcessor = BatchSpanProcessor(exporter())
            provider.add_span_processor(processor)
        return cls.with_provider(provider, owned=True)

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def fastapi_telemetry(self) -> TelemetryConfig:
        """FastAPI's native telemetry: the request span with our provider, or nothing.

        Its metrics and logs stay off (the broker has Prometheus metrics and its own
        log pipeline), and so does its environment auto-configuration: only
        ``BROKER_OTEL_ENABLED`` turns tracing on, even if a global provider exists.
        """
        if self.provider is None:
            return {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}
        return {
            "tracer_provider": self.provider,
            "tracing": True,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
        }

    def route_hook(self) -> Callable[[str, str], None] | None:
        """For routers FastAPI does not see: names the request span after the route."""
        return name_request_span if self.provider is not None else None

    def transport(self, inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        """``inner`` itself when off; wrapped in a :class:`TracedTransport` when on."""
        if self.provider is None:
            return inner
        return TracedTransport(inner, self.provider.get_tracer(INSTRUMENTATION_NAME))

    def shutdown(self) -> None:
        """Flush and stop what the broker built (blocking: call it off the event loop)."""
        if self.owned and isinstance(self.provider, TracerProvider):
            self.provider.shutdown()


def _resource() -> Resource:
    detected = Resource.create({"service.version": package_version()})
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        detected = detected.merge(Resource({"service.name": SERVICE_NAME}))
    return detected


class TracingConfigError(ValueError):
    """An ``OTEL_*`` variable names an exporter or protocol that is not there."""


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The exporter entry points ``OTEL_TRACES_EXPORTER`` asks for (``none``: none)."""
    names = [name.strip() for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    resolved: list[str] = []
    for name in names:
        if name in ("", "none"):
            continue
        if name == "otlp":
            protocol = (
                environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or DEFAULT_OTLP_PROTOCOL
            ).strip()
            if protocol not in OTLP_BY_PROTOCOL:
                variable = (
                    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
                    if environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    else "OTEL_EXPORTER_OTLP_PROTOCOL"
                )
                raise TracingConfigError(
                    f"{variable}: must be one of {', '.join(sorted(OTLP_BY_PROTOCOL))}"
                )
            name = OTLP_BY_PROTOCOL[protocol]
        resolved.append(name)
    return resolved


def exporter_classes(environ: Mapping[str, str]) -> list[type[SpanExporter]]:
    """The span exporter classes to instantiate (each reads its own ``OTEL_*`` settings)."""
    classes: list[type[SpanExporter]] = []
    for name in exporter_names(environ):
        found = entry_points(group=EXPORTER_GROUP, name=name)
        if not found:
            installed = sorted({point.name for point in entry_points(group=EXPORTER_GROUP)})
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER: no span exporter {name!r} is installed "
                f"(installed: {', '.join(installed) or 'none'}; or 'none')"
            )
        loaded = next(iter(found)).load()
        if not (isinstance(loaded, type) and issubclass(loaded, SpanExporter)):
            raise TracingConfigError(f"OTEL_TRACES_EXPORTER: {name!r} is not a span exporter")
        classes.append(loaded)
    return classes
