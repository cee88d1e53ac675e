"""deploy/prometheus: the alert rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``), every alert has a case that fires and one that stays quiet,
and the unit tests are sharp enough to catch a broken rule."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.observability.metrics import NAMESPACE
from tests.deploy.promtool import promtool
from tests.deploy.support import REPO_ROOT, load_yaml

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yaml"
RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yaml"
SEVERITIES = {"critical", "warning", "info"}
METRIC_NAME = re.compile(r"\b(token_broker_[a-z_]+)")


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def rule_checks() -> list[dict[str, Any]]:
    return [check for test in load_yaml(RULE_TESTS)["tests"] for check in test["alert_rule_test"]]


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    fired = {c["alertname"] for c in rule_checks() if c["exp_alerts"]}
    quiet = {c["alertname"] for c in rule_checks() if not c["exp_alerts"]}
    assert names == fired, f"no firing case: {names - fired}"
    assert names == quiet, f"no quiet case: {names - quiet}"


def test_rules_name_only_broker_metrics_and_bounded_labels() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        for metric in METRIC_NAME.findall(rule["expr"]):
            assert metric.startswith(f"{NAMESPACE}_"), metric
        # No per-user or per-tenant grouping: those labels do not exist (unbounded).
        assert not re.search(r"\b(user|tenant|user_id|tenant_id)\b", rule["expr"]), rule["alert"]


def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The same unit tests against a rule file whose vendor-error threshold is 50%:
    the 14% error series no longer fires, so promtool must report the failure."""
    broken = RULES.read_text(encoding="utf-8").replace(") > 0.05", ") > 0.5", 1)
    assert broken != RULES.read_text(encoding="utf-8")
    (tmp_path / RULES.name).write_text(broken, encoding="utf-8")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "TokenBrokerVendorErrors" in result.stdout + result.stderr


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule["alert"]))
def test_annotations_carry_no_value_placeholders(rule: dict[str, Any]) -> None:
    # Only {{ $labels.* }}: a rendered value would make the unit tests brittle, and
    # the labels already say what and where.
    for text in rule["annotations"].values():
        assert "$value" not in text
