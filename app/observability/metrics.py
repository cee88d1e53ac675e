"""Prometheus metric families (operations.md "Observability").

One :class:`Metrics` object per app, created in the lifespan and registered in its own
:class:`CollectorRegistry` (so tests can run many apps in one process). With several
uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by ``token-broker serve`` and
``/metrics`` aggregates every worker's files through ``MultiProcessCollector``.

Labels are bounded: route templates, provider/region/embed names from config, status
codes, outcome codes. Never a user id, a tenant id from a request, or a secret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from app.observability.logging import dropped_lines

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
NAMESPACE = "token_broker"
GaugeMode = Literal["max", "min", "livemax", "livemin", "sum", "livesum"]


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    http_requests_total: Counter
    http_request_duration_seconds: Histogram
    tokens_total: Counter
    upstream_requests_total: Counter
    upstream_latency_seconds: Histogram
    circuit_open: Gauge
    jwks_refresh_total: Counter
    rate_limited_total: Counter
    config_reloads_total: Counter
    redis_available: Gauge
    redis_errors_total: Counter
    session_cache_total: Counter
    # Label lookups cost microseconds on the hot path; children are reused. Label
    # values are bounded (routes, methods, statuses, config names, codes).
    _http_children: dict[tuple[str, str, int], tuple[Any, Any]] = field(default_factory=dict)
    _token_children: dict[tuple[str, str, str, str], Any] = field(default_factory=dict)
    _upstream_children: dict[tuple[str, str, str], tuple[Any, Any]] = field(default_factory=dict)

    def http_children(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        """The labelled HTTP counter and histogram (looked up once per label set)."""
        key = (route, method, status)
        found = self._http_children.get(key)
        if found is None:
            found = (
                self.http_requests_total.labels(route, method, str(status)),
                self.http_request_duration_seconds.labels(route, method),
            )
            self._http_children[key] = found
        return found

    def upstream_children(self, provider: str, region: str, status: str) -> tuple[Any, Any]:
        """The labelled vendor-call counter and latency histogram."""
        key = (provider, region, status)
        found = self._upstream_children.get(key)
        if found is None:
            found = self._upstream_children[key] = (
                self.upstream_requests_total.labels(
                    provider=provider, region=region, status=status
                ),
                self.upstream_latency_seconds.labels(provider=provider, region=region),
            )
        return found

    def token_counter(self, provider: str, embed: str, outcome: str, cache: str) -> Any:
        key = (provider, embed, outcome, cache)
        found = self._token_children.get(key)
        if found is None:
            found = self._token_children[key] = self.tokens_total.labels(*key)
        return found

    @classmethod
    def create(cls) -> Metrics:
        """Fresh metric objects, exposed through a fresh registry."""
        registry = CollectorRegistry(auto_describe=True)
        if multiprocess_dir() is not None:
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            target: CollectorRegistry | None = None  # values go to the shared files
        else:
            target = registry
            # Process-wide, like logging; with workers it is in the shared files.
            registry.register(dropped_lines)

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, namespace=NAMESPACE, registry=target)

        def histogram(name: str, doc: str, labels: tuple[str, ...]) -> Histogram:
            return Histogram(
                name, doc, labels, namespace=NAMESPACE, registry=target, buckets=LATENCY_BUCKETS
            )

        def gauge(name: str, doc: str, labels: tuple[str, ...], mode: GaugeMode) -> Gauge:
            return Gauge(
                name, doc, labels, namespace=NAMESPACE, registry=target, multiprocess_mode=mode
            )

        return cls(
            registry=registry,
            http_requests_total=counter(
                "http_requests_total", "HTTP requests served.", ("route", "method", "status")
            ),
            http_request_duration_seconds=histogram(
                "http_request_duration_seconds", "HTTP request latency.", ("route", "method")
            ),
            tokens_total=counter(
                "tokens_total",
                "Token decisions (outcome is ok or an error code).",
                ("provider", "embed", "outcome", "cache"),
            ),
            upstream_requests_total=counter(
                "upstream_requests_total",
                "Vendor token calls (status is the HTTP status or an error kind).",
                ("provider", "region", "status"),
            ),
            upstream_latency_seconds=histogram(
                "upstream_latency_seconds", "Vendor token call latency.", ("provider", "region")
            ),
            circuit_open=gauge(
                "circuit_open",
                "1 while the circuit breaker for a provider and region is open.",
                ("provider", "region"),
                "max",
            ),
            jwks_refresh_total=counter(
                "jwks_refresh_total", "JWKS fetches by outcome.", ("issuer", "outcome")
            ),
            rate_limited_total=counter(
                "rate_limited_total", "Requests refused by a rate limit.", ("scope",)
            ),
            config_reloads_total=counter(
                "config_reloads_total", "Policy reloads by outcome.", ("outcome",)
            ),
            redis_available=gauge(
                "redis_available",
                "1 while Redis answers, 0 while the in-process fallback is used.",
                (),
                "min",
            ),
            redis_errors_total=counter(
                "redis_errors_total", "Redis operations that failed.", ("operation",)
            ),
            session_cache_total=counter(
                "session_cache_total", "Verified-session cache lookups.", ("result",)
            ),
        )
