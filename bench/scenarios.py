"""The scenarios of performance.md, each returning a :class:`ScenarioResult`.

Throughput numbers are successful answers per second (wrk counts 4xx/5xx separately);
a broker run with any error answer or socket error fails its scenario, whatever its
speed. Count-based checks (S4, S7, S8) read what the sandbox vendor received.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import rawhttp, wrk
from bench.harness import (
    EMBED,
    SESSION_BODY,
    TENANT,
    Bench,
    BrokerCounts,
    Contender,
    cpu_seconds,
    median,
)
from bench.otlp_sink import OtlpSink
from bench.procs import LOOPBACK, Child, HarnessError, wait_for_status
from bench.transports import TRANSPORTS

MB = 1024 * 1024
S3_VENDOR_LATENCY_MS = 50
S4_VENDOR_LATENCY_MS = 200
S8_VENDOR_LATENCY_MS = 200
S8_BROKERS = 3
S8_ENCRYPTION_KEY = "bench-fleet-cache-encryption-key-0123456789"


@dataclass
class Row:
    """One line of the RESULTS.md table."""

    scenario: str
    broker: str
    reference: str
    ratio: str
    target: str
    passed: bool | None
    """None: could not be measured."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "broker": self.broker,
            "reference": self.reference,
            "ratio": self.ratio,
            "target": self.target,
            "passed": self.passed,
        }


@dataclass
class ScenarioResult:
    id: str
    title: str
    rows: list[Row]
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def status(self) -> str:
        if self.error is not None or any(row.passed is None for row in self.rows):
            return "error"
        if self.problems or not all(row.passed for row in self.rows):
            return "fail"
        return "pass"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "rows": [row.as_dict() for row in self.rows],
            "problems": self.problems,
            "error": self.error,
            "seconds": round(self.seconds, 1),
            **self.details,
        }


def _rps(value: float) -> str:
    return f"{value:,.0f} req/s"


def _run_problems(name: str, runs: list[wrk.WrkResult]) -> list[str]:
    problems = []
    errors = sum(run.error_count for run in runs)
    if errors:
        kinds = Counter[str]()
        for run in runs:
            kinds.update({k: v for k, v in run.errors.items() if v})
        problems.append(f"{name} runs had {errors:,} errors ({dict(kinds)})")
    return problems


def _throughput_vs(
    bench: Bench, first: Contender, second: Contender, warmup: Callable[[Contender], None]
) -> tuple[list[wrk.WrkResult], list[wrk.WrkResult], float, float, float]:
    a_runs, b_runs = bench.alternate(first, second, warmup)
    a = median(run.rps for run in a_runs)
    b = median(run.rps for run in b_runs)
    return a_runs, b_runs, a, b, (a / b if b else 0.0)


# --- S1 -------------------------------------------------------------------------------


def s1_cache_hit(bench: Bench) -> ScenarioResult:
    target = "≥ 0.8 x floor"
    connections = 32
    broker, floor = bench.restart_main_broker(), bench.floor()
    session = bench.session("s1-user")
    bench.expect_token(broker.url, session, "S1 warm-up (fills the token cache)")
    bench.expect_token(floor.url, session, "S1 floor check")
    systems = {"broker": broker, "floor": floor}
    before = bench.counts(broker)

    def timed(name: str) -> Callable[[], wrk.WrkResult]:
        return lambda: bench.static_run(systems[name], session, connections)

    def warmup(contender: Contender) -> None:
        bench.static_run(systems[contender.name], session, connections, warmup=True)

    broker_runs, floor_runs, broker_rps, floor_rps, ratio = _throughput_vs(
        bench, Contender("broker", timed("broker")), Contender("floor", timed("floor")), warmup
    )
    during = bench.counts(broker).minus(before)
    problems = _run_problems("broker", broker_runs)
    if during.tokens_by_cache.get("miss", 0) or during.tokens_by_cache.get("coalesced", 0):
        problems.append(f"S1 is meant to be all cache hits, but the broker saw {during.as_dict()}")
    row = Row(
        f"S1 cache hit ({connections} conns)",
        _rps(broker_rps),
        f"floor {_rps(floor_rps)}",
        f"{ratio:.2f}",
        target,
        ratio >= 0.8,
    )
    return ScenarioResult(
        "S1",
        "cache hit: one user, one embed, warm cache",
        [row],
        details={
            "connections": connections,
            "broker_rps": round(broker_rps, 1),
            "reference": "floor",
            "reference_rps": round(floor_rps, 1),
            "ratio": round(ratio, 3),
            "broker_counts": during.as_dict(),
            "runs": {
                "broker": [r.as_dict() for r in broker_runs],
                "floor": [r.as_dict() for r in floor_runs],
            },
        },
        problems=problems,
    )


# --- S1T: tracing's cost on S1 ------------------------------------------------------------

S1T_OFF_TARGET = 0.95
"""Off must cost nothing measurable: within the run-to-run spread of a shared machine."""
S1T_SAMPLED_RATIO = "0.1"


def paired_ratio(runs: list[wrk.WrkResult], reference: list[wrk.WrkResult]) -> float:
    """The median over rounds of run / reference run of the same round. Runs of one
    round are seconds apart and share the machine's background load, so this is steadier
    than a ratio of medians on a machine other people are using."""
    return median(a.rps / b.rps for a, b in zip(runs, reference, strict=True) if b.rps)


def s1t_tracing_cost(bench: Bench) -> ScenarioResult:
    """S1 four ways, round-robin in one run: the broker from before tracing existed, this
    broker with tracing off (the default), with it on for every request, and on with one
    new trace in ten sampled (what a busy deployment would run). Spans are exported over
    OTLP/HTTP to a receiver on loopback, as to a collector sidecar."""
    connections = 32
    ref, source = bench.baseline()
    session = bench.session("s1t-user")
    problems: list[str] = []
    with OtlpSink() as sink:
        on_env = {
            "BROKER_OTEL_ENABLED": "true",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        }
        sampled_env = {
            **on_env,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": S1T_SAMPLED_RATIO,
        }
        systems = {
            "before": bench.start_broker("broker-before-tracing", source=source),
            "off": bench.start_broker("broker-tracing-off"),
            "on": bench.start_broker("broker-tracing-on", env=on_env),
            "on-10%": bench.start_broker("broker-tracing-sampled", env=sampled_env),
        }
        try:
            for name, child in systems.items():
                bench.expect_token(child.url, session, f"S1T warm-up of {name}")

            def warmup(contender: Contender) -> None:
                bench.static_run(systems[contender.name], session, connections, warmup=True)

            def timed(child: Child) -> Callable[[], wrk.WrkResult]:
                return lambda: bench.static_run(child, session, connections)

            contenders = [Contender(name, timed(child)) for name, child in systems.items()]
            results = dict(zip(systems, bench.alternate_all(contenders, warmup), strict=True))
        finally:
            for child in systems.values():
                bench.supervisor.stop(child)  # SIGTERM: the traced brokers flush their spans
        exported = {"exports": sink.exports, "bytes": sink.bytes}
    for name, runs in results.items():
        problems += _run_problems(f"tracing {name}", runs)
    if not sink.exports:
        problems.append("the brokers with tracing on exported no spans to the OTLP receiver")
    rps = {name: median(run.rps for run in runs) for name, runs in results.items()}
    off_ratio = paired_ratio(results["off"], results["before"])
    on_ratio = paired_ratio(results["on"], results["off"])
    sampled_ratio = paired_ratio(results["on-10%"], results["off"])
    rows = [
        Row(
            f"S1T tracing off vs before tracing ({connections} conns)",
            f"off {_rps(rps['off'])}",
            f"before {_rps(rps['before'])}",
            f"{off_ratio:.2f}",
            f"≥ {S1T_OFF_TARGET} x before",
            off_ratio >= S1T_OFF_TARGET,
        ),
        Row(
            f"S1T tracing on vs off ({connections} conns, every request sampled, OTLP)",
            f"on {_rps(rps['on'])}",
            f"off {_rps(rps['off'])}",
            f"{on_ratio:.2f}",
            "reported",
            True,
        ),
        Row(
            f"S1T tracing on, 1 in 10 sampled, vs off ({connections} conns, OTLP)",
            f"on {_rps(rps['on-10%'])}",
            f"off {_rps(rps['off'])}",
            f"{sampled_ratio:.2f}",
            "reported",
            True,
        ),
    ]

    def spread(runs: list[wrk.WrkResult]) -> list[float]:
        return [round(min(r.rps for r in runs), 1), round(max(r.rps for r in runs), 1)]

    return ScenarioResult(
        "S1T",
        "tracing's cost on S1: before tracing, off, on, on with 1 in 10 sampled",
        rows,
        details={
            "connections": connections,
            "baseline_ref": ref,
            "rps": {name: round(value, 1) for name, value in rps.items()},
            "ratios": "median over rounds of the paired runs' ratio",
            "off_vs_before": round(off_ratio, 3),
            "on_vs_off": round(on_ratio, 3),
            "sampled_vs_off": round(sampled_ratio, 3),
            "spread_rps": {name: spread(runs) for name, runs in results.items()},
            "otlp_received": exported,
            "runs": {name: [r.as_dict() for r in runs] for name, runs in results.items()},
        },
        problems=problems,
    )


# --- S2 -------------------------------------------------------------------------------


def _session_post(child: Child, session: str) -> bytes:
    return rawhttp.build_post(
        f"{LOOPBACK}:{child.port}",
        "/v1/tokens",
        SESSION_BODY.encode(),
        {"Authorization": f"Bearer {session}", "Content-Type": "application/json"},
    )


def s2_cold_sessions(bench: Bench) -> ScenarioResult:
    target = "≥ 0.5 x floor"
    connections = 32
    sessions = bench.profile.s2_sessions
    pairs = bench.profile.pairs
    broker, floor = bench.restart_main_broker(), bench.floor()
    # Set 0 warms the token cache; set 1 is for the warm-up runs; sets 2.. one per timed
    # broker run, so every run starts with sessions the broker has never verified.
    bench.log(f"    signing {(pairs + 2) * sessions:,} RS256 session JWTs")
    sets = [bench.sessions("s2-user-", sessions) for _ in range(pairs + 2)]
    files = [bench.token_file(f"s2-set{n}", tokens) for n, tokens in enumerate(sets)]
    assert broker.port is not None
    answers = asyncio.run(
        rawhttp.post_all(
            LOOPBACK, broker.port, [_session_post(broker, token) for token in sets[0]], 32
        )
    )
    statuses = Counter(answer.status for answer in answers)
    if statuses != Counter({200: sessions}):
        raise HarnessError(f"S2 token-cache warm-up answered {dict(statuses)}")
    systems = {"broker": broker, "floor": floor}
    next_set = {"broker": 2, "floor": 2}
    per_run_counts: list[dict[str, Any]] = []

    def timed(name: str) -> Callable[[], wrk.WrkResult]:
        def run() -> wrk.WrkResult:
            tokens = files[next_set[name]]
            next_set[name] += 1
            if name != "broker":
                return bench.rotating_run(systems[name], tokens, connections)
            before = bench.counts(broker)
            result = bench.rotating_run(broker, tokens, connections)
            per_run_counts.append(bench.counts(broker).minus(before).as_dict())
            return result

        return run

    def warmup(contender: Contender) -> None:
        bench.rotating_run(
            systems[contender.name], files[1], connections, duration_s=bench.profile.warmup_s
        )

    broker_runs, floor_runs, broker_rps, floor_rps, ratio = _throughput_vs(
        bench, Contender("broker", timed("broker")), Contender("floor", timed("floor")), warmup
    )
    problems = _run_problems("broker", broker_runs)
    for counts in per_run_counts:
        if counts["tokens_by_cache"].get("miss", 0):
            problems.append(f"S2 needs a warm token cache, but a run saw {counts}")
            break
    row = Row(
        f"S2 cold sessions ({sessions:,} RS256 JWTs, {connections} conns)",
        _rps(broker_rps),
        f"floor {_rps(floor_rps)}",
        f"{ratio:.2f}",
        target,
        ratio >= 0.5,
    )
    return ScenarioResult(
        "S2",
        "cold sessions: distinct RS256 session JWTs cycled, warm token cache",
        [row],
        details={
            "connections": connections,
            "sessions_per_run": sessions,
            "broker_rps": round(broker_rps, 1),
            "reference": "floor",
            "reference_rps": round(floor_rps, 1),
            "ratio": round(ratio, 3),
            "broker_counts_per_run": per_run_counts,
            "runs": {
                "broker": [r.as_dict() for r in broker_runs],
                "floor": [r.as_dict() for r in floor_runs],
            },
        },
        problems=problems,
    )


# --- S3 -------------------------------------------------------------------------------


S3_LATENCY_RATIO = 1.5
"""The broker's added latency (p50 and p99) over the bare forwarder's, at most."""
S3_FORWARDER_THROUGHPUT_RATIO = 0.8
S3_NAIVE_THROUGHPUT_RATIO = 2.0


def _added(run_ms: float) -> float:
    return run_ms - S3_VENDOR_LATENCY_MS


def _ratio(value: float, reference: float) -> float:
    if reference > 0:
        return value / reference
    return math.inf if value > 0 else 1.0


def _miss_sessions(bench: Bench, prefix: str, connections: int) -> tuple[Path, Path]:
    """Token files with enough distinct users that no run reaches the end of the list (a
    connection makes at most one request per vendor round trip), plus warm-up users."""
    profile = bench.profile
    needed = math.ceil(connections * 1000 / S3_VENDOR_LATENCY_MS * math.ceil(profile.duration_s))
    bench.log(f"    signing {needed + connections + profile.s3_warm_sessions:,} RS256 session JWTs")
    run_file = bench.token_file(
        f"{prefix}-run", bench.sessions(f"{prefix}-user-", needed + connections)
    )
    warm_file = bench.token_file(
        f"{prefix}-warm", bench.sessions(f"{prefix}-warm-", profile.s3_warm_sessions)
    )
    return run_file, warm_file


def _latency(runs: list[wrk.WrkResult]) -> dict[str, float]:
    return {
        "rps": median(r.rps for r in runs),
        "p50_ms": median(r.latency_ms("p50") for r in runs),
        "p99_ms": median(r.latency_ms("p99") for r in runs),
    }


def s3_cache_miss(bench: Bench) -> ScenarioResult:
    """Broker vs the bare forwarder (same client, same vendor call, nothing else),
    interleaved in one run: at 64 connections the added latency, at 256 the
    throughput, with the naive broker beside them."""
    phases = (64, 256)
    run_file, warm_file = _miss_sessions(bench, "s3", max(phases))
    naive = bench.naive()
    bench.expect_token(naive.url, bench.session("s3-check-user"), "S3 naive broker check")
    forwarder = bench.forwarder("aiohttp")
    phase_results: dict[int, dict[str, Any]] = {}
    problems: list[str] = []
    bench.set_vendor_latency(S3_VENDOR_LATENCY_MS)
    try:
        for connections in phases:
            bench.log(f"  S3 at {connections} connections")
            per_run_counts: list[dict[str, Any]] = []

            def restart_and_warm(connections: int = connections) -> None:
                broker = bench.restart_main_broker()
                if bench.profile.warmup_s > 0:
                    bench.rotating_run(
                        broker, warm_file, connections, duration_s=bench.profile.warmup_s
                    )

            def broker_run(
                connections: int = connections, counts: list[dict[str, Any]] = per_run_counts
            ) -> wrk.WrkResult:
                broker = bench.main_broker()
                before = bench.counts(broker)
                result = bench.rotating_run(broker, run_file, connections)
                counts.append(bench.counts(broker).minus(before).as_dict())
                return result

            def reference_run(
                child: Child, connections: int = connections
            ) -> Callable[[], wrk.WrkResult]:
                return lambda: bench.rotating_run(child, run_file, connections)

            def warmup(contender: Contender, connections: int = connections) -> None:
                child = {"naive": naive, "forwarder": forwarder}.get(contender.name)
                if child is not None:
                    bench.rotating_run(
                        child, warm_file, connections, duration_s=bench.profile.warmup_s
                    )

            contenders = [
                Contender("broker", broker_run, prepare=restart_and_warm),
                Contender("forwarder", reference_run(forwarder)),
            ]
            if connections == max(phases):
                contenders.append(Contender("naive", reference_run(naive)))
            runs = bench.alternate_all(contenders, warmup)
            broker_runs = runs[0]
            problems += _run_problems(f"broker ({connections} conns)", broker_runs)
            if any(run.wrapped for run in broker_runs):
                problems.append(
                    f"S3 at {connections} conns ran out of new users (a session was reused)"
                )
            for counts in per_run_counts:
                if counts["tokens_by_cache"].get("hit", 0):
                    problems.append(f"S3 must be all cache misses, but a run saw {counts}")
                    break
            if not all(run.ok_requests for run in broker_runs):
                problems.append(
                    f"S3 at {connections} conns: a broker run had no successful answer at all"
                )
            phase: dict[str, Any] = {
                contender.name: {
                    **_latency(contender_runs),
                    "errors": sum(r.error_count for r in contender_runs),
                    "runs": [r.as_dict() for r in contender_runs],
                }
                for contender, contender_runs in zip(contenders, runs, strict=True)
            }
            phase["broker_counts_per_run"] = per_run_counts
            phase_results[connections] = phase
    finally:
        bench.stop_naive()
        bench.clear_faults()
    low, high = phase_results[64], phase_results[256]
    broker50, broker99 = _added(low["broker"]["p50_ms"]), _added(low["broker"]["p99_ms"])
    fwd50, fwd99 = _added(low["forwarder"]["p50_ms"]), _added(low["forwarder"]["p99_ms"])
    ratio50, ratio99 = _ratio(broker50, fwd50), _ratio(broker99, fwd99)
    vs_forwarder = _ratio(high["broker"]["rps"], high["forwarder"]["rps"])
    vs_naive = _ratio(high["broker"]["rps"], high["naive"]["rps"])
    naive_errors = f", {high['naive']['errors']:,} errors" if high["naive"]["errors"] else ""
    rows = [
        Row(
            "S3 cache miss: added latency (64 conns, vendor +50 ms)",
            f"p50 +{broker50:.2f} ms, p99 +{broker99:.2f} ms ({low['broker']['rps']:,.0f} req/s)",
            f"bare forwarder p50 +{fwd50:.2f} ms, p99 +{fwd99:.2f} ms",
            f"p50 {ratio50:.2f}, p99 {ratio99:.2f}",
            f"≤ {S3_LATENCY_RATIO} x the bare forwarder's",
            low["broker"]["rps"] > 0
            and ratio50 <= S3_LATENCY_RATIO
            and ratio99 <= S3_LATENCY_RATIO,
        ),
        Row(
            "S3 cache miss: throughput (256 conns)",
            _rps(high["broker"]["rps"]),
            f"bare forwarder {_rps(high['forwarder']['rps'])}; "
            f"naive {_rps(high['naive']['rps'])}{naive_errors}",
            f"{vs_forwarder:.2f} / {vs_naive:.2f}",
            f"≥ {S3_FORWARDER_THROUGHPUT_RATIO} x forwarder, ≥ {S3_NAIVE_THROUGHPUT_RATIO:g} x naive",
            high["broker"]["rps"] > 0
            and vs_forwarder >= S3_FORWARDER_THROUGHPUT_RATIO
            and vs_naive >= S3_NAIVE_THROUGHPUT_RATIO,
        ),
    ]
    return ScenarioResult(
        "S3",
        "cache miss: every request a new user, vendor latency 50 ms",
        rows,
        details={
            "vendor_latency_ms": S3_VENDOR_LATENCY_MS,
            "broker_p50_over_vendor_ms": round(broker50, 3),
            "broker_p99_over_vendor_ms": round(broker99, 3),
            "forwarder_p50_over_vendor_ms": round(fwd50, 3),
            "forwarder_p99_over_vendor_ms": round(fwd99, 3),
            "latency_ratio_p50": round(ratio50, 3) if math.isfinite(ratio50) else None,
            "latency_ratio_p99": round(ratio99, 3) if math.isfinite(ratio99) else None,
            "throughput_vs_forwarder_256": round(vs_forwarder, 3)
            if math.isfinite(vs_forwarder)
            else None,
            "throughput_vs_naive_256": round(vs_naive, 3) if math.isfinite(vs_naive) else None,
            "phases": {str(conns): r for conns, r in phase_results.items()},
        },
        problems=problems,
    )


# --- S9 -------------------------------------------------------------------------------


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _cpu(value: float | None) -> str:
    return "no answer" if value is None else f"{value:,.0f} µs CPU"


def s9_outbound_transports(bench: Bench) -> ScenarioResult:
    """S3's 64-connection phase once per outbound transport, broker and bare forwarder
    on each, all interleaved in one run; with the CPU each process spent per call."""
    connections = 64
    transports = list(TRANSPORTS)
    run_file, warm_file = _miss_sessions(bench, "s9", connections)
    cpu_per_call: dict[str, list[float]] = {}
    problems: list[str] = []

    def measured(name: str, child_of: Callable[[], Child]) -> Callable[[], wrk.WrkResult]:
        def run() -> wrk.WrkResult:
            child = child_of()
            before = cpu_seconds(child)
            result = bench.rotating_run(child, run_file, connections)
            spent = cpu_seconds(child) - before
            cpu_per_call.setdefault(name, []).append(
                spent / result.ok_requests * 1e6 if result.ok_requests else math.inf
            )
            return result

        return run

    def restart_and_warm(transport: str) -> Callable[[], None]:
        def prepare() -> None:
            broker = bench.restart_transport_broker(transport)
            if bench.profile.warmup_s > 0:
                bench.rotating_run(
                    broker, warm_file, connections, duration_s=bench.profile.warmup_s
                )

        return prepare

    def warmup(contender: Contender) -> None:
        if contender.name.startswith("forwarder-"):
            child = bench.forwarder(contender.name.removeprefix("forwarder-"))
            bench.rotating_run(child, warm_file, connections, duration_s=bench.profile.warmup_s)

    def broker_of(transport: str) -> Callable[[], Child]:
        return lambda: bench.transport_broker(transport)

    def forwarder_of(transport: str) -> Callable[[], Child]:
        return lambda: bench.forwarder(transport)

    contenders: list[Contender] = []
    for transport in transports:
        contenders.append(
            Contender(
                f"broker-{transport}",
                measured(f"broker-{transport}", broker_of(transport)),
                prepare=restart_and_warm(transport),
            )
        )
        contenders.append(
            Contender(
                f"forwarder-{transport}",
                measured(f"forwarder-{transport}", forwarder_of(transport)),
            )
        )
    bench.set_vendor_latency(S3_VENDOR_LATENCY_MS)
    try:
        runs = bench.alternate_all(contenders, warmup)
    finally:
        bench.clear_faults()
        bench.stop_transport_brokers()
        bench.stop_forwarders()
    results: dict[str, dict[str, Any]] = {}
    for contender, contender_runs in zip(contenders, runs, strict=True):
        problems += _run_problems(contender.name, contender_runs)
        results[contender.name] = {
            **_latency(contender_runs),
            "cpu_us_per_call": _finite_or_none(
                median(cpu_per_call.get(contender.name, [math.inf]))
            ),
            "errors": sum(r.error_count for r in contender_runs),
            "runs": [r.as_dict() for r in contender_runs],
        }
    floor = results["forwarder-aiohttp"]
    floor50, floor99 = _added(floor["p50_ms"]), _added(floor["p99_ms"])
    rows: list[Row] = []
    ratios: dict[str, tuple[float, float]] = {}
    for transport in transports:
        broker, forwarder = results[f"broker-{transport}"], results[f"forwarder-{transport}"]
        b50, b99 = _added(broker["p50_ms"]), _added(broker["p99_ms"])
        ratios[transport] = (_ratio(b50, floor50), _ratio(b99, floor99))
        rows.append(
            Row(
                f"S9 outbound on {transport} (64 conns, vendor +50 ms)",
                f"broker p50 +{b50:.2f} ms, p99 +{b99:.2f} ms, {broker['rps']:,.0f} req/s, "
                f"{_cpu(broker['cpu_us_per_call'])}/miss",
                f"forwarder p50 +{_added(forwarder['p50_ms']):.2f} ms, "
                f"p99 +{_added(forwarder['p99_ms']):.2f} ms, {forwarder['rps']:,.0f} req/s, "
                f"{_cpu(forwarder['cpu_us_per_call'])}/call",
                f"p50 {ratios[transport][0]:.2f}, p99 {ratios[transport][1]:.2f}",
                "reported (ratios: broker over the aiohttp forwarder)",
                True,
            )
        )
    httpx50, httpx99 = ratios.get("httpx", (math.inf, math.inf))
    httpx_misses = httpx50 > S3_LATENCY_RATIO or httpx99 > S3_LATENCY_RATIO
    rows.append(
        Row(
            "S9 transport choice",
            "aiohttp under httpx's client",
            f"httpx's own: broker p50 {httpx50:.2f}, p99 {httpx99:.2f} x the forwarder's added",
            "—",
            f"another transport than httpx's own only while httpx's misses S3 (> {S3_LATENCY_RATIO})",
            httpx_misses,
        )
    )
    return ScenarioResult(
        "S9",
        "outbound transport: S3 at 64 connections on each transport, side by side",
        rows,
        details={
            "connections": connections,
            "vendor_latency_ms": S3_VENDOR_LATENCY_MS,
            "transports": transports,
            "results": results,
        },
        problems=problems,
    )


# --- S4 -------------------------------------------------------------------------------


async def _herd(
    brokers: Sequence[Child], session: str, count: int
) -> tuple[Counter[int], set[str], float]:
    """``count`` identical token requests in one pass, spread round-robin over ``brokers``
    (S4 sends them all to one, S8 over the fleet); the statuses, the distinct tokens and
    the seconds it took to open every connection and read every answer."""
    requests = [_session_post(broker, session) for broker in brokers]
    targets = []
    for number in range(count):
        broker = brokers[number % len(brokers)]
        assert broker.port is not None
        targets.append((LOOPBACK, broker.port, requests[number % len(brokers)]))
    started = time.perf_counter()
    answers = await rawhttp.burst_to(targets)
    elapsed = time.perf_counter() - started
    statuses = Counter(answer.status for answer in answers)
    tokens = {orjson.loads(a.body)["token"] for a in answers if a.status == 200}
    return statuses, tokens, elapsed


def _herd_outcome(calls: int, statuses: Counter[int], tokens: set[str]) -> str:
    return (
        f"{calls} vendor call; "
        + ", ".join(f"{n} x {status}" for status, n in sorted(statuses.items()))
        + f"; {len(tokens)} distinct token(s)"
    )


def s4_thundering_herd(bench: Bench) -> ScenarioResult:
    count = bench.profile.s4_requests
    target = f"exactly 1 vendor call; {count} x 200"
    broker = bench.restart_main_broker()
    user = "s4-user"
    session = bench.session(user)
    bench.clear_vendor_requests()
    before = bench.counts(broker)
    bench.set_vendor_latency(S4_VENDOR_LATENCY_MS)
    try:
        statuses, tokens, elapsed = asyncio.run(_herd([broker], session, count))
    finally:
        bench.clear_faults()
    during = bench.counts(broker).minus(before)
    calls = bench.vendor_calls_for(user)
    passed = calls == 1 and statuses == Counter({200: count}) and len(tokens) == 1
    by_cache = during.tokens_by_cache
    row = Row(
        f"S4 thundering herd ({count} concurrent, cold, vendor +200 ms)",
        _herd_outcome(calls, statuses, tokens),
        f"{int(by_cache.get('coalesced', 0))} coalesced, {int(by_cache.get('hit', 0))} cache hits",
        "—",
        target,
        passed,
    )
    return ScenarioResult(
        "S4",
        "thundering herd: concurrent identical requests, cold cache",
        [row],
        details={
            "requests": count,
            "vendor_calls": calls,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "distinct_tokens": len(tokens),
            "seconds_to_open_and_answer_all": round(elapsed, 3),
            "broker_counts": during.as_dict(),
        },
    )


# --- S5 -------------------------------------------------------------------------------


class _RssSampler:
    """Samples a process's RSS in a background thread while a load runs."""

    def __init__(self, child: Child, interval_s: float) -> None:
        self.child = child
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = time.perf_counter()

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.child.rss_bytes()
            except (OSError, HarnessError):
                return
            self.samples.append((round(time.perf_counter() - self._started, 1), rss))
            self._stop.wait(self.interval_s)


def s5_memory(bench: Bench) -> ScenarioResult:
    profile = bench.profile
    fill = profile.s5_fill
    key = bench.policies.service_key
    broker = bench.start_broker("broker-s5")
    try:
        bench.expect_token(broker.url, bench.session("s5-first-user"), "S5 first request")
        rss_started = broker.rss_bytes()
        bench.log(f"    filling the token cache with {fill:,} tokens")
        fill_started = time.perf_counter()
        fill_result = wrk.run_until_done(
            bench.wrk,
            broker.url,
            "internal_new_users.lua",
            [key, "s5-fill-", str(fill), TENANT, EMBED],
            connections=32,
            threads=profile.threads,
            max_duration_s=max(120.0, fill / 100),
        )
        fill_seconds = time.perf_counter() - fill_started
        if fill_result.error_count:
            raise HarnessError(f"S5 fill had errors: {fill_result.errors}")
        deadline = time.perf_counter() + 15
        while True:
            issued = bench.counts(broker).tokens_by_cache.get("miss", 0)
            if issued >= fill + 1 or time.perf_counter() > deadline:
                break
            time.sleep(0.2)
        if issued < fill + 1:
            raise HarnessError(
                f"S5 fill: the broker minted {issued - 1:.0f} tokens for new users, not {fill:,}"
            )
        rss_filled = broker.rss_bytes()

        soak_sessions = bench.token_file("s5-soak", bench.sessions("s5-session-", 1_000))
        bench.log(f"    soak: {profile.s5_soak_s:.0f} s of steady mixed load")
        with _RssSampler(broker, max(1.0, profile.s5_soak_s / 60)) as sampler:
            soak = wrk.run(
                bench.wrk,
                broker.url,
                "soak_mixed.lua",
                [str(soak_sessions), SESSION_BODY, key, "s5-soak-", TENANT, EMBED],
                connections=16,
                duration_s=profile.s5_soak_s,
                threads=profile.threads,
            )
        rss_end = broker.rss_bytes()
        soak_counts = bench.counts(broker)
    finally:
        bench.supervisor.stop(broker)
    growth = (rss_end - rss_filled) / rss_filled
    peak = max((rss for _, rss in sampler.samples), default=rss_end)
    problems = _run_problems("soak", [soak])
    filled_ok = rss_filled <= 250 * MB
    growth_ok = growth <= 0.10
    row = Row(
        f"S5 memory ({fill:,} cached tokens; {profile.s5_soak_s:.0f} s soak)",
        f"RSS {rss_filled / MB:.0f} MB filled (from {rss_started / MB:.0f} MB); "
        f"soak {growth * 100:+.1f} % (peak {peak / MB:.0f} MB)",
        "—",
        "—",
        "RSS ≤ 250 MB; soak growth ≤ 10 %",
        filled_ok and growth_ok,
    )
    return ScenarioResult(
        "S5",
        "memory: distinct tokens cached, then a soak at steady load",
        [row],
        details={
            "tokens_filled": fill,
            "tokens_minted_by_fill": int(issued) - 1,
            "fill_seconds": round(fill_seconds, 1),
            "rss_mb": {
                "started": round(rss_started / MB, 1),
                "filled": round(rss_filled / MB, 1),
                "after_soak": round(rss_end / MB, 1),
                "soak_peak": round(peak / MB, 1),
            },
            "soak_growth_percent": round(growth * 100, 2),
            "soak_seconds": profile.s5_soak_s,
            "soak": soak.as_dict(),
            "soak_rss_samples_mb": [(t, round(rss / MB, 1)) for t, rss in sampler.samples],
            "broker_counts_total": soak_counts.as_dict(),
        },
        problems=problems,
    )


# --- S6 -------------------------------------------------------------------------------


def s6_startup(bench: Bench) -> ScenarioResult:
    starts = bench.profile.s6_starts
    seconds: list[float] = []
    for attempt in range(starts):
        child = bench.spawn_broker(f"broker-s6-{attempt + 1}", bench.policies.startup)
        try:
            seconds.append(wait_for_status(child, "/readyz", timeout=30, interval=0.005))
        finally:
            bench.supervisor.stop(child)
    typical = median(seconds)
    row = Row(
        "S6 start-up (`serve` → first 200 from /readyz, HS issuer)",
        f"{typical:.2f} s median of {starts} (max {max(seconds):.2f} s)",
        "—",
        "—",
        "≤ 2 s",
        typical <= 2.0,
    )
    return ScenarioResult(
        "S6",
        "start-up: token-broker serve to the first 200 from /readyz",
        [row],
        details={"seconds": [round(s, 3) for s in seconds], "median_seconds": round(typical, 3)},
    )


# --- S7 -------------------------------------------------------------------------------


def s7_repeat_loads(bench: Bench) -> ScenarioResult:
    count = bench.profile.s7_requests
    broker = bench.restart_main_broker()
    user = "s7-user"
    session = bench.session(user)
    bench.clear_vendor_requests()
    before = bench.counts(broker)
    statuses: Counter[int] = Counter()
    tokens: set[str] = set()
    headers = {"Authorization": f"Bearer {session}", "Content-Type": "application/json"}
    with httpx.Client(base_url=broker.url, timeout=30.0) as client:
        for _ in range(count):
            response = client.post("/v1/tokens", content=SESSION_BODY, headers=headers)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                tokens.add(response.json()["token"])
    during = bench.counts(broker).minus(before)
    calls = bench.vendor_calls_for(user)
    passed = calls == 1 and statuses == Counter({200: count}) and len(tokens) == 1
    row = Row(
        f"S7 repeat page loads ({count:,} sequential, same user and embed)",
        f"{calls} vendor call; "
        + ", ".join(f"{n:,} x {status}" for status, n in sorted(statuses.items())),
        f"{int(during.tokens_by_cache.get('hit', 0)):,} cache hits",
        "—",
        "exactly 1 vendor call",
        passed,
    )
    return ScenarioResult(
        "S7",
        "repeat page loads within one token lifetime",
        [row],
        details={
            "requests": count,
            "vendor_calls": calls,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "distinct_tokens": len(tokens),
            "broker_counts": during.as_dict(),
        },
    )


# --- S8 -------------------------------------------------------------------------------


def s8_fleet_herd(bench: Bench) -> ScenarioResult:
    """performance.md S8: three brokers on one Redis, one burst spread over them."""
    count = bench.profile.s8_requests
    target = f"exactly 1 vendor call; {count} x 200"
    redis, redis_url = bench.start_redis()
    brokers: list[Child] = []
    try:
        env = {
            "BROKER_REDIS_URL": redis_url,
            "BROKER_REDIS_KEY_PREFIX": "bench-s8:",
            "BROKER_CACHE_ENCRYPTION_KEY": S8_ENCRYPTION_KEY,
        }
        brokers = [bench.spawn_broker(f"fleet-{n}", env=env) for n in range(S8_BROKERS)]
        for broker in brokers:
            wait_for_status(broker, "/readyz")
        user = "s8-user"
        session = bench.session(user)
        bench.clear_vendor_requests()
        before = [bench.counts(broker) for broker in brokers]
        bench.set_vendor_latency(S8_VENDOR_LATENCY_MS)
        try:
            statuses, tokens, elapsed = asyncio.run(_herd(brokers, session, count))
        finally:
            bench.clear_faults()
        during = [
            bench.counts(b).minus(earlier) for b, earlier in zip(brokers, before, strict=True)
        ]
        calls = bench.vendor_calls_for(user)
    finally:
        for broker in brokers:
            bench.supervisor.stop(broker)
        bench.supervisor.stop(redis)
    roles: Counter[str] = Counter()
    by_cache: Counter[str] = Counter()
    for counts in during:
        roles.update({k: int(v) for k, v in counts.fleet_roles.items()})
        by_cache.update({k: int(v) for k, v in counts.tokens_by_cache.items()})
    passed = calls == 1 and statuses == Counter({200: count}) and len(tokens) == 1
    row = Row(
        f"S8 fleet herd ({S8_BROKERS} brokers, one Redis, {count} concurrent, cold, "
        f"vendor +{S8_VENDOR_LATENCY_MS} ms)",
        _herd_outcome(calls, statuses, tokens),
        f"fleet: {roles.get('leader', 0)} leader, {roles.get('follower', 0)} follower(s), "
        f"{roles.get('takeover', 0)} takeover(s); {by_cache.get('coalesced', 0)} coalesced",
        "—",
        target,
        passed,
    )
    return ScenarioResult(
        "S8",
        "fleet herd: identical cold requests over three brokers on one Redis",
        [row],
        details={
            "brokers": S8_BROKERS,
            "requests": count,
            "vendor_calls": calls,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "distinct_tokens": len(tokens),
            "fleet_roles": dict(sorted(roles.items())),
            "tokens_by_cache": dict(sorted(by_cache.items())),
            "seconds_to_open_and_answer_all": round(elapsed, 3),
        },
    )


SCENARIOS: dict[str, tuple[str, Callable[[Bench], ScenarioResult]]] = {
    "S1": ("cache hit vs framework floor", s1_cache_hit),
    "S2": ("cold sessions vs framework floor", s2_cold_sessions),
    "S3": ("cache miss: latency and throughput vs naive broker", s3_cache_miss),
    "S4": ("thundering herd", s4_thundering_herd),
    "S5": ("memory and soak", s5_memory),
    "S6": ("start-up", s6_startup),
    "S7": ("repeat page loads", s7_repeat_loads),
    "S8": ("fleet herd", s8_fleet_herd),
    "S9": ("outbound transport: httpx's own vs the shipped one", s9_outbound_transports),
    "S1T": ("tracing's cost on S1: before tracing, off, on, sampled", s1t_tracing_cost),
}
# What `make bench` runs; S1T is asked for by name (it needs git history for "before").
DEFAULT_SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9")

__all__ = ["DEFAULT_SCENARIOS", "SCENARIOS", "BrokerCounts", "Row", "ScenarioResult"]
