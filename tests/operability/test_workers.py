"""``token-broker serve`` with several workers: metrics aggregate across them, and the
folder prometheus-client needs for that is gone after shutdown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.policies import BASE_ENV, base_policy, write_policy
from tests.support.process import ROOT, BrokerProcess, wait_ready
from tests.support.servers import LOOPBACK, free_port

pytestmark = pytest.mark.slow


def test_the_multiprocess_metrics_folder_is_removed_on_shutdown(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    path = write_policy(tmp_path, base_policy())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "PROMETHEUS_"))}
    env.update(BASE_ENV)
    env.update(
        BROKER_CONFIG=str(path),
        BROKER_HOST=LOOPBACK,
        BROKER_PORT=str(port),
        BROKER_WORKERS="2",
        TMPDIR=str(temp),
    )
    log_path = tmp_path / "broker.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    broker = BrokerProcess(url=f"http://{LOOPBACK}:{port}", process=process, log_path=log_path)
    try:
        # Spawned workers import everything first: slow on a loaded machine.
        wait_ready(broker.url, process, log_path, timeout=120)
        folders = list(temp.glob("token-broker-metrics-*"))
        assert len(folders) == 1 and any(folders[0].iterdir())
        text = httpx.get(f"{broker.url}/metrics", timeout=10).text
        assert 'token_broker_sessions_rejected_total{reason="expired"} 0.0' in text
        assert "token_broker_build_info{" in text
        assert "token_broker_redis_available" not in text
    finally:
        code = broker.stop(timeout=60)
    assert code == 0, broker.output()[-2000:]
    assert list(temp.iterdir()) == []
