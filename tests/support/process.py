"""``token-broker serve`` as a real child process, with its output captured to a file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.eventually import eventually
from tests.support.servers import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parents[2]
SERVE = (sys.executable, "-m", "app.cli", "serve")
"""``token-broker serve`` as the console script runs it (from :data:`ROOT`)."""


def serve_environment(config: Path, port: int, env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a ``token-broker serve`` child on ``port``: this process's
    without ``BROKER_*`` settings or ``PROMETHEUS_*`` (prometheus-client's multiprocess
    folder): the shell that runs the tests must not change what they start. Then
    ``env``, then the policy file and the loopback address."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BROKER_", "PROMETHEUS_"))
    }
    return {
        **inherited,
        **env,
        "BROKER_CONFIG": str(config),
        "BROKER_HOST": LOOPBACK,
        "BROKER_PORT": str(port),
    }


@dataclass
class BrokerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=5)


def wait_ready(
    url: str,
    process: subprocess.Popen[bytes],
    log_path: Path,
    timeout: float = 60,
    ready_path: str = "/readyz",
) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(
                f"broker exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"{url}{ready_path}", timeout=1).status_code == 200
        return False

    eventually(ready, timeout=timeout, what=f"{url}{ready_path} answers 200")


@contextlib.contextmanager
def broker_process(
    config: Path,
    log_dir: Path,
    env: Mapping[str, str],
    *,
    extra_env: Mapping[str, str] | None = None,
    ready_path: str = "/readyz",
    ready_timeout: float = 90,
) -> Iterator[BrokerProcess]:
    """``token-broker serve`` on ``config`` with ``env`` (then ``extra_env``), JSON logs
    at level info in ``log_dir``; ready when ``ready_path`` answers 200; stopped at exit
    (a test may stop it earlier to see its exit code)."""
    port = free_port()
    log_path = log_dir / f"broker-{port}.log"
    environment = {
        **serve_environment(config, port, env),
        "BROKER_LOG_LEVEL": "info",
        "BROKER_LOG_FORMAT": "json",
        **(extra_env or {}),
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            SERVE,
            cwd=ROOT,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    broker = BrokerProcess(url=f"http://{LOOPBACK}:{port}", process=process, log_path=log_path)
    try:
        # Generous: spawned workers import everything first, slowly on a loaded machine.
        wait_ready(broker.url, process, log_path, timeout=ready_timeout, ready_path=ready_path)
        yield broker
    finally:
        broker.stop()
