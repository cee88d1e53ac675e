"""Running ``wrk`` and reading what the Lua scripts in bench/lua/ print.

Every script's ``done`` prints one ``BENCH_RESULT {json}`` line (see lua/common.lua), so
nothing depends on wrk's human-readable output format.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import HarnessError

LUA_DIR = Path(__file__).resolve().parent / "lua"
INSTALL_HINT = (
    "wrk is not installed; the benchmark drives every system with it.\n"
    "  Debian/Ubuntu: sudo apt-get install wrk\n"
    "  Fedora:        sudo dnf install wrk\n"
    "  macOS:         brew install wrk\n"
    "Then run `make bench` again."
)
_RESULT = "BENCH_RESULT "
_WRAPPED = "BENCH_WRAPPED "
_THREAD_DONE = "BENCH_THREAD_DONE"


def find_wrk() -> str | None:
    return shutil.which("wrk")


def wrk_version(executable: str) -> str:
    completed = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    first = (completed.stdout or completed.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "unknown"


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]
    latency_us: dict[str, float]
    wrapped: int | None
    connections: int

    @property
    def ok_requests(self) -> int:
        """Requests answered 2xx/3xx (wrk counts 4xx/5xx as ``status`` errors)."""
        return self.requests - self.errors.get("status", 0)

    @property
    def rps(self) -> float:
        """Successful requests per second: an error answer is not throughput."""
        return self.ok_requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def latency_ms(self, key: str) -> float:
        return self.latency_us[key] / 1000

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok_requests": self.ok_requests,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "connections": self.connections,
            "errors": self.errors,
            "latency_ms": {k: round(v / 1000, 3) for k, v in self.latency_us.items()},
            **({"wrapped": self.wrapped} if self.wrapped is not None else {}),
        }


def _command(
    executable: str,
    url: str,
    script: str,
    script_args: Sequence[str],
    *,
    connections: int,
    duration_s: float,
    threads: int,
    headers: Sequence[str],
    timeout_s: float,
) -> list[str]:
    threads = max(1, min(threads, connections))
    argv = [
        executable,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(LUA_DIR / script),
    ]
    for header in headers:
        argv += ["-H", header]
    return [*argv, url, "--", *script_args]


def _parse(output: str, connections: int) -> WrkResult:
    result: dict[str, Any] | None = None
    wrapped: int | None = None
    for line in output.splitlines():
        if line.startswith(_RESULT):
            result = json.loads(line[len(_RESULT) :])
        elif line.startswith(_WRAPPED):
            wrapped = int(line[len(_WRAPPED) :])
    if result is None:
        raise HarnessError(f"wrk printed no BENCH_RESULT line; its output:\n{output[-2000:]}")
    return WrkResult(
        requests=int(result["requests"]),
        duration_s=int(result["duration_us"]) / 1e6,
        errors={k: int(v) for k, v in result["errors"].items()},
        latency_us={k: float(v) for k, v in result["latency_us"].items()},
        wrapped=wrapped,
        connections=connections,
    )


def run(
    executable: str,
    url: str,
    script: str,
    script_args: Sequence[str] = (),
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
    headers: Sequence[str] = (),
    timeout_s: float = 10.0,
) -> WrkResult:
    """One timed wrk run (whole seconds: wrk's ``-d`` has one-second resolution)."""
    argv = _command(
        executable,
        url,
        script,
        script_args,
        connections=connections,
        duration_s=duration_s,
        threads=threads,
        headers=headers,
        timeout_s=timeout_s,
    )
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False
    )
    if completed.returncode != 0:
        raise HarnessError(f"wrk failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return _parse(completed.stdout, connections)


def run_until_done(
    executable: str,
    url: str,
    script: str,
    script_args: Sequence[str],
    *,
    connections: int,
    threads: int,
    max_duration_s: float,
    timeout_s: float = 10.0,
) -> WrkResult:
    """Run a script that prints BENCH_THREAD_DONE per thread when its work is done.

    wrk only ends at its ``-d`` deadline, so the harness interrupts it (SIGINT, which
    wrk handles by reporting and exiting) once every thread has said it is done.
    """
    threads = max(1, min(threads, connections))
    argv = _command(
        executable,
        url,
        script,
        script_args,
        connections=connections,
        duration_s=max_duration_s,
        threads=threads,
        headers=(),
        timeout_s=timeout_s,
    )
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    lines: list[str] = []
    finished = 0
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.strip() == _THREAD_DONE:
                finished += 1
                if finished == threads:
                    process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read() if process.stderr else ""
    if finished < threads:
        raise HarnessError(
            f"wrk ended before its work was done ({finished}/{threads} threads): {stderr[-2000:]}"
        )
    return _parse("".join(lines), connections)


def pause(seconds: float = 0.3) -> None:
    """Between runs: let sockets in TIME_WAIT and the previous system's work settle."""
    time.sleep(seconds)
