"""Prometheus metric families (operations.md "Observability").

One :class:`Metrics` object per app, created in the lifespan and registered in its own
:class:`CollectorRegistry` (so tests can run many apps in one process). With several
uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by ``token-broker serve`` and
``/metrics`` aggregates every worker's files through ``MultiProcessCollector``.

Labels are bounded: route templates, provider/region/embed names from config, status
codes, outcome codes. Never a user id, a tenant id from a request, or a secret.

What an operator can alert on from the first scrape:

- label sets known in advance (providers, regions, embeds, outcomes, rejection reasons,
  rate-limit scopes, reload outcomes) exist at 0 from start-up and after each reload
  (:meth:`Metrics.prepare`), so ``rate()`` and ``increase()`` see the first event;
- ``token_broker_redis_available`` exists only when Redis is configured: without
  Redis there is nothing to be unavailable, and an alert on ``== 0`` must not fire;
- no ``*_created`` series (they double the series count and nothing here needs them;
  an operator who wants them sets prometheus-client's own
  ``PROMETHEUS_DISABLE_CREATED_SERIES=false``);
- ``process_*`` (of the process that answers the scrape) and
  ``token_broker_build_info{version}``.

Embed names are labels only when the operator opts in (``BROKER_METRICS_EMBED_LABELS``):
``/metrics`` needs no credentials, while the API deliberately answers one
``embed_not_allowed`` for unknown and forbidden embeds so names cannot be enumerated.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.errors import CONNECTION_REFUSAL_REASONS, SESSION_REJECTION_REASONS
from app.observability.logging import dropped_lines
from app.version import package_version

if TYPE_CHECKING:
    from app.config.models import PolicyConfig

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
NAMESPACE = "token_broker"
UNLABELLED = "-"
"""The ``embed`` (and ``provider``) label value when the name is not shown."""
GaugeMode = Literal["max", "min", "livemax", "livemin", "sum", "livesum"]

# Label values worth an alert before they first happen.
TOKEN_OUTCOMES_PER_EMBED = (
    ("ok", "hit"),
    ("ok", "miss"),
    ("ok", "coalesced"),
    ("rate_limited", "none"),
    ("missing_claim", "none"),
    ("upstream_rejected", "miss"),
    ("upstream_auth_failed", "miss"),
    ("upstream_bad_response", "miss"),
    ("upstream_unavailable", "miss"),
    ("upstream_timeout", "miss"),
)
TOKEN_OUTCOMES_BEFORE_AN_EMBED = ("embed_not_allowed", "tenant_not_allowed", "internal_error")
UPSTREAM_FAILURE_STATUSES = (
    "429",
    "500",
    "502",
    "503",
    "504",
    "timeout",
    "connect_error",
    "bad_response",
    "circuit_open",
    "concurrency_limit",
)
JWKS_OUTCOMES = ("ok", "unreachable", "http_error", "invalid", "too_large", "no_usable_keys")
RATE_LIMIT_SCOPES = ("user", "tenant")
RELOAD_OUTCOMES = ("success", "failure")
FLEET_ROLES = ("leader", "follower", "takeover", "local")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _created_series_wanted() -> bool:
    # prometheus-client's own switch, read at collection time; our default is off.
    setting = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES")
    return setting is not None and setting.lower() not in ("true", "1", "t")


class BuildInfo(Collector):
    """``token_broker_build_info{version} 1``: which release each replica runs."""

    def __init__(self, version: str) -> None:
        self._version = version

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{NAMESPACE}_build_info", "The running release (always 1).", labels=["version"]
        )
        family.add_metric([self._version], 1)
        yield family


def region_pairs(config: PolicyConfig) -> Iterator[tuple[str, str]]:
    """(provider, region label) of every vendor endpoint the policy can call."""
    for name, block in config.providers.items():
        regions = block.region_names()
        if regions is None:
            yield name, ""
        else:
            yield from ((name, region) for region in sorted(regions))


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
    redis_available: Gauge | None
    """None without Redis: the series is then absent, not 0."""
    redis_errors_total: Counter
    fleet_flights_total: Counter | None
    """None without Redis. Fleet single-flight calls by role: leader (called the vendor),
    follower (took another replica's token), takeover (called it after a leader
    vanished), local (Redis unavailable: called it without the fleet)."""
    session_cache_total: Counter
    sessions_rejected_total: Counter
    connections_refused_total: Counter
    embed_labels: bool = False
    # Label lookups cost microseconds on the hot path; children are reused. Label
    # values are bounded (routes, methods, statuses, config names, codes).
    _http_children: dict[tuple[str, str, int], tuple[Any, Any]] = field(default_factory=dict)
    _token_children: dict[tuple[str, str, str, str], Any] = field(default_factory=dict)
    _upstream_children: dict[tuple[str, str, str], tuple[Any, Any]] = field(default_factory=dict)
    _rejection_children: dict[str, Any] = field(default_factory=dict)

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
            shown = embed if self.embed_labels else UNLABELLED
            found = self._token_children[key] = self.tokens_total.labels(
                provider, shown, outcome, cache
            )
        return found

    def session_rejected(self, reason: str) -> Any:
        """The rejection counter of one of :data:`SESSION_REJECTION_REASONS`."""
        found = self._rejection_children.get(reason)
        if found is None:
            found = self._rejection_children[reason] = self.sessions_rejected_total.labels(
                reason=reason
            )
        return found

    def prepare(self, config: PolicyConfig) -> None:
        """Create, at 0, every label set this policy makes knowable (start-up and reload).

        Series of a previous policy stay: counters must not vanish under ``rate()``."""
        for outcome, cache in TOKEN_OUTCOMES_PER_EMBED:
            for name, embed in config.embeds.items():
                self.token_counter(embed.provider, name, outcome, cache)
        for outcome in TOKEN_OUTCOMES_BEFORE_AN_EMBED:
            self.token_counter(UNLABELLED, UNLABELLED, outcome, "none")
        for provider, region in region_pairs(config):
            for status in UPSTREAM_FAILURE_STATUSES:
                self.upstream_children(provider, region, status)
            self.circuit_open.labels(provider=provider, region=region)
        for issuer in config.session.issuers:
            if issuer.jwks_url is not None:
                for outcome in JWKS_OUTCOMES:
                    self.jwks_refresh_total.labels(issuer=issuer.issuer, outcome=outcome)

    @classmethod
    def create(cls, *, redis: bool = False, embed_labels: bool = False) -> Metrics:
        """Fresh metric objects, exposed through a fresh registry."""
        if _created_series_wanted():
            prometheus_client.enable_created_metrics()  # type: ignore[no-untyped-call]
        else:
            prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        registry = CollectorRegistry(auto_describe=True)
        if multiprocess_dir() is not None:
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            target: CollectorRegistry | None = None  # values go to the shared files
        else:
            target = registry
            # Process-wide, like logging; with workers it is in the shared files.
            registry.register(dropped_lines)
        # Read from /proc of the process answering the scrape (one worker of several).
        ProcessCollector(registry=registry)
        registry.register(BuildInfo(package_version()))

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

        metrics = cls(
            registry=registry,
            embed_labels=embed_labels,
            http_requests_total=counter(
                "http_requests_total", "HTTP requests served.", ("route", "method", "status")
            ),
            http_request_duration_seconds=histogram(
                "http_request_duration_seconds", "HTTP request latency.", ("route", "method")
            ),
            tokens_total=counter(
                "tokens_total",
                "Token decisions (outcome is ok or an error code; embed is '-' unless "
                "BROKER_METRICS_EMBED_LABELS is on).",
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
            )
            if redis
            else None,
            redis_errors_total=counter(
                "redis_errors_total", "Redis operations that failed.", ("operation",)
            ),
            fleet_flights_total=counter(
                "fleet_flights_total",
                "Fleet-wide single-flight calls by role (leader, follower, takeover, local).",
                ("role",),
            )
            if redis
            else None,
            session_cache_total=counter(
                "session_cache_total", "Verified-session cache lookups.", ("result",)
            ),
            sessions_rejected_total=counter(
                "sessions_rejected_total",
                "Credentials refused, by reason (see the session.rejected audit event).",
                ("reason",),
            ),
            connections_refused_total=counter(
                "connections_refused_total",
                "Requests refused or connections closed by the connection limits, by "
                "reason (app.connections).",
                ("reason",),
            ),
        )
        for reason in CONNECTION_REFUSAL_REASONS:
            metrics.connections_refused_total.labels(reason=reason)
        for reason in SESSION_REJECTION_REASONS:
            metrics.session_rejected(reason)
        for scope in RATE_LIMIT_SCOPES:
            metrics.rate_limited_total.labels(scope=scope)
        for outcome in RELOAD_OUTCOMES:
            metrics.config_reloads_total.labels(outcome=outcome)
        if metrics.fleet_flights_total is not None:
            for role in FLEET_ROLES:
                metrics.fleet_flights_total.labels(role=role)
        return metrics
