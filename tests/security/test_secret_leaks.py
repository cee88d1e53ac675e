"""Secrets never leak (security.md "Secrets").

Every secret is a distinctive canary. One broker process, with debug logging, is driven
through successes, every error code it can produce, vendor faults, a Redis that never
answers and two reloads (one good, one bad). Afterwards no canary, no session JWT and
no issued token may appear in its output, in any response (body or headers), or in
/metrics.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.eventually import eventually
from tests.support.policies import BASE_ENV, SERVICE_KEY, base_policy, write_policy
from tests.support.process import broker_process
from tests.support.servers import free_port
from tests.support.stack import bearer, sandbox_env, serving_sandbox, session_token

pytestmark = pytest.mark.slow

CANARY_REDIS_PASSWORD = "canary-redis-password-91c4"
CANARY_CACHE_KEY = "canary-cache-encryption-key-0123456789abcdef"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    with serving_sandbox() as url:
        yield url


def leak_policy() -> dict[str, Any]:
    document = base_policy()
    document["session"]["cookie"] = "app_session"
    document["cors"] = {"allow_origins": ["https://app.example.com"]}
    document["limits"] = {"per_user": "20/minute"}
    document["providers"]["databrain"]["timeout_seconds"] = 0.5
    document["embeds"]["claims-embed"] = {
        "provider": "embeddable",
        "allow": {"tenants": ["*"]},
        "request": {
            "embeddableId": "x",
            "user": "{user.id}",
            "securityContext": {"d": "{user.claims.dept}"},
        },
    }
    return document


def test_no_secret_token_or_key_appears_anywhere(tmp_path: Path, sandbox: str) -> None:
    secrets = [*BASE_ENV.values(), SERVICE_KEY, CANARY_REDIS_PASSWORD, CANARY_CACHE_KEY]
    env = sandbox_env(sandbox)
    extra = {
        "BROKER_LOG_LEVEL": "debug",
        "BROKER_RELOAD_INTERVAL_SECONDS": "0",
        # A Redis that never answers, with a password in its URL.
        "BROKER_REDIS_URL": f"redis://:{CANARY_REDIS_PASSWORD}@127.0.0.1:{free_port()}/0",
        "BROKER_CACHE_ENCRYPTION_KEY": CANARY_CACHE_KEY,
    }
    path = write_policy(tmp_path, leak_policy())
    sessions: list[str] = []
    responses: list[httpx.Response] = []
    codes: set[str] = set()

    with (
        broker_process(path, tmp_path, env, extra_env=extra) as broker,
        httpx.Client(timeout=30) as client,
    ):

        def send(method: str, url: str, **kwargs: Any) -> httpx.Response:
            response = client.request(method, f"{broker.url}{url}", **kwargs)
            responses.append(response)
            if response.headers.get("content-type") == "application/problem+json":
                codes.add(response.json()["code"])
            return response

        def session(
            user: str, tenants: Any = "acme", roles: tuple[str, ...] = ("analyst",), **claims: Any
        ) -> str:
            token = session_token(user, tenants, roles, **claims)
            sessions.append(token)
            return token

        def fault(rule: dict[str, Any]) -> None:
            client.post(f"{sandbox}/_sandbox/faults", json=rule).raise_for_status()

        # Successes: both vendors, the cache, cookies, the internal API.
        for embed in ("sales-overview", "ops-dashboard"):
            assert (
                send(
                    "POST", "/v1/tokens", json={"embed": embed}, headers=bearer(session("u1"))
                ).status_code
                == 200
            )
        send("POST", "/v1/tokens", json={"embed": "sales-overview"}, headers=bearer(session("u1")))
        cookie = {"Cookie": f"app_session={session('u2')}", "Content-Type": "application/json"}
        assert (
            send(
                "POST", "/v1/tokens", content=b'{"embed": "sales-overview"}', headers=cookie
            ).status_code
            == 200
        )
        internal = {
            "embed": "sales-overview",
            "user": {"id": "svc-u", "tenant": "globex", "roles": ["viewer"]},
        }
        assert (
            send(
                "POST", "/internal/v1/tokens", json=internal, headers=bearer(SERVICE_KEY)
            ).status_code
            == 200
        )
        send("GET", "/v1/embeds", headers=bearer(session("u1")))

        # Tokens where the broker never reads them: the query string and the path
        # (the access log is on: it must not write them either).
        in_url = session("u-url")
        send("GET", f"/v1/embeds?access_token={in_url}")
        send("POST", f"/v1/tokens/{in_url}", json={"embed": "sales-overview"})

        # Every client error code.
        send("POST", "/v1/tokens", content=b"{", headers=bearer(session("u3")))  # invalid_request
        send(
            "POST", "/v1/tokens", content=b"x" * 20000, headers=bearer(session("u3"))
        )  # request_too_large
        send("POST", "/v1/tokens", json={"embed": "sales-overview"})  # unauthenticated
        forged = session("u4")[:-4] + "AAAA"
        sessions.append(forged)
        send(
            "POST", "/v1/tokens", json={"embed": "sales-overview"}, headers=bearer(forged)
        )  # invalid_session
        expired = session_token("u5", "acme", ttl=-300)
        sessions.append(expired)
        send(
            "POST", "/v1/tokens", json={"embed": "sales-overview"}, headers=bearer(expired)
        )  # session_expired
        send(
            "POST", "/internal/v1/tokens", json=internal, headers=bearer(SERVICE_KEY + "x")
        )  # invalid_service_key
        send(
            "POST",
            "/v1/tokens",
            json={"embed": "sales-overview", "tenant": "globex"},
            headers=bearer(session("u6")),
        )
        send(
            "POST", "/v1/tokens", json={"embed": "nope"}, headers=bearer(session("u6"))
        )  # embed_not_allowed
        send(
            "POST", "/v1/tokens", json={"embed": "claims-embed"}, headers=bearer(session("u6"))
        )  # missing_claim
        send(
            "POST",
            "/v1/tokens",
            content=b'{"embed": "sales-overview"}',
            headers={**cookie, "Origin": "https://evil.example"},
        )
        limited = session("u7")
        for _ in range(22):
            send(
                "POST", "/v1/tokens", json={"embed": "sales-overview"}, headers=bearer(limited)
            )  # rate_limited

        # Vendor faults: every upstream code.
        for index, rule in enumerate(
            [
                {"vendor": "embeddable", "status": 401, "count": 1},
                {
                    "vendor": "embeddable",
                    "status": 400,
                    "count": 1,
                    "message": f"bad key {BASE_ENV['EMBEDDABLE_EU_API_KEY']}",
                },
                {"vendor": "embeddable", "malformed_200": True, "count": 1},
                {"vendor": "embeddable", "status": 429, "retry_after": 3, "count": 1},
                {"vendor": "embeddable", "status": 503, "count": 3},
                {"vendor": "embeddable", "drop_connection": True, "count": 3},
            ]
        ):
            fault(rule)
            send(
                "POST",
                "/v1/tokens",
                json={"embed": "sales-overview"},
                headers=bearer(session(f"fault-{index}")),
            )
            client.delete(f"{sandbox}/_sandbox/faults").raise_for_status()
        fault({"vendor": "databrain", "latency_ms": 1500, "count": 3})
        send(
            "POST", "/v1/tokens", json={"embed": "ops-dashboard"}, headers=bearer(session("slow"))
        )  # upstream_timeout
        client.delete(f"{sandbox}/_sandbox/faults").raise_for_status()

        # Reloads: a good one and a bad one (the bad one names a missing variable).
        good = leak_policy()
        good["embeds"]["sales-overview"]["title"] = "Reloaded"
        write_policy(tmp_path, good)
        broker.signal(signal.SIGHUP)
        eventually(
            lambda: (
                'token_broker_config_reloads_total{outcome="success"} 1.0'
                in send("GET", "/metrics").text
            ),
            what="the good reload",
        )
        bad = leak_policy()
        bad["providers"]["databrain"]["api_key"] = "${NOT_SET_ANYWHERE}"
        write_policy(tmp_path, bad)
        broker.signal(signal.SIGHUP)

        def after_the_bad_reload() -> str:
            text = send("GET", "/metrics").text
            return (
                text if 'token_broker_config_reloads_total{outcome="failure"} 1.0' in text else ""
            )

        metrics_text = eventually(after_the_bad_reload, what="the bad reload")
        assert 'token_broker_config_reloads_total{outcome="failure"} 1.0' in metrics_text
        assert 'token_broker_config_reloads_total{outcome="success"} 1.0' in metrics_text
        send("GET", "/readyz")
    output = broker.output()  # the process has stopped: every line it logged is written

    def is_token_response(response: httpx.Response) -> bool:
        return response.status_code == 200 and response.request.url.path.endswith("/tokens")

    issued = [r.json()["token"] for r in responses if is_token_response(r)]
    assert len(issued) >= 5
    expected_codes = {
        "invalid_request", "request_too_large", "unauthenticated", "invalid_session", "session_expired",
        "invalid_service_key", "tenant_not_allowed", "embed_not_allowed", "missing_claim",
        "origin_not_allowed", "rate_limited", "upstream_auth_failed", "upstream_rejected",
        "upstream_bad_response", "upstream_unavailable", "upstream_timeout",
    }  # fmt: skip
    assert expected_codes <= codes, expected_codes - codes
    assert "redis" in output  # the Redis outage was logged (once), without its URL

    forbidden = {"secret": secrets, "session JWT": sessions, "issued token": issued}
    places = {
        "broker output": output,
        "metrics": metrics_text,
        **{
            f"response {i} ({r.request.method} {r.request.url.path} -> {r.status_code})": (
                r.text.replace(r.json()["token"], "") if is_token_response(r) else r.text
            )
            + str(dict(r.headers))
            for i, r in enumerate(responses)
        },
    }
    for kind, values in forbidden.items():
        for value in values:
            for where, text in places.items():
                assert value not in text, f"{kind} leaked into {where}"
