"""No HS secret and no session token in reprs, errors, logs or metrics."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import generate_latest

from app.auth import JwksStore, SessionVerifier
from app.config.models import SessionConfig
from app.errors import AuthenticationError
from app.observability.metrics import Metrics
from tests.auth.conftest import HS_ISSUER, RS_ISSUER, standard_config
from tests.auth.keys import compact, rsa_key, session_claims, sign_token
from tests.support.servers import free_port

pytestmark = pytest.mark.anyio

CANARY_SECRET = "CANARY-hs-secret-7d1f0c2a-9b8e-4c3d-a1f2-000000000000"


def canary_config(dead_url: str) -> dict[str, Any]:
    config = standard_config(dead_url, dead_url)
    for issuer in config["issuers"]:
        if issuer["issuer"] == HS_ISSUER:
            issuer["secret"] = CANARY_SECRET
    return config


async def test_secret_and_tokens_never_leak(
    jwks_store: JwksStore, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dead_url = f"http://127.0.0.1:{free_port()}/jwks.json"
    config = SessionConfig.model_validate(canary_config(dead_url))
    verifier = SessionVerifier(config, jwks_store, metrics=metrics)
    await verifier.start()
    secret = CANARY_SECRET.encode()

    good = sign_token(session_claims(HS_ISSUER, roles=["r"]), secret, "HS256")
    tokens = [
        good,
        good[:-4] + "AAAA",  # bad signature
        sign_token(session_claims(HS_ISSUER, ttl=-3600), secret, "HS256"),  # expired
        sign_token(session_claims(HS_ISSUER, audience="x"), secret, "HS256"),
        sign_token(session_claims(HS_ISSUER), secret, "HS512"),
        sign_token(session_claims(RS_ISSUER), rsa_key("rs-1"), "RS256"),  # JWKS unreachable
        compact({"alg": "none"}, session_claims(HS_ISSUER), b""),
        good + ".extra",
        "x" * 9000,
    ]
    texts = [repr(verifier), str(verifier), repr(jwks_store), repr(config), str(config)]
    texts += [repr(source) for source in jwks_store.sources.values()]
    for token in tokens:
        try:
            user = await verifier.verify(token)
            texts += [repr(user), str(user)]
        except AuthenticationError as exc:
            texts += [repr(exc), str(exc), exc.detail, str(exc.problem("req-1"))]
    texts.append(caplog.text)
    texts += [repr(record.__dict__) for record in caplog.records]
    texts.append(generate_latest(metrics.registry).decode())

    assert "jwks.refresh_failed" in caplog.text  # the failure paths did log
    everything = "\n".join(texts)
    assert CANARY_SECRET not in everything
    for token in tokens:
        for part in [token, *token.split(".")]:
            if len(part) >= 8:
                assert part not in everything
