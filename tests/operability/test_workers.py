"""``token-broker serve`` with several workers: metrics aggregate across them, and the
folder prometheus-client needs for that is gone after shutdown."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.policies import BASE_ENV, base_policy, write_policy
from tests.support.process import broker_process

pytestmark = pytest.mark.slow


def test_the_multiprocess_metrics_folder_is_removed_on_shutdown(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    path = write_policy(tmp_path, base_policy())
    with broker_process(
        path,
        tmp_path,
        {**BASE_ENV, "TMPDIR": str(temp)},
        extra_env={"BROKER_WORKERS": "2"},
        ready_timeout=120,  # two spawned workers import everything first
    ) as broker:
        folders = list(temp.glob("token-broker-metrics-*"))
        assert len(folders) == 1 and any(folders[0].iterdir())
        text = httpx.get(f"{broker.url}/metrics", timeout=10).text
        assert 'token_broker_sessions_rejected_total{reason="expired"} 0.0' in text
        assert "token_broker_build_info{" in text
        assert "token_broker_redis_available" not in text
        code = broker.stop(timeout=60)
    assert code == 0, broker.output()[-2000:]
    assert list(temp.iterdir()) == []
