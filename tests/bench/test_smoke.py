"""The benchmark harness end to end, in its ``--smoke`` profile (1 s per run).

This checks the machinery, never the speed: every scenario runs and is reported in
RESULTS.md and results.json (written to a temp dir, so the committed bench/RESULTS.md
is left alone), and the count-based targets hold (S4, S7 and S8: exactly one vendor call).
Without wrk the test fails under CI (which installs it) and is skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.tools import require_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9")
COMMITTED_RESULTS = REPO_ROOT / "bench" / "RESULTS.md"

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(700)]


def _require_wrk() -> None:
    if shutil.which("wrk") is not None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("wrk is not installed; CI must install it (apt-get install -y wrk)")
    pytest.skip("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")


def _snapshot(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


class SmokeRun:
    def __init__(self, completed: subprocess.CompletedProcess[str], output_dir: Path) -> None:
        self.completed = completed
        self.output_dir = output_dir
        self.markdown = output_dir / "RESULTS.md"
        self.raw = output_dir / "results.json"

    def explain(self) -> str:
        return (
            f"exit {self.completed.returncode}\n--- stdout (tail)\n"
            f"{self.completed.stdout[-4000:]}\n--- stderr (tail)\n{self.completed.stderr[-4000:]}"
        )

    def document(self) -> dict[str, Any]:
        assert self.raw.is_file(), self.explain()
        document: dict[str, Any] = json.loads(self.raw.read_text())
        return document


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    _require_wrk()
    require_tool("redis-server")  # S8 starts its own
    output_dir = tmp_path_factory.mktemp("bench-results")
    work_dir = tmp_path_factory.mktemp("bench-work")
    committed_before = _snapshot(COMMITTED_RESULTS)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--smoke",
            "--output-dir",
            str(output_dir),
            "--work-dir",
            str(work_dir),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=640,
        check=False,
    )
    assert _snapshot(COMMITTED_RESULTS) == committed_before, (
        "the smoke run touched bench/RESULTS.md"
    )
    return SmokeRun(completed, output_dir)


def test_every_scenario_is_measured_and_reported(smoke_run: SmokeRun) -> None:
    # 0: every target met, 1: some missed (normal for 1 s runs); 2 would mean a scenario
    # could not be measured at all.
    assert smoke_run.completed.returncode in (0, 1), smoke_run.explain()
    document = smoke_run.document()
    assert tuple(document["scenarios"]) == SCENARIOS
    for name, scenario in document["scenarios"].items():
        assert scenario["status"] in ("pass", "fail"), (name, scenario.get("error"))
        assert scenario["rows"], name
    assert document["machine"]["cpu_count"] >= 1
    assert document["generated_at"].endswith("Z")
    assert document["profile"]["name"] == "smoke"
    markdown = smoke_run.markdown.read_text()
    assert "| scenario | broker | reference | ratio | target | result |" in markdown
    for name in SCENARIOS:
        assert f"\n| {name} " in markdown, name


def test_throughput_scenarios_compare_against_their_reference(smoke_run: SmokeRun) -> None:
    scenarios = smoke_run.document()["scenarios"]
    for name in ("S1", "S2"):
        runs = scenarios[name]["runs"]
        assert scenarios[name]["reference"] == "floor"
        assert len(runs["broker"]) == len(runs["floor"]) >= 1
        assert all(run["ok_requests"] > 0 for run in runs["broker"] + runs["floor"]), name
    s3_phases = scenarios["S3"]["phases"]
    assert set(s3_phases) == {"64", "256"}
    for phase in s3_phases.values():
        assert len(phase["broker"]["runs"]) == len(phase["forwarder"]["runs"]) >= 1
    assert len(s3_phases["256"]["naive"]["runs"]) >= 1
    # S3's reference: the bare forwarder answered (throughput counts 200s only).
    assert scenarios["S3"]["phases"]["64"]["forwarder"]["rps"] > 0
    # S9: every transport ran; the shipped one answered and its CPU per call was
    # counted (httpx's own may answer nothing within a 1 s smoke run on a busy machine).
    results = scenarios["S9"]["results"]
    assert set(results) == {
        f"{role}-{t}" for role in ("broker", "forwarder") for t in ("aiohttp", "httpx")
    }
    for name, measured in results.items():
        assert len(measured["runs"]) >= 1, name
    for name in ("broker-aiohttp", "forwarder-aiohttp"):
        assert results[name]["rps"] > 0, name
        assert 0 < results[name]["cpu_us_per_call"] < 1e6, name


def test_thundering_herd_makes_exactly_one_vendor_call(smoke_run: SmokeRun) -> None:
    herd = smoke_run.document()["scenarios"]["S4"]
    assert herd["vendor_calls"] == 1
    assert herd["statuses"] == {"200": 500}
    assert herd["distinct_tokens"] == 1
    assert herd["status"] == "pass"


def test_fleet_herd_makes_exactly_one_vendor_call_across_three_brokers(
    smoke_run: SmokeRun,
) -> None:
    herd = smoke_run.document()["scenarios"]["S8"]
    assert herd["vendor_calls"] == 1
    assert herd["statuses"] == {"200": 300}
    assert herd["distinct_tokens"] == 1
    assert herd["fleet_roles"]["leader"] == 1
    assert herd["status"] == "pass"


def test_repeat_page_loads_make_exactly_one_vendor_call(smoke_run: SmokeRun) -> None:
    repeat = smoke_run.document()["scenarios"]["S7"]
    assert repeat["vendor_calls"] == 1
    assert repeat["statuses"] == {"200": 1000}
    assert repeat["status"] == "pass"


def test_memory_scenario_fills_the_cache_and_samples_rss(smoke_run: SmokeRun) -> None:
    memory = smoke_run.document()["scenarios"]["S5"]
    assert memory["tokens_minted_by_fill"] >= memory["tokens_filled"] > 0
    assert memory["rss_mb"]["filled"] > 0
    assert memory["soak_rss_samples_mb"]


def test_tracing_row_compares_before_off_and_on_in_one_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # S1T is asked for by name; HEAD as "before" needs no particular history.
    _require_wrk()
    output_dir = tmp_path_factory.mktemp("bench-s1t")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--smoke",
            "--scenarios",
            "S1T",
            "--baseline-ref",
            "HEAD",
            "--output-dir",
            str(output_dir),
            "--work-dir",
            str(tmp_path_factory.mktemp("bench-s1t-work")),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    run = SmokeRun(completed, output_dir)
    assert completed.returncode in (0, 1), run.explain()
    tracing = run.document()["scenarios"]["S1T"]
    assert tracing["status"] in ("pass", "fail"), tracing.get("error")
    assert tracing["baseline_ref"] == "HEAD"
    assert [row["scenario"].split(" (")[0] for row in tracing["rows"]] == [
        "S1T tracing off vs before tracing",
        "S1T tracing on vs off",
        "S1T tracing on, 1 in 10 sampled, vs off",
    ]
    runs = tracing["runs"]
    assert set(runs) == {"before", "off", "on", "on-10%"}
    assert len({len(measured) for measured in runs.values()}) == 1
    assert all(r["ok_requests"] > 0 for measured in runs.values() for r in measured)
    assert tracing["otlp_received"]["exports"] > 0  # on really traced and exported
