"""JWKS caching against a real JWKS server on loopback (fetch counts are the server's)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from app.auth import JwksStore, SessionVerifier
from app.config.models import SessionConfig
from app.errors import InvalidSession
from app.observability.metrics import Metrics
from tests.auth.checks import assert_rejected
from tests.auth.conftest import (
    RS_ISSUER,
    AuthEnv,
    FakeClock,
    LoopbackServer,
    MakeVerifier,
    standard_config,
)
from tests.auth.keys import compact, ec_key, jwks_document, rsa_key, session_claims, sign_token
from tests.support.eventually import eventually_async
from tests.support.servers import free_port, serve_in_thread

pytestmark = pytest.mark.anyio


def rs_token(key_name: str = "rs-1", **claims: Any) -> str:
    return sign_token(session_claims(RS_ISSUER, **claims), rsa_key(key_name), "RS256")


def refresh_count(metrics: Metrics, outcome: str, issuer: str = RS_ISSUER) -> float:
    value = metrics.registry.get_sample_value(
        "token_broker_jwks_refresh_total", {"issuer": issuer, "outcome": outcome}
    )
    return value or 0.0


async def test_start_returns_at_once_and_readiness_names_the_issuer(
    env: AuthEnv, make_verifier: MakeVerifier
) -> None:
    verifier = make_verifier(
        standard_config(env.server.url(env.rs_path), env.server.url(env.es_path) + "-other")
    )
    await verifier.start()  # no await inside start(): no fetch can have finished yet
    assert verifier.not_ready() == [RS_ISSUER, "https://es.example.test/"]


async def test_first_fetch_makes_the_issuer_ready(env: AuthEnv) -> None:
    await env.verifier.verify(rs_token())
    assert RS_ISSUER not in env.verifier.not_ready()
    assert env.rs_fetches() == 1
    assert refresh_count(env.metrics, "ok") == 1


async def test_key_rotation_new_kid_is_accepted(env: AuthEnv) -> None:
    await env.verifier.verify(rs_token("rs-1"))
    env.server.publish(env.rs_path, jwks_document(rsa_key("rs-1"), rsa_key("rs-new")))
    # Just after a fetch, the 30 s window holds: the new kid is not known yet.
    await assert_rejected(env.verifier, rs_token("rs-new"), detail="token key id (kid) is unknown")
    assert env.rs_fetches() == 1
    env.clock.advance(31)
    user = await env.verifier.verify(rs_token("rs-new", sub="bob"))
    assert user.id == "bob"
    assert env.rs_fetches() == 2
    await env.verifier.verify(rs_token("rs-1", sub="carol"))  # the old key still in the set


async def test_burst_of_1000_unknown_kids_causes_at_most_one_fetch(env: AuthEnv) -> None:
    await env.verifier.verify(rs_token())
    assert env.rs_fetches() == 1
    env.clock.advance(31)  # the window is open again: one refetch is allowed

    def forged(kid: str) -> str:
        return compact({"alg": "RS256", "kid": kid}, session_claims(RS_ISSUER), b"s" * 256)

    kids = [uuid.uuid4().hex for _ in range(1000)]
    results = await asyncio.gather(
        *(env.verifier.verify(forged(kid)) for kid in kids), return_exceptions=True
    )
    assert all(isinstance(result, InvalidSession) for result in results)
    assert env.rs_fetches() == 2

    # A second burst inside the same 30 s: no fetch at all.
    results = await asyncio.gather(
        *(env.verifier.verify(forged(uuid.uuid4().hex)) for _ in range(1000)),
        return_exceptions=True,
    )
    assert all(isinstance(result, InvalidSession) for result in results)
    assert env.rs_fetches() == 2


async def test_concurrent_first_requests_share_one_fetch(env: AuthEnv) -> None:
    tokens = [rs_token(sub=f"user-{i}") for i in range(50)]
    users = await asyncio.gather(*(env.verifier.verify(token) for token in tokens))
    assert {user.id for user in users} == {f"user-{i}" for i in range(50)}
    assert env.rs_fetches() == 1


async def test_endpoint_erroring_after_first_fetch_keeps_old_keys(env: AuthEnv) -> None:
    await env.verifier.verify(rs_token())
    env.server.take_down(env.rs_path, status=503)
    env.clock.advance(31)
    await assert_rejected(env.verifier, rs_token("unknown-key"), InvalidSession)
    assert env.rs_fetches() == 2
    assert refresh_count(env.metrics, "http_error") == 1
    user = await env.verifier.verify(rs_token(sub="still-works"))  # stale-if-error
    assert user.id == "still-works"
    assert env.verifier.not_ready() == []


async def test_endpoint_gone_after_first_fetch_keeps_old_keys(
    jwks_store: JwksStore, make_verifier: MakeVerifier, clock: FakeClock, metrics: Metrics
) -> None:
    server = LoopbackServer()
    server.publish("jwks.json", jwks_document(rsa_key("rs-1")))
    with serve_in_thread(server.app) as base_url:
        server.base_url = base_url
        verifier = make_verifier(
            standard_config(server.url("jwks.json"), server.url("es-unused.json"))
        )
        await verifier.verify(rs_token())
    # the server is stopped: connections are refused now
    clock.advance(31)
    await assert_rejected(verifier, rs_token("unknown-key"), InvalidSession)
    assert refresh_count(metrics, "unreachable") == 1
    user = await verifier.verify(rs_token(sub="still-works"))
    assert user.id == "still-works"


@pytest.mark.parametrize(
    ("document", "outcome"),
    [
        ({"not": "a jwks"}, "invalid"),
        ({"keys": []}, "no_usable_keys"),
        ({"keys": [rsa_key("rs-1").jwk(use="enc")]}, "no_usable_keys"),
    ],
    ids=["not-a-jwks", "empty", "only-encryption-keys"],
)
async def test_bad_document_after_first_fetch_keeps_old_keys(
    env: AuthEnv, document: Any, outcome: str
) -> None:
    await env.verifier.verify(rs_token())
    env.server.publish(env.rs_path, document)
    env.clock.advance(31)
    await assert_rejected(env.verifier, rs_token("unknown-key"))
    assert refresh_count(env.metrics, outcome) == 1
    await env.verifier.verify(rs_token(sub="still-works"))


async def test_oversized_document_is_refused(env: AuthEnv) -> None:
    env.server.publish(env.rs_path, b'{"keys": [], "pad": "' + b"x" * (1024 * 1024) + b'"}')
    await assert_rejected(
        env.verifier, rs_token(), detail="no signing keys are available for the token issuer"
    )
    assert refresh_count(env.metrics, "too_large") == 1
    assert RS_ISSUER in env.verifier.not_ready()


async def test_redirect_is_not_followed(env: AuthEnv, loopback_server: LoopbackServer) -> None:
    env.server.publish(env.rs_path, b"", status=302)
    await assert_rejected(env.verifier, rs_token())
    assert refresh_count(env.metrics, "http_error") == 1


async def test_jwks_never_reachable(make_verifier: MakeVerifier, metrics: Metrics) -> None:
    dead = f"http://127.0.0.1:{free_port()}/jwks.json"
    verifier = make_verifier(standard_config(dead, dead))
    await verifier.start()
    assert verifier.not_ready() == [RS_ISSUER, "https://es.example.test/"]
    await assert_rejected(
        verifier, rs_token(), detail="no signing keys are available for the token issuer"
    )
    assert verifier.not_ready() == [RS_ISSUER, "https://es.example.test/"]
    assert refresh_count(metrics, "unreachable") == 1


async def test_background_refresher_retries_until_keys_arrive(
    loopback_server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    """A real monotonic clock: the first fetch fails, the retry (after ~1 s) succeeds
    without any request asking for it."""
    rs_path, es_path = f"{uuid.uuid4().hex}/rs.json", f"{uuid.uuid4().hex}/es.json"
    loopback_server.take_down(rs_path, status=500)
    loopback_server.take_down(es_path, status=500)
    store = JwksStore(http_client)
    try:
        verifier = SessionVerifier(
            SessionConfig.model_validate(
                standard_config(loopback_server.url(rs_path), loopback_server.url(es_path))
            ),
            store,
        )
        await verifier.start()
        await eventually_async(
            lambda: loopback_server.hits(rs_path) + loopback_server.hits(es_path) >= 2,
            what="the first fetch of both key sets",
        )
        loopback_server.publish(rs_path, jwks_document(rsa_key("rs-1")))
        loopback_server.publish(es_path, jwks_document(ec_key("es-256")))
        await eventually_async(
            lambda: not verifier.not_ready(), timeout=10, what="the retry to load the keys"
        )
    finally:
        await store.aclose()
    assert (loopback_server.hits(rs_path), loopback_server.hits(es_path)) == (2, 2)


async def test_refresh_is_scheduled_before_max_age_ends(env: AuthEnv) -> None:
    env.server.publish(env.rs_path, jwks_document(rsa_key("rs-1")), cache_control="max-age=3600")
    await env.verifier.verify(rs_token())
    source = env.store.source(RS_ISSUER, env.server.url(env.rs_path))
    assert env.clock.now < source.next_refresh_at < env.clock.now + 3600


async def test_store_survives_a_policy_reload(env: AuthEnv, make_verifier: MakeVerifier) -> None:
    await env.verifier.verify(rs_token())
    reloaded = make_verifier(
        standard_config(env.server.url(env.rs_path), env.server.url(env.es_path))
    )
    await reloaded.start()
    assert RS_ISSUER not in reloaded.not_ready()  # its keys are already warm
    await reloaded.verify(rs_token(sub="after-reload"))
    assert env.rs_fetches() == 1


async def test_prune_forgets_sources_a_reload_removed(env: AuthEnv) -> None:
    await env.verifier.verify(rs_token())
    es_only = [key for key in env.verifier.jwks_sources if key[0] != RS_ISSUER]
    await env.store.prune(es_only)
    assert set(env.store.sources) == set(es_only)
