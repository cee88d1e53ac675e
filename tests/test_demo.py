"""`make run` (token-broker demo): every printed curl command works as printed."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.eventually import eventually
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_prints_working_curl_commands(tmp_path: Path) -> None:
    broker_port, sandbox_port = free_port(), free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "demo",
                "--port",
                str(broker_port),
                "--sandbox-port",
                str(sandbox_port),
            ],
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "SANDBOX_"))},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:

        def printed_its_commands() -> bool:
            assert process.poll() is None, log.read_text()
            return "Stop with Ctrl-C." in log.read_text()

        eventually(printed_its_commands, timeout=30, what="the demo's commands")
        assert f"http://127.0.0.1:{broker_port}/demo/" in log.read_text()  # the demo page
        commands = [line for line in log.read_text().splitlines() if line.startswith("curl ")]
        assert len(commands) == 4
        seen = set()
        for command in commands:
            words = shlex.split(command)
            url = next(w for w in words if w.startswith("http://"))
            headers = dict(words[i + 1].split(": ", 1) for i, w in enumerate(words) if w == "-H")
            body = words[words.index("-d") + 1]
            response = httpx.post(url, content=body, headers=headers, timeout=10)
            assert response.status_code == 200, response.text
            answer = response.json()
            seen.add((answer["tenant"], answer["provider"]))
            assert re.fullmatch(r"[\w.-]+", answer["token"])
        assert seen == {
            ("acme", "embeddable"),
            ("acme", "databrain"),
            ("globex", "embeddable"),
            ("globex", "databrain"),
        }
        recorded = httpx.get(f"http://127.0.0.1:{sandbox_port}/_sandbox/requests").json()[
            "requests"
        ]
        assert {(r["vendor"], r["region"]) for r in recorded} >= {
            ("embeddable", "eu"),
            ("embeddable", "us"),
        }
    finally:
        process.terminate()
        process.wait(timeout=15)


def _read_until(log: Path, process: subprocess.Popen[bytes], needle: str, count: int = 1) -> str:
    def printed() -> bool:
        assert process.poll() is None, log.read_text()
        return log.read_text().count(needle) >= count

    eventually(printed, timeout=30, what=f"{count} x {needle!r} in the demo's output")
    return log.read_text()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "SANDBOX_"))}


@pytest.mark.slow
def test_demo_echoes_each_decision_as_one_readable_line(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "demo", "--port", "0", "--sandbox-port", "0"],
            cwd=ROOT,
            env=_clean_env(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        text = _read_until(log, process, "Stop with Ctrl-C.")
        broker = re.search(r"Broker:\s+(http://127\.0\.0\.1:\d+)", text)
        assert broker is not None, text
        url = broker.group(1)
        command = next(line for line in text.splitlines() if line.startswith("curl "))
        words = shlex.split(command)
        headers = dict(words[i + 1].split(": ", 1) for i, w in enumerate(words) if w == "-H")
        assert (
            httpx.post(
                f"{url}/v1/tokens", json={"embed": "sales-overview"}, headers=headers
            ).status_code
            == 200
        )
        assert (
            httpx.post(
                f"{url}/v1/tokens", json={"embed": "sales-overview"}, headers=headers
            ).status_code
            == 200
        )
        forged = "x\n12:00:00  issued   ops-dashboard for mallory@acme"
        assert (
            httpx.post(f"{url}/v1/tokens", json={"embed": forged}, headers=headers).status_code
            == 403
        )
        assert (
            httpx.post(
                f"{url}/v1/tokens",
                json={"embed": "sales-overview"},
                headers={"Authorization": "Bearer nope"},
            ).status_code
            == 401
        )
        text = _read_until(log, process, "rejected a session credential")
        lines = text.split("Stop with Ctrl-C.", 1)[1].splitlines()
        decisions = [line for line in lines if re.match(r"\d\d:\d\d:\d\d  ", line)]
        assert len(decisions) == 4, lines
        issued, again, denied, rejected = decisions
        assert re.fullmatch(
            r"\d\d:\d\d:\d\d  issued   sales-overview for alice@acme via embeddable eu "
            r"\(cache miss, vendor 200, \d+ ms\)",
            issued,
        ), issued
        assert "issued   sales-overview for alice@acme" in again and "(cache hit," in again
        assert (
            "denied   x\\n12:00:00  issued   ops-dashboard for mallory@acme for alice@acme: embed_not_allowed"
            in denied
        )
        assert rejected.endswith(
            "rejected a session credential: malformed (session token must have exactly three segments (a signed JWT))"
        )
        assert not [line for line in lines if line.startswith("12:00:00")]  # nothing forged
        assert not any("eyJ" in line for line in decisions)  # never a token
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.mark.parametrize(
    ("flag", "variable"), [("--port", "PORT"), ("--sandbox-port", "SANDBOX_PORT")]
)
def test_a_busy_port_is_one_line_naming_the_flag(flag: str, variable: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = "--sandbox-port" if flag == "--port" else "--port"
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "demo", flag, str(port), other, "0"],
            cwd=ROOT,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line == (
        f"token-broker: port {port} is already in use; choose another with {flag} N "
        f"(make run {variable}=N)"
    )


def test_make_run_passes_the_ports() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "run", "PORT=9181", "SANDBOX_PORT=9191"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "token-broker demo --port 9181 --sandbox-port 9191" in result.stdout
