"""Operability of a real ``token-broker serve`` process: reload, SIGHUP, SIGTERM,
JSON logs and audit events, metrics, CORS and security headers."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.eventually import eventually
from tests.support.policies import BASE_ENV, base_policy, write_policy
from tests.support.process import BrokerProcess, broker_process
from tests.support.stack import bearer, sandbox_env, serving_sandbox, session_token

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    with serving_sandbox() as url:
        yield url


def log_events(broker: BrokerProcess) -> list[dict[str, Any]]:
    events = []
    for line in broker.output().splitlines():
        if line.strip():
            events.append(json.loads(line))  # every line is one JSON object
    return events


def ask(broker: BrokerProcess, embed: str, user: str = "alice", **headers: str) -> httpx.Response:
    return httpx.post(
        f"{broker.url}/v1/tokens",
        json={"embed": embed},
        headers={**bearer(session_token(user, "acme", ("analyst",))), **headers},
        timeout=30,
    )


def metric(broker: BrokerProcess, line_prefix: str) -> float:
    text = httpx.get(f"{broker.url}/metrics").text
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_reload_on_file_change_keeps_old_policy_on_a_bad_file(tmp_path: Path, sandbox: str) -> None:
    document = base_policy()
    path = write_policy(tmp_path, document)
    extra = {"BROKER_RELOAD_INTERVAL_SECONDS": "0.1"}
    with broker_process(path, tmp_path, sandbox_env(sandbox), extra_env=extra) as broker:
        assert ask(broker, "late-embed").json()["code"] == "embed_not_allowed"

        added = base_policy()
        added["embeds"]["late-embed"] = dict(added["embeds"]["sales-overview"], title="Late")
        write_policy(tmp_path, added)
        eventually(lambda: ask(broker, "late-embed").status_code == 200)
        assert metric(broker, 'token_broker_config_reloads_total{outcome="success"}') >= 1

        broken = base_policy()
        broken["embeds"]["sales-overview"]["allow"]["tenant"] = ["acme"]  # a typo
        write_policy(tmp_path, broken)
        eventually(
            lambda: metric(broker, 'token_broker_config_reloads_total{outcome="failure"}') >= 1
        )
        assert ask(broker, "late-embed").status_code == 200  # the last good policy stays
        # Log lines are written in batches, a few tens of milliseconds after the event.
        eventually(lambda: any(e["event"] == "config.reload_failed" for e in log_events(broker)))
        failures = [e for e in log_events(broker) if e["event"] == "config.reload_failed"]
        assert any(
            "embeds.sales-overview.allow.tenant: unknown key" in p for p in failures[0]["problems"]
        )
        assert httpx.get(f"{broker.url}/readyz").status_code == 200


def test_sighup_reloads_and_rotates_file_secrets(tmp_path: Path, sandbox: str) -> None:
    secret_file = tmp_path / "session-secret"
    old_secret = BASE_ENV["SESSION_HS256_SECRET"]
    secret_file.write_text(old_secret + "\n")
    document = base_policy()
    document["session"]["issuers"][0]["secret"] = f"${{file:{secret_file}}}"
    path = write_policy(tmp_path, document)
    extra = {"BROKER_RELOAD_INTERVAL_SECONDS": "0"}  # only SIGHUP reloads
    with broker_process(path, tmp_path, sandbox_env(sandbox), extra_env=extra) as broker:
        assert ask(broker, "sales-overview").status_code == 200
        new_secret = "rotated-session-secret-0123456789-abcdef"
        secret_file.write_text(new_secret + "\n")
        # Reloads are off but for SIGHUP: the old secret stays in force until one.
        assert ask(broker, "sales-overview", user="bob").status_code == 200
        broker.signal(signal.SIGHUP)
        eventually(lambda: ask(broker, "sales-overview", user="carol").status_code == 401)
        from jose import jwt

        claims = jwt.get_unverified_claims(session_token("dave", "acme", ("viewer",)))
        rotated = jwt.encode(claims, new_secret, algorithm="HS256")
        response = httpx.post(
            f"{broker.url}/v1/tokens", json={"embed": "sales-overview"}, headers=bearer(rotated)
        )
        assert response.status_code == 200, response.text
    # Read once the process has stopped, so every line it logged has been written.
    assert new_secret not in broker.output()
    assert old_secret not in broker.output()


def test_sigterm_finishes_in_flight_requests_and_exits_0(tmp_path: Path, sandbox: str) -> None:
    path = write_policy(tmp_path, base_policy())
    httpx.post(
        f"{sandbox}/_sandbox/faults", json={"vendor": "embeddable", "latency_ms": 1500}
    ).raise_for_status()
    try:
        with broker_process(path, tmp_path, sandbox_env(sandbox)) as broker:
            results: list[httpx.Response] = []
            worker = threading.Thread(
                target=lambda: results.append(ask(broker, "sales-overview", user="slow"))
            )
            worker.start()
            # The vendor has this very request (the shared sandbox remembers earlier ones).
            eventually(
                lambda: any(
                    entry["body"].get("user") == "slow"
                    for entry in httpx.get(f"{sandbox}/_sandbox/requests").json()["requests"]
                    if isinstance(entry.get("body"), dict)
                )
            )
            broker.signal(signal.SIGTERM)
            worker.join(timeout=30)
            assert results[0].status_code == 200, results[0].text
            assert broker.process.wait(timeout=20) == 0
            events = [e["event"] for e in log_events(broker)]
            assert "broker.stopped" in events
    finally:
        httpx.delete(f"{sandbox}/_sandbox/faults").raise_for_status()
        httpx.delete(f"{sandbox}/_sandbox/requests").raise_for_status()


def test_json_logs_audit_events_and_metrics(tmp_path: Path, sandbox: str) -> None:
    path = write_policy(tmp_path, base_policy())
    with broker_process(path, tmp_path, sandbox_env(sandbox)) as broker:
        ok = ask(broker, "sales-overview", user="audited", **{"X-Request-ID": "req-audit-1"})
        assert ok.status_code == 200
        again = ask(broker, "sales-overview", user="audited")
        denied = ask(broker, "ops-secret", user="audited", **{"X-Request-ID": "req-audit-2"})
        assert denied.status_code == 403

        def both_logged() -> list[dict[str, Any]]:
            found = log_events(broker)
            denial = any(e["event"] == "token.denied" for e in found)
            access = any(
                e.get("request_id") == "req-audit-2" for e in found if e["event"] == "http.access"
            )
            return found if denial and access else []

        events = eventually(both_logged, what="the denial's audit event and access line")
        for event in events:
            assert {"ts", "level", "event"} <= set(event)
        issued = [e for e in events if e["event"] == "token.issued"]
        assert issued[0]["request_id"] == "req-audit-1"
        assert issued[0]["user_id"] == "audited"
        assert issued[0]["tenant"] == "acme"
        assert issued[0]["embed"] == "sales-overview"
        assert issued[0]["provider"] == "embeddable"
        assert issued[0]["region"] == "eu"
        assert issued[0]["caller"] == "session"
        assert issued[0]["outcome"] == "ok"
        assert issued[0]["cache"] == "miss"
        assert issued[0]["vendor_status"] == 200
        assert issued[0]["latency_ms"] >= 0
        assert issued[1]["cache"] == "hit"
        (refused,) = [e for e in events if e["event"] == "token.denied"]
        assert refused["request_id"] == "req-audit-2"
        assert refused["outcome"] == "embed_not_allowed"
        access = [e for e in events if e["event"] == "http.access"]
        assert any(e.get("request_id") == "req-audit-1" and e["status"] == 200 for e in access)
        text = broker.output()
        assert ok.json()["token"] not in text
        assert again.json()["token"] not in text

        metrics = httpx.get(f"{broker.url}/metrics").text
        for family in (
            "token_broker_http_requests_total",
            "token_broker_http_request_duration_seconds",
            "token_broker_tokens_total",
            "token_broker_upstream_requests_total",
            "token_broker_upstream_latency_seconds",
            "token_broker_circuit_open",
            "token_broker_jwks_refresh_total",
            "token_broker_rate_limited_total",
            "token_broker_config_reloads_total",
        ):
            assert f"# TYPE {family}" in metrics, family
        assert (
            'token_broker_tokens_total{cache="hit",embed="-",outcome="ok",provider="embeddable"} 1.0'
            in metrics
        )
        assert 'route="/v1/tokens"' in metrics
        assert "audited" not in metrics  # no user ids in labels


def test_cors_and_security_headers(tmp_path: Path, sandbox: str) -> None:
    document = base_policy()
    document["cors"] = {"allow_origins": ["https://app.example.com"]}
    path = write_policy(tmp_path, document)
    with broker_process(path, tmp_path, sandbox_env(sandbox)) as broker:
        preflight = httpx.options(
            f"{broker.url}/v1/tokens",
            headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        assert preflight.headers["access-control-allow-credentials"] == "true"
        assert "Authorization" in preflight.headers["access-control-allow-headers"]

        denied = httpx.options(
            f"{broker.url}/v1/tokens",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert denied.status_code == 403
        assert "access-control-allow-origin" not in denied.headers

        response = ask(broker, "sales-overview", Origin="https://app.example.com")
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "X-Request-ID" in response.headers["access-control-expose-headers"]
        other = ask(broker, "sales-overview", Origin="https://evil.example")
        assert "access-control-allow-origin" not in other.headers
        for name, value in (
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
        ):
            assert response.headers[name] == value
            assert httpx.get(f"{broker.url}/healthz").headers[name] == value
        # Internal and probe routes never get CORS headers.
        assert (
            "access-control-allow-origin"
            not in httpx.get(
                f"{broker.url}/healthz", headers={"Origin": "https://app.example.com"}
            ).headers
        )


def test_two_workers_serve_and_metrics_add_up_across_them(tmp_path: Path, sandbox: str) -> None:
    path = write_policy(tmp_path, base_policy())
    extra = {"BROKER_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    (tmp_path / "metrics").mkdir()
    with broker_process(path, tmp_path, sandbox_env(sandbox), extra_env=extra) as broker:
        # New connections spread over both workers; each asks for a fresh token.
        for index in range(12):
            with httpx.Client() as client:
                response = client.post(
                    f"{broker.url}/v1/tokens",
                    json={"embed": "sales-overview"},
                    headers=bearer(session_token(f"worker-user-{index}", "acme", ("viewer",))),
                )
                assert response.status_code == 200, response.text
        counted = metric(
            broker,
            'token_broker_tokens_total{cache="miss",embed="-",outcome="ok",provider="embeddable"}',
        )
        assert counted == 12  # whichever worker served /metrics, it reports both
    assert broker.process.returncode == 0
