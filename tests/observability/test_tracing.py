"""Tracing over real HTTP (operations.md "Observability", tracing).

The broker runs under uvicorn on loopback with the sandbox as its vendor; its tracer
provider exports to the SDK's in-memory exporter. A request that carries a W3C
``traceparent`` must come out as one trace continued from it, with the span tree of
app.observability.tracing, the attributes the spec names, no secret anywhere in a span,
and the same trace id in the ``traceparent`` the sandbox received.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, StatusCode

from app.observability.tracing import NO_SPANS, TracedTransport, TracerSpans, Tracing
from tests.support.eventually import eventually
from tests.support.policies import (
    BASE_ENV,
    HS_SECRET,
    SERVICE_KEY,
    SERVICE_KEY_SHA256,
    base_policy,
)
from tests.support.stack import Stack, bearer, running_stack, session_token

EMBED = "sales-overview"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, exporter: InMemorySpanExporter
) -> Iterator[Stack]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with running_stack(
        tmp_path_factory.mktemp("tracing"), base_policy(), tracing=Tracing.with_provider(provider)
    ) as running:
        yield running
    provider.shutdown()


def traceparent() -> tuple[str, str, str]:
    """A caller's sampled W3C trace context: (header, trace id, parent span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def trace_spans(
    exporter: InMemorySpanExporter, trace_id: str, *, until: str
) -> dict[str, list[ReadableSpan]]:
    """The finished spans of one trace by name, once a span named ``until`` is there
    (the request span ends just after the response is sent)."""

    def collect() -> dict[str, list[ReadableSpan]] | None:
        found: dict[str, list[ReadableSpan]] = {}
        for span in exporter.get_finished_spans():
            assert span.context is not None
            if f"{span.context.trace_id:032x}" == trace_id:
                found.setdefault(span.name, []).append(span)
        return found if until in found else None

    result = eventually(collect, what=f"span {until!r} of trace {trace_id}")
    assert result is not None
    return result


def one(spans: dict[str, list[ReadableSpan]], name: str) -> ReadableSpan:
    assert len(spans.get(name, [])) == 1, (name, sorted(spans))
    return spans[name][0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def all_attribute_text(spans: Sequence[ReadableSpan]) -> str:
    """Every name, attribute key and value, event and status text of ``spans``."""
    parts: list[str] = []
    for span in spans:
        parts.append(span.name)
        parts.extend(f"{key}={value!r}" for key, value in (span.attributes or {}).items())
        for event in span.events:
            parts.append(event.name)
            parts.extend(f"{key}={value!r}" for key, value in (event.attributes or {}).items())
        parts.append(str(span.status.description or ""))
    return "\n".join(parts)


def test_a_cache_miss_is_one_trace_from_the_caller_to_the_vendor(
    stack: Stack, exporter: InMemorySpanExporter
) -> None:
    header, trace_id, caller_span = traceparent()
    session = session_token(user="trace-miss")
    stack.clear_vendor_requests()
    response = stack.client.post(
        f"{stack.broker}/v1/tokens",
        json={"embed": EMBED},
        headers={**bearer(session), "traceparent": header},
    )
    assert response.status_code == 200, response.text
    spans = trace_spans(exporter, trace_id, until="POST /v1/tokens")

    request = one(spans, "POST /v1/tokens")
    assert request.kind is SpanKind.SERVER
    assert parent_of(request) == int(caller_span, 16)  # continued, not a new trace
    assert request.attributes is not None
    assert request.attributes["http.route"] == "/v1/tokens"
    assert request.attributes["http.response.status_code"] == 200

    verify, issue = one(spans, "session.verify"), one(spans, "token.issue")
    assert parent_of(verify) == span_id(request)
    assert parent_of(issue) == span_id(request)
    decide, lookup, vendor = (
        one(spans, n) for n in ("policy.decide", "cache.lookup", "vendor.call")
    )
    assert {parent_of(decide), parent_of(lookup), parent_of(vendor)} == {span_id(issue)}
    outbound = one(spans, "POST")
    assert outbound.kind is SpanKind.CLIENT
    assert parent_of(outbound) == span_id(vendor)

    assert issue.attributes == {
        "token_broker.tenant": "acme",
        "token_broker.embed": EMBED,
        "token_broker.provider": "embeddable",
        "token_broker.region": "eu",
        "token_broker.cache": "miss",
        "token_broker.outcome": "ok",
    }
    assert lookup.attributes == {"token_broker.cache": "miss"}
    assert vendor.attributes is not None
    assert vendor.attributes["token_broker.provider"] == "embeddable"
    assert vendor.attributes["token_broker.region"] == "eu"
    assert vendor.attributes["token_broker.outcome"] == "ok"
    assert outbound.attributes is not None
    assert outbound.attributes["http.response.status_code"] == 200
    assert str(outbound.attributes["url.full"]).endswith("/embeddable/eu/api/v1/security-token")

    # The vendor got the trace context, as the child of the broker's client span.
    (received,) = stack.vendor_requests("embeddable")
    version, sent_trace, sent_parent, flags = received["traceparent"].split("-")
    assert (version, sent_trace, flags) == ("00", trace_id, "01")
    assert int(sent_parent, 16) == span_id(outbound)
    # Only the W3C trace context crosses to a vendor, never the caller's baggage.
    assert "baggage" not in received["headers"]

    # Nothing secret in any span: session JWT, issued token, API keys, HS secret.
    text = all_attribute_text([span for found in spans.values() for span in found])
    token = response.json()["token"]
    for secret in (session, token, HS_SECRET, *BASE_ENV.values()):
        assert secret not in text
    assert "Bearer" not in text and "authorization" not in text.lower()
    assert "trace-miss" not in text  # the user id stays out of traces too


def test_a_cache_hit_has_no_vendor_span(stack: Stack, exporter: InMemorySpanExporter) -> None:
    session = session_token(user="trace-hit")
    assert stack.token(EMBED, session).status_code == 200  # fills the cache
    header, trace_id, _ = traceparent()
    response = stack.client.post(
        f"{stack.broker}/v1/tokens",
        json={"embed": EMBED},
        headers={**bearer(session), "traceparent": header},
    )
    assert response.status_code == 200
    spans = trace_spans(exporter, trace_id, until="POST /v1/tokens")
    assert sorted(spans) == [
        "POST /v1/tokens",
        "cache.lookup",
        "policy.decide",
        "session.verify",
        "token.issue",
    ]
    assert one(spans, "cache.lookup").attributes == {"token_broker.cache": "hit"}
    issue = one(spans, "token.issue")
    assert issue.attributes is not None
    assert issue.attributes["token_broker.cache"] == "hit"
    assert response.json()["token"] not in all_attribute_text(
        [span for found in spans.values() for span in found]
    )


def test_a_rejected_session_is_an_outcome_not_a_broker_error(
    stack: Stack, exporter: InMemorySpanExporter
) -> None:
    header, trace_id, _ = traceparent()
    forged = session_token(user="trace-forged")[:-4] + "AAAA"
    response = stack.client.post(
        f"{stack.broker}/v1/tokens",
        json={"embed": EMBED},
        headers={**bearer(forged), "traceparent": header},
    )
    assert response.status_code == 401
    spans = trace_spans(exporter, trace_id, until="POST /v1/tokens")
    verify = one(spans, "session.verify")
    code = response.json()["code"]
    assert verify.attributes == {"token_broker.outcome": code, "error.type": code}
    assert verify.status.status_code is StatusCode.UNSET  # a 4xx is the caller's problem
    assert "token.issue" not in spans
    request = one(spans, "POST /v1/tokens")
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 401
    assert forged not in all_attribute_text([span for found in spans.values() for span in found])


def test_a_vendor_failure_marks_the_vendor_spans(
    stack: Stack, exporter: InMemorySpanExporter
) -> None:
    stack.set_fault({"vendor": "embeddable", "status": 500})
    try:
        header, trace_id, _ = traceparent()
        response = stack.client.post(
            f"{stack.broker}/v1/tokens",
            json={"embed": EMBED},
            headers={**bearer(session_token(user="trace-vendor-down")), "traceparent": header},
        )
    finally:
        stack.clear_faults()
    assert response.status_code >= 500
    code = response.json()["code"]
    spans = trace_spans(exporter, trace_id, until="POST /v1/tokens")
    vendor = one(spans, "vendor.call")
    assert vendor.attributes is not None
    assert vendor.attributes["token_broker.outcome"] == code
    assert vendor.status.status_code is StatusCode.ERROR
    attempts = spans["POST"]
    assert attempts and all(parent_of(a) == span_id(vendor) for a in attempts)
    assert all(a.status.status_code is StatusCode.ERROR for a in attempts)
    assert all((a.attributes or {}).get("http.response.status_code") == 500 for a in attempts)


def test_an_internal_call_names_the_service_not_its_key(
    stack: Stack, exporter: InMemorySpanExporter
) -> None:
    header, trace_id, _ = traceparent()
    response = stack.client.post(
        f"{stack.broker}/internal/v1/tokens",
        json={"embed": EMBED, "user": {"id": "svc-user", "tenant": "acme", "roles": ["viewer"]}},
        headers={**bearer(SERVICE_KEY), "traceparent": header},
    )
    assert response.status_code == 200, response.text
    spans = trace_spans(exporter, trace_id, until="POST /internal/v1/tokens")
    authenticate = one(spans, "service.authenticate")
    assert authenticate.attributes == {
        "token_broker.service": "report-worker",
        "token_broker.outcome": "ok",
    }
    assert parent_of(authenticate) == span_id(one(spans, "POST /internal/v1/tokens"))
    text = all_attribute_text([span for found in spans.values() for span in found])
    for secret in (SERVICE_KEY, SERVICE_KEY_SHA256, response.json()["token"]):
        assert secret not in text


def test_tracing_off_sends_no_trace_context(tmp_path: Path) -> None:
    with running_stack(tmp_path, base_policy()) as stack:
        header, _, _ = traceparent()
        response = stack.client.post(
            f"{stack.broker}/v1/tokens",
            json={"embed": EMBED},
            headers={**bearer(session_token(user="trace-off")), "traceparent": header},
        )
        assert response.status_code == 200
        (received,) = stack.vendor_requests("embeddable")
    assert received["traceparent"] is None


def test_off_is_decided_once_and_installs_nothing() -> None:
    tracing = Tracing.off()
    assert not tracing.enabled
    assert tracing.spans is NO_SPANS
    assert tracing.route_hook() is None
    inner = httpx.MockTransport(lambda request: httpx.Response(204))
    assert tracing.transport(inner) is inner
    assert tracing.fastapi_telemetry() == {
        "tracing": False,
        "metrics": False,
        "logs": False,
        "auto_configure": False,
    }
    # The off spans are one shared object: nothing is allocated per request.
    first, second = NO_SPANS.span("a"), NO_SPANS.span("b")
    assert first is second
    with first as span:
        span.set_attribute("token_broker.outcome", "ok")


def test_on_wraps_the_outbound_transport() -> None:
    tracing = Tracing.with_provider(TracerProvider())
    inner = httpx.MockTransport(lambda request: httpx.Response(204))
    wrapped = tracing.transport(inner)
    assert isinstance(wrapped, TracedTransport) and wrapped.inner is inner


def test_an_unsampled_caller_gets_no_spans_but_the_vendor_gets_its_trace(
    stack: Stack, exporter: InMemorySpanExporter
) -> None:
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    stack.clear_vendor_requests()
    response = stack.client.post(
        f"{stack.broker}/v1/tokens",
        json={"embed": EMBED},
        headers={
            **bearer(session_token(user="trace-unsampled")),
            "traceparent": f"00-{trace_id}-{caller_span}-00",  # the caller did not sample
        },
    )
    assert response.status_code == 200
    (received,) = stack.vendor_requests("embeddable")
    _, sent_trace, _, flags = received["traceparent"].split("-")
    assert (sent_trace, flags) == (trace_id, "00")  # the vendor can still join the trace
    # A sampled request after it: once its spans are in, the unsampled one left none.
    header, later, _ = traceparent()
    stack.client.post(
        f"{stack.broker}/v1/tokens",
        json={"embed": EMBED},
        headers={**bearer(session_token(user="trace-unsampled")), "traceparent": header},
    )
    trace_spans(exporter, later, until="POST /v1/tokens")
    assert not [
        span
        for span in exporter.get_finished_spans()
        if span.context is not None and f"{span.context.trace_id:032x}" == trace_id
    ]


class CountingTracer:
    """A tracer that counts the spans asked of it."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.inner = tracer
        self.started = 0

    def start_as_current_span(self, name: str, **options: Any) -> Any:
        self.started += 1
        return self.inner.start_as_current_span(name, **options)


def test_no_child_span_is_made_under_an_unsampled_request() -> None:
    # Counted, not timed: an unsampled request makes no spans below its own.
    for sampler, expected in ((ALWAYS_OFF, 0), (ALWAYS_ON, 1)):
        provider = TracerProvider(sampler=ParentBased(sampler))
        counting = CountingTracer(provider.get_tracer("test"))
        spans = TracerSpans(cast(trace.Tracer, counting))
        request = provider.get_tracer("test").start_as_current_span("request")
        with request, spans.span("policy.decide") as span:
            span.set_attribute("token_broker.outcome", "ok")
        assert counting.started == expected, sampler
    # Without any request span (a background task), spans are made as usual.
    counting = CountingTracer(TracerProvider().get_tracer("test"))
    with TracerSpans(cast(trace.Tracer, counting)).span("jwks.refresh"):
        pass
    assert counting.started == 1
