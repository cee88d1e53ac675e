"""Refused credentials are audited and counted (operations.md "Observability"):
``session.rejected`` with the reason, the issuer and the request id, never the token or
a claim other than the issuer; ``token_broker_sessions_rejected_total{reason}``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jose import jwt
from prometheus_client.parser import text_string_to_metric_families

from app.errors import SESSION_REJECTION_REASONS
from tests.support.policies import AUDIENCE, HS_ISSUER, HS_SECRET, base_policy
from tests.support.stack import Stack, bearer, running_stack, session_token

OTHER_SECRET = "another-secret-that-is-long-enough-0123456789"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("rejections"), base_policy()) as running:
        yield running


def rejected_counts(stack: Stack) -> dict[str, float]:
    text = stack.client.get(f"{stack.broker}/metrics").text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "token_broker_sessions_rejected":
            for sample in family.samples:
                counts[sample.labels["reason"]] = sample.value
    return counts


def signed(claims: dict[str, Any], secret: str = HS_SECRET, alg: str = "HS256") -> str:
    now = int(time.time())
    payload = {
        "iss": HS_ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "org_id": "acme",
        "roles": ["viewer"],
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    return str(jwt.encode(payload, secret, algorithm=alg))


def _headers(token: str) -> dict[str, str]:
    return bearer(token)


# (what is sent, expected reason, expected code, expected issuer in the event)
CASES: dict[str, tuple[Callable[[], dict[str, str]], str, str, str | None]] = {
    "no credentials": (lambda: {}, "missing", "unauthenticated", None),
    "not a JWT": (lambda: _headers("not-a-jwt"), "malformed", "invalid_session", None),
    "another scheme": (
        lambda: {"Authorization": "Basic YWxpY2U6cHc="},
        "malformed",
        "invalid_session",
        None,
    ),
    "too large": (lambda: _headers("a" * 9000), "too_large", "invalid_session", None),
    "expired": (
        lambda: _headers(signed({"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600})),
        "expired",
        "session_expired",
        HS_ISSUER,
    ),
    "bad signature": (
        lambda: _headers(signed({}, secret=OTHER_SECRET)),
        "bad_signature",
        "invalid_session",
        HS_ISSUER,
    ),
    "unknown issuer": (
        lambda: _headers(signed({"iss": "https://auth.example.com"})),
        "unknown_issuer",
        "invalid_session",
        "https://auth.example.com",
    ),
    "wrong audience": (
        lambda: _headers(signed({"aud": "someone-else"})),
        "wrong_audience",
        "invalid_session",
        HS_ISSUER,
    ),
    "algorithm not allowed": (
        lambda: _headers(signed({}, alg="HS512", secret=HS_SECRET * 2)),
        "algorithm_not_allowed",
        "invalid_session",
        HS_ISSUER,
    ),
    "not yet valid": (
        lambda: _headers(signed({"nbf": int(time.time()) + 3600})),
        "not_yet_valid",
        "invalid_session",
        HS_ISSUER,
    ),
    "no tenant claim": (
        lambda: _headers(signed({"org_id": None})),
        "invalid_claims",
        "invalid_session",
        HS_ISSUER,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_rejection_is_one_audit_event_and_one_count(
    stack: Stack, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    make_headers, reason, code, issuer = CASES[case]
    headers = make_headers()
    before = rejected_counts(stack)
    caplog.set_level(logging.INFO, logger="token_broker")
    response = stack.client.post(
        f"{stack.broker}/v1/tokens", json={"embed": "sales-overview"}, headers=headers
    )
    assert response.status_code == 401
    assert response.json()["code"] == code
    (event,) = [r for r in caplog.records if r.getMessage() == "session.rejected"]
    fields = event.__dict__
    assert fields["reason"] == reason and fields["code"] == code
    assert fields["caller"] == "session"
    assert fields.get("issuer") == issuer
    after = rejected_counts(stack)
    assert after[reason] == before[reason] + 1
    assert sum(after.values()) == sum(before.values()) + 1
    credential = headers.get("Authorization", "").partition(" ")[2]
    for record in caplog.records:
        text = str(record.__dict__)
        if credential:
            assert credential not in text
        assert "alice" not in text  # the subject is a claim beyond the issuer


def test_the_event_carries_the_request_id(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    from app.observability.logging import request_id_var

    seen: list[str | None] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "session.rejected":
                seen.append(request_id_var.get())

    handler = Capture()
    audit = logging.getLogger("token_broker.audit")
    audit.addHandler(handler)
    audit.setLevel(logging.INFO)
    try:
        response = stack.client.post(
            f"{stack.broker}/v1/tokens",
            json={"embed": "sales-overview"},
            headers={"X-Request-ID": "req-rejected-1", **bearer("not-a-jwt")},
        )
    finally:
        audit.removeHandler(handler)
        audit.setLevel(logging.NOTSET)
    assert response.json()["request_id"] == "req-rejected-1"
    assert seen == ["req-rejected-1"]


def test_embeds_listing_and_cookies_are_audited_too(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="token_broker")
    expired = signed({"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600})
    response = stack.client.get(f"{stack.broker}/v1/embeds", headers=bearer(expired))
    assert response.status_code == 401
    reasons = [r.__dict__["reason"] for r in caplog.records if r.getMessage() == "session.rejected"]
    assert reasons == ["expired"]


def test_a_bad_service_key_is_audited(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="token_broker")
    before = rejected_counts(stack)
    response = stack.client.post(
        f"{stack.broker}/internal/v1/tokens",
        json={"embed": "sales-overview", "user": {"id": "u", "tenant": "acme"}},
        headers=bearer("not-the-service-key"),
    )
    assert response.status_code == 401
    (event,) = [r for r in caplog.records if r.getMessage() == "session.rejected"]
    assert (event.__dict__["reason"], event.__dict__["caller"]) == (
        "invalid_service_key",
        "service",
    )
    assert "not-the-service-key" not in str(event.__dict__)
    assert rejected_counts(stack)["invalid_service_key"] == before["invalid_service_key"] + 1


def test_a_valid_session_is_not_a_rejection(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="token_broker")
    before = rejected_counts(stack)
    assert stack.token("sales-overview", session_token()).status_code == 200
    assert not [r for r in caplog.records if r.getMessage() == "session.rejected"]
    assert rejected_counts(stack) == before


def test_every_reason_is_exposed_from_start_up(tmp_path: Path) -> None:
    with running_stack(tmp_path, base_policy()) as fresh:
        counts = rejected_counts(fresh)
    assert counts == dict.fromkeys(SESSION_REJECTION_REASONS, 0.0)


def test_reasons_are_a_small_closed_set() -> None:
    assert len(SESSION_REJECTION_REASONS) == len(set(SESSION_REJECTION_REASONS)) <= 16
    assert all(r.isidentifier() and r.islower() for r in SESSION_REJECTION_REASONS)
