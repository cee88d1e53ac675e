"""What every scenario shares: the profile, the running systems, and small helpers.

:class:`Bench` owns the sandbox, the broker under test (``token-broker serve``), and the
two reference apps, all on loopback free ports, all under the same uvicorn settings:
1 worker, uvloop, httptools, access log off, no ``server`` header. (The broker gets
uvloop and httptools from uvicorn's ``auto`` choice, which picks both when installed;
:func:`check_event_loop_stack` makes sure they are.)
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import wrk
from bench.policy import (
    EMBED,
    SANDBOX_EU_API_KEY,
    SESSION_BODY,
    TENANT,
    PolicyFiles,
    write_policies,
)
from bench.procs import LOOPBACK, Child, HarnessError, Supervisor, free_port, wait_for_status
from bench.tokens import AUDIENCE, ISSUER, KeyPair, Session, generate_key_pair, mint_sessions
from bench.tokens import write_token_file as _write_token_file

# The same redis-server the tests start (loopback, no persistence) and the same PING.
from tests.support.redis_server import ping, redis_server_args

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_UVICORN_FLAGS = (
    "--workers",
    "1",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--no-server-header",
    "--log-level",
    "warning",
)


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    duration_s: float
    """Length of each timed run."""
    warmup_s: float
    """Length of the untimed run each system gets before its first timed run (0: none)."""
    pairs: int
    """A/B pairs per comparison (performance.md: at least 3 for a real run)."""
    s2_sessions: int
    s3_warm_sessions: int
    s4_requests: int
    s5_fill: int
    s5_soak_s: float
    s6_starts: int
    s7_requests: int
    s8_requests: int = 300
    """S8: identical cold requests spread over the fleet's brokers."""
    threads: int = 1
    """wrk threads. One keeps the 2-core reference machine's second core for the servers."""
    load_probe_s: float = 1.0
    """How long the machine's other load is sampled before each scenario."""


PROFILES = {
    "full": Profile("full", 10, 2, 5, 5_000, 1_000, 500, 100_000, 300, 5, 1_000),
    "quick": Profile("quick", 3, 1, 3, 5_000, 1_000, 500, 100_000, 30, 3, 1_000),
    "smoke": Profile("smoke", 1, 0, 1, 300, 300, 500, 1_000, 2, 1, 1_000, load_probe_s=0.25),
}


def check_event_loop_stack() -> None:
    missing = [name for name in ("uvloop", "httptools") if importlib.util.find_spec(name) is None]
    if missing:
        raise HarnessError(
            f"{', '.join(missing)} not installed: the broker and the references must run on "
            "uvloop + httptools (uvicorn[standard]); run `make install`"
        )


def _busy_and_total_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def background_load(seconds: float = 1.0) -> dict[str, float]:
    """How busy the machine is while every system of the harness is idle.

    Measured before each scenario: CPU used by other processes competes with the systems
    under test (and the ratios assume both sides of a pair saw the same machine).
    """
    try:
        busy_before, total_before = _busy_and_total_jiffies()
        time.sleep(seconds)
        busy_after, total_after = _busy_and_total_jiffies()
        with open("/proc/loadavg") as loadavg:
            one_minute = float(loadavg.read().split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    total = total_after - total_before
    busy = (busy_after - busy_before) / total * 100 if total > 0 else 0.0
    return {"other_cpu_percent": round(busy, 1), "loadavg_1m": one_minute}


def median(values: Iterable[float]) -> float:
    items = list(values)
    return statistics.median(items) if items else 0.0


# --- Prometheus text, just what the scenarios check -----------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class BrokerCounts:
    """Counters read from the broker's /metrics: what happened between two reads."""

    tokens_by_cache: dict[str, float] = field(default_factory=dict)
    """Granted tokens by cache state (hit, miss, coalesced)."""
    denied: float = 0.0
    session_cache: dict[str, float] = field(default_factory=dict)
    fleet_roles: dict[str, float] = field(default_factory=dict)
    """Fleet single-flight calls by role (leader, follower, takeover, local); Redis only."""

    def minus(self, earlier: BrokerCounts) -> BrokerCounts:
        return BrokerCounts(
            fleet_roles={
                k: v - earlier.fleet_roles.get(k, 0.0) for k, v in self.fleet_roles.items()
            },
            tokens_by_cache={
                k: v - earlier.tokens_by_cache.get(k, 0.0) for k, v in self.tokens_by_cache.items()
            },
            denied=self.denied - earlier.denied,
            session_cache={
                k: v - earlier.session_cache.get(k, 0.0) for k, v in self.session_cache.items()
            },
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens_by_cache": {k: int(v) for k, v in sorted(self.tokens_by_cache.items())},
            "denied": int(self.denied),
            "session_cache": {k: int(v) for k, v in sorted(self.session_cache.items())},
            "fleet_roles": {k: int(v) for k, v in sorted(self.fleet_roles.items())},
        }


def parse_counts(text: str) -> BrokerCounts:
    by_cache: dict[str, float] = {}
    sessions: dict[str, float] = {}
    roles: dict[str, float] = {}
    denied = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, raw_labels, raw_value = match.groups()
        labels = dict(_LABEL.findall(raw_labels or ""))
        value = float(raw_value)
        if name == "token_broker_tokens_total":
            if labels.get("outcome") == "ok":
                cache = labels.get("cache", "?")
                by_cache[cache] = by_cache.get(cache, 0.0) + value
            else:
                denied += value
        elif name == "token_broker_session_cache_total":
            result = labels.get("result", "?")
            sessions[result] = sessions.get(result, 0.0) + value
        elif name == "token_broker_fleet_flights_total":
            roles[labels.get("role", "?")] = value
    return BrokerCounts(
        tokens_by_cache=by_cache, denied=denied, session_cache=sessions, fleet_roles=roles
    )


# --- the systems ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contender:
    """One side of an A/B comparison."""

    name: str
    run: Callable[[], wrk.WrkResult]
    prepare: Callable[[], None] | None = None
    """Untimed, before every timed run (e.g. restart the broker and warm it up again)."""


class Bench:
    def __init__(
        self,
        *,
        profile: Profile,
        work_dir: Path,
        supervisor: Supervisor,
        wrk_executable: str,
        broker_log_level: str,
        log: Callable[[str], None],
        baseline_ref: str | None = None,
    ) -> None:
        self.profile = profile
        self.baseline_ref = baseline_ref
        """S1T's "before": a git ref; None: the commit before tracing arrived."""
        self.work_dir = work_dir
        self.supervisor = supervisor
        self.wrk = wrk_executable
        self.broker_log_level = broker_log_level
        self.log = log
        work_dir.mkdir(parents=True, exist_ok=True)
        self.keys: KeyPair = generate_key_pair()
        self.public_key_path = work_dir / "session-public.pem"
        self.public_key_path.write_bytes(self.keys.public_pem)
        self.policies: PolicyFiles = write_policies(work_dir, self.public_key_path)
        self.http = httpx.Client(timeout=30.0)
        self.sandbox = self._start_sandbox()
        self.broker: Child | None = None
        self._floor: Child | None = None
        self._naive: Child | None = None
        self._forwarders: dict[str, Child] = {}
        self._transport_brokers: dict[str, Child] = {}

    def close(self) -> None:
        self.http.close()

    # --- starting things ----------------------------------------------------------------

    def _start_sandbox(self) -> Child:
        port = free_port()
        child = self.supervisor.start(
            "sandbox",
            [*token_broker_command(), "sandbox", "--host", LOOPBACK, "--port", str(port)],
            env={"SANDBOX_LOG_LEVEL": "warning", "SANDBOX_ACCESS_LOG": "false"},
            port=port,
            cwd=REPO_ROOT,
        )
        wait_for_status(child, "/healthz")
        return child

    def broker_env(self, policy: Path, port: int) -> dict[str, str]:
        return {
            "BROKER_CONFIG": str(policy),
            "BROKER_HOST": LOOPBACK,
            "BROKER_PORT": str(port),
            "BROKER_WORKERS": "1",
            "BROKER_ACCESS_LOG": "false",
            "BROKER_LOG_LEVEL": self.broker_log_level,
            "BROKER_LOG_FORMAT": "json",
            "BROKER_REDIS_URL": "",
            "SANDBOX_URL": self.sandbox.url,
            "BENCH_EMBEDDABLE_EU_API_KEY": SANDBOX_EU_API_KEY,
            "BENCH_SESSION_HS256_SECRET": self.policies.hs_secret,
        }

    def spawn_broker(
        self,
        name: str,
        policy: Path | None = None,
        env: dict[str, str] | None = None,
        *,
        source: Path | None = None,
    ) -> Child:
        """``token-broker serve`` on a free port; returns without waiting for readiness.
        ``env`` adds to (or overrides) the broker's environment. ``source``: a folder
        holding another version's ``app`` package (see :func:`baseline_source`), served
        with this interpreter and its dependencies."""
        port = free_port()
        command = (
            [sys.executable, "-m", "app.cli"] if source is not None else token_broker_command()
        )
        return self.supervisor.start(
            name,
            [*command, "serve"],
            env={**self.broker_env(policy or self.policies.main, port), **(env or {})},
            port=port,
            cwd=source if source is not None else REPO_ROOT,
        )

    def start_redis(self) -> tuple[Child, str]:
        """A ``redis-server`` of the bench's own on a free port, without persistence;
        returns it and its URL (S8)."""
        executable = shutil.which("redis-server")
        if executable is None:
            raise HarnessError(
                "S8 needs redis-server (Debian/Ubuntu: apt-get install redis-server)"
            )
        port = free_port()
        child = self.supervisor.start(
            "redis",
            [executable, *redis_server_args(port)],
            port=port,
            cwd=self.work_dir,
        )
        deadline = time.perf_counter() + 10.0
        while not ping(port):
            if not child.running() or time.perf_counter() > deadline:
                raise HarnessError(
                    f"redis-server did not start; last log lines:\n{child.log_tail()}"
                )
            time.sleep(0.02)
        return child, f"redis://{LOOPBACK}:{port}/0"

    def start_broker(
        self,
        name: str = "broker",
        *,
        env: dict[str, str] | None = None,
        source: Path | None = None,
    ) -> Child:
        child = self.spawn_broker(name, env=env, source=source)
        wait_for_status(child, "/readyz")
        return child

    def main_broker(self) -> Child:
        if self.broker is None or not self.broker.running():
            self.broker = self.start_broker()
        return self.broker

    def baseline(self) -> tuple[str, Path]:
        """S1T's earlier version of the broker: (the ref, its unpacked source)."""
        ref = self.baseline_ref if self.baseline_ref is not None else default_baseline_ref()
        return ref, baseline_source(ref, self.work_dir)

    def restart_main_broker(self) -> Child:
        """A fresh process: empty token cache, empty session cache."""
        if self.broker is not None:
            self.supervisor.stop(self.broker)
        self.broker = self.start_broker()
        return self.broker

    def _start_reference(self, name: str, target: str, env: dict[str, str]) -> Child:
        port = free_port()
        child = self.supervisor.start(
            name,
            [
                sys.executable,
                "-m",
                "uvicorn",
                target,
                "--factory",
                "--host",
                LOOPBACK,
                "--port",
                str(port),
                *REFERENCE_UVICORN_FLAGS,
            ],
            env=env,
            port=port,
            cwd=REPO_ROOT,
        )
        wait_for_status(child, "/openapi.json")
        return child

    def floor(self) -> Child:
        if self._floor is None:
            self._floor = self._start_reference("floor", "bench.floor_app:create_app", {})
        return self._floor

    def naive(self) -> Child:
        if self._naive is None:
            self._naive = self._start_reference(
                "naive",
                "bench.naive_broker:create_app",
                {
                    "NAIVE_PUBLIC_KEY_FILE": str(self.public_key_path),
                    "NAIVE_ISSUER": ISSUER,
                    "NAIVE_AUDIENCE": AUDIENCE,
                    "NAIVE_VENDOR_URL": f"{self.sandbox.url}/embeddable/eu",
                    "NAIVE_API_KEY": SANDBOX_EU_API_KEY,
                    "NAIVE_EMBEDDABLE_ID": "c2b1a0de-0000-4000-8000-000000000001",
                },
            )
        return self._naive

    def stop_naive(self) -> None:
        """The naive broker keeps working through requests wrk gave up on (at 256
        connections, for minutes): stop it before it loads the machine for later
        scenarios."""
        if self._naive is not None:
            self.supervisor.stop(self._naive)
            self._naive = None

    def forwarder(self, transport: str = "aiohttp") -> Child:
        """S3/S9 context: bench/forwarder.py (one vendor call per request over the
        outbound client of ``transport``, none of the broker's work)."""
        found = self._forwarders.get(transport)
        if found is None:
            found = self._forwarders[transport] = self._start_reference(
                f"forwarder-{transport}",
                "bench.forwarder:create_app",
                {
                    "FORWARD_VENDOR_URL": (
                        f"{self.sandbox.url}/embeddable/eu/api/v1/security-token"
                    ),
                    "FORWARD_API_KEY": SANDBOX_EU_API_KEY,
                    "FORWARD_TRANSPORT": transport,
                },
            )
        return found

    def stop_forwarders(self) -> None:
        for child in self._forwarders.values():
            self.supervisor.stop(child)
        self._forwarders.clear()

    def restart_transport_broker(self, transport: str) -> Child:
        """A fresh broker (empty caches) whose outbound client is ``transport`` (S9)."""
        running = self._transport_brokers.pop(transport, None)
        if running is not None:
            self.supervisor.stop(running)
        port = free_port()
        child = self.supervisor.start(
            f"broker-{transport}",
            [sys.executable, "-m", "bench.transport_broker"],
            env={
                **self.broker_env(self.policies.main, port),
                "BENCH_OUTBOUND_TRANSPORT": transport,
            },
            port=port,
            cwd=REPO_ROOT,
        )
        wait_for_status(child, "/readyz")
        self._transport_brokers[transport] = child
        return child

    def transport_broker(self, transport: str) -> Child:
        found = self._transport_brokers.get(transport)
        return found if found is not None else self.restart_transport_broker(transport)

    def stop_transport_brokers(self) -> None:
        for child in self._transport_brokers.values():
            self.supervisor.stop(child)
        self._transport_brokers.clear()

    def set_vendor_latency(self, milliseconds: int) -> None:
        response = self.http.post(
            f"{self.sandbox.url}/_sandbox/faults",
            json={"vendor": "embeddable", "latency_ms": milliseconds},
        )
        response.raise_for_status()

    def clear_faults(self) -> None:
        self.http.delete(f"{self.sandbox.url}/_sandbox/faults").raise_for_status()

    def clear_vendor_requests(self) -> None:
        self.http.delete(f"{self.sandbox.url}/_sandbox/requests").raise_for_status()

    def vendor_calls_for(self, user: str) -> int:
        """How many token requests the sandbox's Embeddable received for ``user``."""
        response = self.http.get(
            f"{self.sandbox.url}/_sandbox/requests", params={"vendor": "embeddable"}
        )
        response.raise_for_status()
        return sum(
            1
            for entry in response.json()["requests"]
            if isinstance(entry.get("body"), dict) and entry["body"].get("user") == user
        )

    # --- the broker ---------------------------------------------------------------------

    def counts(self, child: Child) -> BrokerCounts:
        response = self.http.get(f"{child.url}/metrics")
        response.raise_for_status()
        return parse_counts(response.text)

    def request_token(self, url: str, session_token: str) -> httpx.Response:
        return self.http.post(
            f"{url}/v1/tokens",
            content=SESSION_BODY,
            headers={
                "Authorization": f"Bearer {session_token}",
                "Content-Type": "application/json",
            },
        )

    def expect_token(self, url: str, session_token: str, what: str) -> dict[str, Any]:
        response = self.request_token(url, session_token)
        if response.status_code != 200:
            raise HarnessError(f"{what}: POST /v1/tokens answered {response.status_code}")
        body: dict[str, Any] = response.json()
        if not body.get("token"):
            raise HarnessError(f"{what}: POST /v1/tokens answered 200 without a token")
        return body

    # --- tokens -------------------------------------------------------------------------

    def sessions(self, prefix: str, count: int) -> list[str]:
        users: list[Session] = [(f"{prefix}{n}", TENANT, ("viewer",)) for n in range(count)]
        return mint_sessions(self.keys, users)

    def session(self, user: str) -> str:
        return mint_sessions(self.keys, [(user, TENANT, ("viewer",))])[0]

    def token_file(self, name: str, tokens: Sequence[str]) -> Path:
        return _write_token_file(self.work_dir / "tokens" / f"{name}.txt", tokens)

    # --- wrk ----------------------------------------------------------------------------

    def static_run(
        self, child: Child, session_token: str, connections: int, *, warmup: bool = False
    ) -> wrk.WrkResult:
        """wrk posting one session's token request over ``connections`` for the profile's
        run length; with ``warmup``, for its warm-up length on one wrk thread."""
        return wrk.run(
            self.wrk,
            f"{child.url}/v1/tokens",
            "post_static.lua",
            [SESSION_BODY],
            connections=connections,
            duration_s=self.profile.warmup_s if warmup else self.profile.duration_s,
            threads=1 if warmup else self.profile.threads,
            headers=[f"Authorization: Bearer {session_token}"],
        )

    def rotating_run(
        self, child: Child, tokens: Path, connections: int, duration_s: float | None = None
    ) -> wrk.WrkResult:
        return wrk.run(
            self.wrk,
            f"{child.url}/v1/tokens",
            "rotate_sessions.lua",
            [str(tokens), SESSION_BODY],
            connections=connections,
            duration_s=duration_s if duration_s is not None else self.profile.duration_s,
            threads=self.profile.threads,
        )

    def alternate(
        self, first: Contender, second: Contender, warmup: Callable[[Contender], None]
    ) -> tuple[list[wrk.WrkResult], list[wrk.WrkResult]]:
        """A B A B ...: ``profile.pairs`` timed runs each, after one untimed warm-up each."""
        a_runs, b_runs = self.alternate_all((first, second), warmup)
        return a_runs, b_runs

    def alternate_all(
        self, contenders: Sequence[Contender], warmup: Callable[[Contender], None]
    ) -> list[list[wrk.WrkResult]]:
        """A B C A B C ...: ``profile.pairs`` rounds, after one untimed warm-up each."""
        if self.profile.warmup_s > 0:
            for contender in contenders:
                warmup(contender)
                wrk.pause()
        results: list[list[wrk.WrkResult]] = [[] for _ in contenders]
        for pair in range(self.profile.pairs):
            for side, contender in enumerate(contenders):
                if contender.prepare is not None:
                    contender.prepare()
                result = contender.run()
                results[side].append(result)
                self.log(
                    f"    {contender.name:<16} run {pair + 1}/{self.profile.pairs}: "
                    f"{result.rps:>9,.0f} req/s  p50 {result.latency_ms('p50'):7.2f} ms  "
                    f"p99 {result.latency_ms('p99'):7.2f} ms  errors {result.error_count}"
                )
                wrk.pause()
        return results


def cpu_seconds(child: Child) -> float:
    """User + system CPU time the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def default_baseline_ref() -> str:
    """The commit before tracing arrived (the parent of the one that added
    app/observability/tracing.py): "the code before" of the S1T row."""
    added = _git("log", "--diff-filter=A", "--format=%H", "--", "app/observability/tracing.py")
    commits = added.split()
    if not commits:
        raise HarnessError("no commit adds app/observability/tracing.py; pass --baseline-ref")
    return f"{commits[-1]}^"


def baseline_source(ref: str, work_dir: Path) -> Path:
    """``app/`` and ``clients/js/`` of ``ref``, unpacked once under ``work_dir``: another
    version of the broker that this interpreter's dependencies can serve."""
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}").strip()
    destination = work_dir / f"baseline-{commit[:12]}"
    if not (destination / "app" / "cli.py").is_file():
        destination.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, "app", "clients/js"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            raise HarnessError(f"git archive {commit[:12]} failed: {archive.stderr.decode()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(destination, filter="data")
    return destination


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise HarnessError(f"git is needed for the baseline of S1T: {exc}") from None
    if done.returncode != 0:
        raise HarnessError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def token_broker_command() -> list[str]:
    """The installed ``token-broker`` console script next to this interpreter."""
    script = Path(sys.executable).parent / "token-broker"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "app.cli"]


__all__ = [
    "EMBED",
    "PROFILES",
    "SESSION_BODY",
    "TENANT",
    "Bench",
    "BrokerCounts",
    "Contender",
    "Profile",
    "background_load",
    "baseline_source",
    "check_event_loop_stack",
    "cpu_seconds",
    "default_baseline_ref",
    "median",
    "parse_counts",
]
