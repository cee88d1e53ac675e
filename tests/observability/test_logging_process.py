"""Logs of a real ``token-broker serve`` process, in both formats: access lines, audit
events, errors and start-up failures; log forging; a stdout nobody reads."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.observability.logging import (
    MAX_BATCH_LINES,
    MAX_QUEUED_LINES,
    STOP_TIMEOUT_SECONDS,
    LogFormat,
)
from tests.support.eventually import eventually
from tests.support.policies import base_policy, write_policy
from tests.support.process import ROOT, SERVE, BrokerProcess, broker_process, serve_environment
from tests.support.servers import LOOPBACK, free_port
from tests.support.stack import bearer, sandbox_env, serving_sandbox, session_token

pytestmark = pytest.mark.slow

FORGED_EMBED = "sales\n2026-01-01T00:00:00.000Z INFO    token.issued tenant=victim"
CONSOLE_LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S"
)
OK_STATUS_LINE = b"HTTP/1.1 200 "
SHUTDOWN_SECONDS = 10  # the broker's default drain


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    with serving_sandbox() as url:
        yield url


def ask(broker: BrokerProcess, embed: str, request_id: str) -> httpx.Response:
    return httpx.post(
        f"{broker.url}/v1/tokens",
        json={"embed": embed},
        headers={
            **bearer(session_token("logged", "acme", ("analyst",))),
            "X-Request-ID": request_id,
        },
        timeout=30,
    )


def entries(output: str, log_format: LogFormat) -> list[str]:
    """Every line of the output is an entry of the format (a console traceback line is
    indented under its entry)."""
    lines = output.splitlines()
    assert lines
    for line in lines:
        if log_format == "json":
            assert isinstance(json.loads(line), dict), line
        else:
            assert CONSOLE_LINE.match(line) or line.startswith("    "), line
    return lines


def find(lines: list[str], log_format: LogFormat, event: str, **fields: object) -> str:
    for line in lines:
        if log_format == "json":
            entry = json.loads(line)
            if entry["event"] == event and all(entry.get(k) == v for k, v in fields.items()):
                return line
        elif f" {event} " in f"{line} " and all(
            f"{k}={v}" in line or f'{k}="{v}"' in line for k, v in fields.items()
        ):
            return line
    raise AssertionError(f"no {event} {fields} line in:\n" + "\n".join(lines))


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_access_lines_audit_events_and_errors_in_each_format(
    tmp_path: Path, sandbox: str, log_format: LogFormat
) -> None:
    path = write_policy(tmp_path, base_policy())
    with broker_process(
        path, tmp_path, sandbox_env(sandbox), extra_env={"BROKER_LOG_FORMAT": log_format}
    ) as broker:
        assert ask(broker, "sales-overview", "req-log-1").status_code == 200
        assert ask(broker, FORGED_EMBED, "req-log-2").status_code in (403, 404)
        path.write_text("version: [\n")  # an error: the reload fails, the policy stays
        broker.signal(signal.SIGHUP)
        eventually(lambda: "config.reload_failed" in broker.output(), what="reload error")
        assert broker.stop() == 0
    output = broker.output()
    assert "Logging error" not in output  # the console access formatter used to raise
    assert "Traceback" not in output
    lines = entries(output, log_format)
    find(lines, log_format, "broker.started")
    find(lines, log_format, "token.issued", request_id="req-log-1", tenant="acme")
    find(lines, log_format, "http.access", request_id="req-log-1", status=200)
    denied = find(lines, log_format, "token.denied", request_id="req-log-2")
    if log_format == "json":
        assert json.loads(denied)["embed"] == FORGED_EMBED
    else:
        assert 'embed="sales\\n2026-01-01T00:00:00.000Z INFO    token.issued' in denied
    # Log forging: the embed's newline did not start a line of its own.
    assert not any(line.startswith("2026-01-01T00:00:00.000Z") for line in lines)
    error = find(lines, log_format, "config.reload_failed")
    assert ("ERROR" in error) if log_format == "console" else json.loads(error)["level"] == "error"
    find(lines, log_format, "broker.stopped")


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_start_up_failure_is_one_line_in_either_format(
    tmp_path: Path, log_format: LogFormat
) -> None:
    """A busy port is found before the server starts: one line on stderr naming the
    setting, the same in both formats, never a traceback or a logging error."""
    path = write_policy(tmp_path, base_policy())
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**sandbox_env("http://127.0.0.1:9"), "BROKER_LOG_FORMAT": log_format}
        finished = subprocess.run(
            SERVE,
            cwd=ROOT,
            env=serve_environment(path, port, env),
            capture_output=True,
            timeout=60,
        )
    assert finished.returncode == 1
    stderr = finished.stderr.decode()
    assert stderr.splitlines() == [
        f"token-broker: port {port} on {LOOPBACK} is already in use;"
        " choose another with --port N (BROKER_PORT)"
    ]
    assert "Traceback" not in stderr + finished.stdout.decode()
    assert "Logging error" not in stderr


def test_stdout_nobody_reads_neither_grows_memory_nor_hangs_shutdown(
    tmp_path: Path, sandbox: str
) -> None:
    """Lines beyond the bounded queue are dropped and counted, and SIGTERM still exits
    in time. Memory is proven bounded by counting: every line not dropped is in the
    pipe (at most 64 KiB of lines of at least 100 bytes), in the queue or in the
    writer's one batch."""
    path = write_policy(tmp_path, base_policy())
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    process = subprocess.Popen(
        SERVE,
        cwd=ROOT,
        env=serve_environment(path, port, sandbox_env(sandbox)),
        stdout=subprocess.PIPE,  # never read
        stderr=subprocess.DEVNULL,
    )
    try:
        eventually(lambda: _ready(url), timeout=30, what="the broker answers /readyz")
        requests = MAX_QUEUED_LINES + 1500  # one access line each
        _hit(port, "/healthz", requests, connections=4)
        dropped = _metric(url, "token_broker_log_lines_dropped_total")
        held_at_most = MAX_QUEUED_LINES + MAX_BATCH_LINES + 65536 // 100
        assert dropped >= requests - held_at_most
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert process.wait(timeout=SHUTDOWN_SECONDS + STOP_TIMEOUT_SECONDS + 10) == 0
        assert time.monotonic() - started < SHUTDOWN_SECONDS + STOP_TIMEOUT_SECONDS + 10
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _hit(port: int, path: str, count: int, connections: int) -> None:
    """``count`` GETs, pipelined over a few raw connections (an HTTP client library
    would spend more time than the broker does)."""
    request = f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode()
    errors: list[BaseException] = []

    def run(share: int) -> None:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=60) as sock:
                sock.sendall(request * share)
                answered = 0
                tail = b""  # shorter than the marker: never counted twice
                while answered < share:
                    chunk = sock.recv(1 << 16)
                    assert chunk, "the broker closed the connection"
                    data = tail + chunk
                    answered += data.count(OK_STATUS_LINE)
                    tail = data[-(len(OK_STATUS_LINE) - 1) :]
        except BaseException as exc:
            errors.append(exc)

    workers = [
        threading.Thread(target=run, args=(count // connections,)) for _ in range(connections)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exposed")
