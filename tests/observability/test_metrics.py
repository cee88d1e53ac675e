"""What ``/metrics`` shows from the first scrape (operations.md "Observability"):
pre-created label sets, no Redis gauge without Redis, no ``_created`` series,
``process_*`` and ``build_info``, embed names only when the operator opts in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.observability.metrics import Metrics
from app.version import package_version
from tests.support.policies import base_policy
from tests.support.stack import Stack, running_stack, session_token

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("metrics"), base_policy()) as running:
        yield running


def scrape(stack: Stack) -> tuple[str, Samples]:
    text = stack.client.get(f"{stack.broker}/metrics").text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_known_label_sets_exist_at_zero_before_any_request(tmp_path: Path) -> None:
    with running_stack(tmp_path, base_policy()) as fresh:
        _, samples = scrape(fresh)
    for provider, region in (("embeddable", "eu"), ("embeddable", "us"), ("databrain", "")):
        for status in ("timeout", "connect_error", "503", "circuit_open"):
            assert (
                value(
                    samples,
                    "token_broker_upstream_requests_total",
                    provider=provider,
                    region=region,
                    status=status,
                )
                == 0
            ), (provider, region, status)
        assert value(samples, "token_broker_circuit_open", provider=provider, region=region) == 0
        assert (
            value(
                samples,
                "token_broker_upstream_latency_seconds_count",
                provider=provider,
                region=region,
            )
            == 0
        )
    for outcome, cache in (("ok", "miss"), ("ok", "hit"), ("upstream_unavailable", "miss")):
        assert (
            value(
                samples,
                "token_broker_tokens_total",
                provider="databrain",
                embed="-",
                outcome=outcome,
                cache=cache,
            )
            == 0
        )
    for scope in ("user", "tenant"):
        assert value(samples, "token_broker_rate_limited_total", scope=scope) == 0
    for outcome in ("success", "failure"):
        assert value(samples, "token_broker_config_reloads_total", outcome=outcome) == 0


def test_no_redis_gauge_without_redis(stack: Stack) -> None:
    text, _ = scrape(stack)
    assert "token_broker_redis_available" not in text


def test_the_redis_gauge_exists_with_redis() -> None:
    metrics = Metrics.create(redis=True)
    assert metrics.redis_available is not None
    assert Metrics.create().redis_available is None


def test_no_created_series(stack: Stack) -> None:
    assert stack.token("sales-overview", session_token()).status_code == 200
    text, _ = scrape(stack)
    assert "_created" not in text


def test_process_metrics_and_build_info(stack: Stack) -> None:
    _, samples = scrape(stack)
    assert value(samples, "token_broker_build_info", version=package_version()) == 1
    resident = value(samples, "process_resident_memory_bytes")
    assert resident is not None and resident > 1_000_000
    assert value(samples, "process_open_fds") is not None
    assert value(samples, "process_start_time_seconds") is not None


def test_embed_names_are_not_in_public_metrics_by_default(stack: Stack) -> None:
    assert stack.token("sales-overview", session_token()).status_code == 200
    assert stack.token("ops-dashboard", session_token()).status_code == 403
    text, samples = scrape(stack)
    for name in base_policy()["embeds"]:
        assert name not in text
    ok = value(
        samples,
        "token_broker_tokens_total",
        provider="embeddable",
        embed="-",
        outcome="ok",
        cache="miss",
    )
    assert ok is not None and ok >= 1


def test_embed_names_are_labels_when_the_operator_opts_in(tmp_path: Path) -> None:
    with running_stack(tmp_path, base_policy(), metrics_embed_labels=True) as opted:
        assert opted.token("sales-overview", session_token()).status_code == 200
        _, samples = scrape(opted)
    labels = {"provider": "embeddable", "embed": "sales-overview"}
    assert value(samples, "token_broker_tokens_total", outcome="ok", cache="miss", **labels) == 1
    assert value(samples, "token_broker_tokens_total", outcome="ok", cache="hit", **labels) == 0
    ops = {"provider": "databrain", "embed": "ops-dashboard"}
    assert value(samples, "token_broker_tokens_total", outcome="ok", cache="miss", **ops) == 0


def test_a_reload_prepares_the_new_policys_label_sets() -> None:
    from app.config.loader import load_policy_document
    from tests.support.policies import BASE_ENV

    document = base_policy()
    document["providers"]["embeddable"]["regions"]["ap"] = {
        "api_key": "${EMBEDDABLE_US_API_KEY}",
        "base_url": "https://api.ap.example.com",
    }
    metrics = Metrics.create()
    metrics.prepare(load_policy_document(document, environ=BASE_ENV))
    assert (
        metrics.registry.get_sample_value(
            "token_broker_circuit_open", {"provider": "embeddable", "region": "ap"}
        )
        == 0
    )
