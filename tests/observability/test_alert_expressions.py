"""The alert expressions the README and docs/operations.md recommend are correct from
start-up: every selector matches a series a freshly started broker already exports
(so ``rate()`` sees the first event), and the Redis alert has nothing to match without
Redis (so it cannot fire on a sidecar)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.observability.metrics import Metrics
from tests.support.policies import base_policy
from tests.support.stack import running_stack

ROOT = Path(__file__).resolve().parents[2]
SELECTOR = re.compile(r"(token_broker_\w+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')

Series = list[tuple[str, dict[str, str]]]


def recommended_expressions() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    operating = readme[readme.index("## Operating") :]
    operating = operating[: operating.index("\n## ", 1)]
    docs = (ROOT / "docs" / "operations.md").read_text()
    alerts = docs[docs.index("## Alerts") :]
    alerts = alerts[: alerts.index("\n## ", 1)]
    found = []
    for text in (operating, alerts):
        for span in re.findall(r"`([^`]+)`", text):
            span = span.replace("\\|", "|")  # escaped pipes inside Markdown tables
            if "token_broker_" in span and re.search(r"(==|>|<)", span):
                found.append(span)
    return found


def series_of(text: str) -> Series:
    return [
        (sample.name, dict(sample.labels))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def matches(labels: dict[str, str], matchers: str | None) -> bool:
    for name, op, wanted in MATCHER.findall(matchers or ""):
        have = labels.get(name, "")
        if op == "=" and have != wanted:
            return False
        if op == "!=" and have == wanted:
            return False
        if op == "=~" and not re.fullmatch(wanted, have):
            return False
        if op == "!~" and re.fullmatch(wanted, have):
            return False
    return True


def selected(series: Series, metric: str, matchers: str | None) -> Series:
    names = {metric, f"{metric}_total", f"{metric}_count"}
    return [
        (name, labels) for name, labels in series if name in names and matches(labels, matchers)
    ]


@pytest.fixture(scope="module")
def fresh_series(tmp_path_factory: pytest.TempPathFactory) -> Series:
    with running_stack(tmp_path_factory.mktemp("alerts"), base_policy()) as stack:
        return series_of(stack.client.get(f"{stack.broker}/metrics").text)


def test_there_are_recommended_alerts() -> None:
    expressions = recommended_expressions()
    assert len(expressions) >= 5
    assert any("sessions_rejected_total" in e for e in expressions)


@pytest.mark.parametrize("expression", recommended_expressions())
def test_each_selector_matches_from_start_up(fresh_series: Series, expression: str) -> None:
    assert expression.count("(") == expression.count(")"), expression
    assert expression.count("{") == expression.count("}"), expression
    for metric, matchers in SELECTOR.findall(expression):
        for name, _, _ in MATCHER.findall(matchers):
            assert name.isidentifier()
        if metric == "token_broker_redis_available":
            # Without Redis: absent, so `== 0` can never fire. With Redis: present.
            assert not selected(fresh_series, metric, matchers), expression
            with_redis = series_of(generate_latest(Metrics.create(redis=True).registry).decode())
            assert selected(with_redis, metric, matchers), expression
            continue
        assert selected(fresh_series, metric, matchers), (expression, metric, matchers)


def test_the_old_redis_alert_would_have_fired_without_redis() -> None:
    """The README used to recommend ``redis_available == 0``; today's gauge is absent."""
    text = generate_latest(Metrics.create().registry).decode()
    assert "token_broker_redis_available" not in text
