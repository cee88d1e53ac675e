"""deploy/grafana/token-broker.json: a dashboard that imports cleanly, whose every PromQL
expression parses (promtool, each loaded as a recording rule) and names only metric
families the broker exports, as read from a live ``/metrics`` after requests through
the sandbox vendors, with Redis configured."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.promtool import promtool
from tests.deploy.support import REPO_ROOT
from tests.support import redis as redis_support
from tests.support.policies import base_policy
from tests.support.stack import running_stack, session_token

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "token-broker.json"
# What Grafana substitutes before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".*", "$provider": ".*", "$region": ".*"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
# The words of PromQL that are not metric names: keywords, grouping and set operators.
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "inf", "nan",
}  # fmt: skip
# What the dashboard must show (issue: tokens by outcome, cache hit ratio, vendor
# latency and errors per provider and region, circuit state, rejected sessions by
# reason, rate limiting, process memory).
REQUIRED_FAMILIES = {
    "token_broker_tokens_total",
    "token_broker_upstream_latency_seconds_bucket",
    "token_broker_upstream_requests_total",
    "token_broker_circuit_open",
    "token_broker_sessions_rejected_total",
    "token_broker_rate_limited_total",
    "process_resident_memory_bytes",
}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def substituted(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions or
    aggregations (followed by "("), label matchers ({...}), grouping labels
    (by/on (...)), durations ([...]), strings or PromQL keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names: set[str] = set()
    for match in re.finditer(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_WORDS or re.fullmatch(r"\d+\w*", word):
            continue
        names.add(word)
    return names


def exported_names(exposition: str) -> set[str]:
    """Every sample name /metrics can carry, including families that have no sample yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        suffixes = SUFFIXES.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    with redis_support.redis_url() as url:
        prefix = redis_support.unique_prefix()
        try:
            with running_stack(
                tmp_path_factory.mktemp("grafana"),
                base_policy(),
                redis_url=url,
                redis_key_prefix=prefix,
                cache_encryption_key="grafana-test-cache-key-of-32-bytes-or-more",
            ) as stack:
                assert stack.token("sales-overview").status_code == 200
                assert stack.token("sales-overview").status_code == 200  # a cache hit
                analyst = session_token(roles=["analyst"], org={"department": "ops"})
                assert stack.token("ops-dashboard", analyst).status_code == 200
                assert stack.token("sales-overview", "not-a-jwt").status_code == 401
                response = httpx.get(f"{stack.broker}/metrics", timeout=30)
                assert response.status_code == 200
                yield exported_names(response.text)
        finally:
            redis_support.delete_keys(url, prefix)


def test_dashboard_is_an_importable_grafana_model() -> None:
    model = dashboard()
    assert model["uid"] == "token-broker"
    assert model["schemaVersion"] >= 36
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def recording_rules(exprs: list[str]) -> dict[str, Any]:
    rules = [{"record": f"dashboard:expr_{n}", "expr": e} for n, e in enumerate(exprs)]
    return {"groups": [{"name": "dashboard", "rules": rules}]}


def test_every_expression_parses(tmp_path: Path) -> None:
    exprs = [substituted(e) for e in expressions()]
    rules = tmp_path / "dashboard-rules.yaml"
    rules.write_text(yaml.safe_dump(recording_rules(exprs)), encoding="utf-8")
    result = promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_a_broken_expression_is_caught(tmp_path: Path) -> None:
    rules = tmp_path / "broken.yaml"
    broken = substituted(expressions()[0]).replace(")", "", 1)
    rules.write_text(yaml.safe_dump(recording_rules([broken])), encoding="utf-8")
    assert promtool("check", "rules", rules).returncode != 0


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (provider, le) (rate(token_broker_upstream_latency_seconds_bucket{job=~".*",'
        ' status!~"2..|x"}[5m] offset 1h)) / on () group_left sum(process_resident_memory_bytes)'
    )
    assert metric_names(expr) == {
        "token_broker_upstream_latency_seconds_bucket",
        "process_resident_memory_bytes",
    }


def test_dashboard_shows_what_operators_need() -> None:
    shown = {name for expr in expressions() for name in metric_names(expr)}
    assert shown >= REQUIRED_FAMILIES, REQUIRED_FAMILIES - shown


@pytest.mark.slow
def test_every_metric_is_exported_by_a_live_broker(live_metrics: set[str]) -> None:
    missing: dict[str, list[str]] = {}
    for expr in expressions():
        names = metric_names(expr)
        assert names, expr
        for name in sorted(names - live_metrics):
            missing.setdefault(name, []).append(expr)
    assert not missing, f"not on a live /metrics: {missing}"
