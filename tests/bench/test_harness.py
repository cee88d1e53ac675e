"""Fast checks of the harness's parsing and its refusal to run without wrk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import parse_counts
from bench.procs import HarnessError
from bench.wrk import _parse

REPO_ROOT = Path(__file__).resolve().parents[2]

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:1/v1/tokens
  1 threads and 32 connections
BENCH_WRAPPED 2
BENCH_RESULT {"requests": 1200, "duration_us": 2000000, "bytes": 5, "errors": {"connect": 0, "read": 1, "write": 0, "status": 200, "timeout": 3}, "latency_us": {"mean": 5.0, "stdev": 1.0, "max": 9, "p50": 4000, "p75": 5, "p90": 6, "p99": 12000, "p999": 9}}
"""


def test_wrk_result_counts_only_successful_answers_as_throughput() -> None:
    result = _parse(WRK_OUTPUT, connections=32)
    assert result.ok_requests == 1000
    assert result.rps == 500.0
    assert result.error_count == 204
    assert result.wrapped == 2
    assert result.latency_ms("p50") == 4.0
    assert result.latency_ms("p99") == 12.0


def test_wrk_output_without_a_result_line_is_an_error() -> None:
    with pytest.raises(HarnessError, match="BENCH_RESULT"):
        _parse("unable to connect to 127.0.0.1:1 Connection refused\n", connections=1)


METRICS = """# HELP token_broker_tokens_total Token decisions.
# TYPE token_broker_tokens_total counter
token_broker_tokens_total{cache="hit",embed="sales-overview",outcome="ok",provider="embeddable"} 41.0
token_broker_tokens_total{cache="miss",embed="sales-overview",outcome="ok",provider="embeddable"} 2.0
token_broker_tokens_total{cache="none",embed="-",outcome="invalid_session",provider="-"} 3.0
token_broker_session_cache_total{result="miss"} 5.0
token_broker_session_cache_total{result="hit"} 40.0
"""


def test_broker_counts_are_read_from_metrics_and_subtracted() -> None:
    earlier = parse_counts(METRICS.replace(" 41.0", " 1.0"))
    later = parse_counts(METRICS)
    assert later.tokens_by_cache == {"hit": 41.0, "miss": 2.0}
    assert later.denied == 3.0
    assert later.session_cache == {"miss": 5.0, "hit": 40.0}
    assert later.minus(earlier).tokens_by_cache == {"hit": 40.0, "miss": 0.0}


def test_without_wrk_the_harness_says_how_to_install_it(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--output-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        env={**os.environ, "PATH": str(tmp_path)},  # no wrk on this PATH
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert "apt-get install wrk" in completed.stderr
    assert not (tmp_path / "RESULTS.md").exists()
