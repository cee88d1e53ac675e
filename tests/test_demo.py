"""`make run` (token-broker demo): every printed curl command works as printed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

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
        deadline = time.monotonic() + 30
        while "Stop with Ctrl-C." not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
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
