"""Broker processes and the sandbox for the end-to-end tests.

:func:`broker_processes` starts ``token-broker serve`` subprocesses (``python -m app.cli
serve``) on free loopback ports, all on one policy file and one environment, and always
stops them (SIGTERM, then SIGKILL). Their JSON logs go to a file per process, so a test
can read what a broker logged and a failure can show it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.support.eventually import eventually
from tests.support.servers import LOOPBACK, free_port
from tests.support.stack import bearer, sandbox_env, serving_sandbox, session_token

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
ENCRYPTION_KEY = "integration-cache-encryption-key-0123456789"  # >= 32 bytes


@dataclass
class BrokerProcess:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines of this process whose ``event`` is ``event``."""
        found = []
        for line in self.log_path.read_bytes().splitlines():
            if not line.startswith(b"{"):
                continue
            entry = orjson.loads(line)
            if entry.get("event") == event:
                found.append(entry)
        return found

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Sandbox:
    url: str
    client: httpx.Client

    def requests(self, vendor: str | None = None) -> list[dict[str, Any]]:
        params = {"vendor": vendor} if vendor else {}
        response = self.client.get(f"{self.url}/_sandbox/requests", params=params)
        response.raise_for_status()
        return list(response.json()["requests"])

    def calls_for(self, user: str) -> int:
        """Vendor calls the sandbox received on behalf of ``user`` (Embeddable bodies)."""
        return sum(1 for call in self.requests() if (call["body"] or {}).get("user") == user)

    def clear(self) -> None:
        self.client.delete(f"{self.url}/_sandbox/requests").raise_for_status()
        self.client.delete(f"{self.url}/_sandbox/faults").raise_for_status()


@contextlib.contextmanager
def running_sandbox() -> Iterator[Sandbox]:
    with (
        serving_sandbox() as url,
        httpx.Client(timeout=30) as client,
    ):
        yield Sandbox(url=url, client=client)


def broker_environment(sandbox_url: str, **settings: str) -> dict[str, str]:
    """The process environment: this one without any ``BROKER_*``, plus the policy's."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("BROKER_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    return {
        **inherited,
        **sandbox_env(sandbox_url),
        "BROKER_LOG_LEVEL": "info",
        "BROKER_ACCESS_LOG": "false",
        "BROKER_RELOAD_INTERVAL_SECONDS": "0",
        "BROKER_SHUTDOWN_TIMEOUT_SECONDS": "2",
        **{f"BROKER_{key.upper()}": value for key, value in settings.items()},
    }


@contextlib.contextmanager
def broker_processes(
    names: tuple[str, ...], policy: Path, environment: Mapping[str, str], log_dir: Path
) -> Iterator[dict[str, BrokerProcess]]:
    """Start one ``token-broker serve`` per name (in parallel); stop them all at exit."""
    brokers: dict[str, BrokerProcess] = {}
    try:
        for name in names:
            port = free_port()
            log_path = log_dir / f"broker-{name}.log"
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "app.cli",
                        "serve",
                        "--config",
                        str(policy),
                        "--host",
                        LOOPBACK,
                        "--port",
                        str(port),
                    ],
                    cwd=REPO_ROOT,
                    env=dict(environment),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            brokers[name] = BrokerProcess(name, f"http://{LOOPBACK}:{port}", process, log_path)
        for broker in brokers.values():
            _wait_until_serving(broker)
        yield brokers
    finally:
        _stop_all([broker.process for broker in brokers.values()])


def _wait_until_serving(broker: BrokerProcess) -> None:
    with httpx.Client(timeout=2) as client:

        def serving() -> bool:
            if broker.process.poll() is not None:
                raise RuntimeError(
                    f"broker {broker.name} exited with {broker.process.returncode}:\n"
                    + broker.log_tail()
                )
            with contextlib.suppress(httpx.TransportError):
                return client.get(f"{broker.url}/healthz").status_code == 200
            return False

        eventually(serving, timeout=STARTUP_TIMEOUT_SECONDS, what=f"broker {broker.name} serves")


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to all first (they drain in parallel), then SIGKILL whoever lingers."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_SECONDS)


def ask_token(
    client: httpx.Client, broker: BrokerProcess | str, user: str, tenant: str = "acme"
) -> httpx.Response:
    """``POST /v1/tokens`` for ``sales-overview`` as ``user`` (a viewer of ``tenant``)."""
    url = broker.url if isinstance(broker, BrokerProcess) else broker
    return client.post(
        f"{url}/v1/tokens",
        json={"embed": "sales-overview"},
        headers=bearer(session_token(user, tenant, ("viewer",))),
    )


def metric_value(metrics_text: str, name: str) -> float | None:
    """The value of an unlabelled sample in Prometheus text exposition, if present."""
    for line in metrics_text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if sample == name:
            return float(value)
    return None


def unique_user(prefix: str = "user") -> str:
    return f"{prefix}-{time.monotonic_ns()}"
