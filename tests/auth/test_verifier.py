"""SessionVerifier: claim mapping, time rules, the verified-session cache, config checks."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.auth import JwksStore, SessionUser, SessionVerifier
from app.auth.session import SessionCache
from app.config.models import SessionConfig
from app.errors import InvalidSession, SessionExpired
from app.observability.metrics import Metrics
from tests.auth.checks import assert_rejected
from tests.auth.conftest import HS_ISSUER, PEM_ISSUER, standard_config
from tests.auth.keys import rsa_key, session_claims, sign_token
from tests.support.policies import HS_SECRET

pytestmark = pytest.mark.anyio

HS_KEY = HS_SECRET.encode()


class WallClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def offline_config(**overrides: Any) -> dict[str, Any]:
    """HS and static-PEM issuers only: nothing to fetch."""
    config = standard_config("http://127.0.0.1:9/unused", "http://127.0.0.1:9/unused")
    config["issuers"] = [i for i in config["issuers"] if "jwks_url" not in i]
    config.update(overrides)
    return config


def build(
    jwks_store: JwksStore,
    metrics: Metrics | None = None,
    wall_clock: WallClock | None = None,
    **overrides: Any,
) -> SessionVerifier:
    return SessionVerifier(
        SessionConfig.model_validate(offline_config(**overrides)),
        jwks_store,
        metrics=metrics,
        wall_clock=wall_clock or time.time,
    )


def hs_token(now: float | None = None, **claims: Any) -> str:
    return sign_token(session_claims(HS_ISSUER, now=now, **claims), HS_KEY, "HS256")


async def test_maps_the_standard_claims(jwks_store: JwksStore) -> None:
    verifier = build(jwks_store)
    token = hs_token(
        sub="alice", tenant=["acme", "globex", "acme"], roles=["viewer"], email="a@acme.test"
    )
    user = await verifier.verify(token)
    assert user == SessionUser(
        id="alice",
        tenants=("acme", "globex"),
        roles=("viewer",),
        email="a@acme.test",
        claims=user.claims,
        issuer=HS_ISSUER,
        expires_at=float(user.claims["exp"]),
    )
    assert user.claims["org_id"] == ["acme", "globex", "acme"]
    with pytest.raises(TypeError):
        user.claims["sub"] = "mallory"  # type: ignore[index]


async def test_dotted_claim_paths(jwks_store: JwksStore) -> None:
    claims = {
        "user_id": "profile.uid",
        "tenants": "https://acme.test/org",
        "roles": "realm_access.roles",
        "email": "profile.email",
    }
    verifier = build(jwks_store, claims=claims)
    payload = {
        "iss": HS_ISSUER,
        "aud": "analytics-web",
        "iat": int(time.time()),
        "exp": int(time.time()) + 60,
        "profile": {"uid": "u-1", "email": "u1@acme.test"},
        "realm_access": {"roles": ["analyst", "viewer"]},
        "https://acme.test/org": "acme",  # an Auth0-style namespaced claim
    }
    token = sign_token(payload, HS_KEY, "HS256")
    user = await verifier.verify(token)
    assert (user.id, user.tenants, user.roles, user.email) == (
        "u-1",
        ("acme",),
        ("analyst", "viewer"),
        "u1@acme.test",
    )


async def test_numeric_user_id_becomes_a_string(jwks_store: JwksStore) -> None:
    user = await build(jwks_store).verify(hs_token(sub=42))
    assert user.id == "42"


async def test_roles_and_email_are_optional(jwks_store: JwksStore) -> None:
    user = await build(jwks_store).verify(hs_token())
    assert (user.roles, user.email) == ((), None)
    unmapped = build(jwks_store, claims={"tenants": "org_id"})
    user = await unmapped.verify(hs_token(roles=["ignored"], email="ignored@x.test"))
    assert (user.roles, user.email) == ((), None)


MISSING = object()


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": MISSING},
        {"sub": None},
        {"sub": ""},
        {"sub": True},
        {"sub": ["alice"]},
        {"sub": {"id": "alice"}},
        {"sub": "\ud800"},
        {"org_id": MISSING},
        {"org_id": None},
        {"org_id": ""},
        {"org_id": []},
        {"org_id": [""]},
        {"org_id": ["acme", 1]},
        {"org_id": 7},
        {"org_id": {"id": "acme"}},
        {"roles": 1},
        {"roles": ["a", None]},
        {"roles": [""]},
        {"email": 5},
        {"email": ["a@b.test"]},
    ],
    ids=lambda claims: ",".join(
        f"{k}={'missing' if v is MISSING else v!r}" for k, v in claims.items()
    ),
)
async def test_invalid_user_claims(jwks_store: JwksStore, claims: dict[str, Any]) -> None:
    payload = session_claims(HS_ISSUER)
    for name, value in claims.items():
        if value is MISSING:
            del payload[name]
        else:
            payload[name] = value
    await assert_rejected(build(jwks_store), sign_token(payload, HS_KEY, "HS256"), InvalidSession)


async def test_expiry_uses_leeway(jwks_store: JwksStore) -> None:
    clock = WallClock()
    verifier = build(jwks_store, wall_clock=clock, leeway_seconds=10)
    token = hs_token(now=clock.now - 100, ttl=95)  # exp 5 s ago
    await verifier.verify(token)
    clock.now += 6  # exp 11 s ago: past the leeway
    await assert_rejected(verifier, token, SessionExpired)


async def test_zero_leeway(jwks_store: JwksStore) -> None:
    clock = WallClock()
    verifier = build(jwks_store, wall_clock=clock, leeway_seconds=0)
    await assert_rejected(verifier, hs_token(now=clock.now - 60, ttl=60), SessionExpired)
    await assert_rejected(verifier, hs_token(now=clock.now + 1), InvalidSession)  # iat


async def test_static_key_issuer_ignores_the_kid(jwks_store: JwksStore) -> None:
    token = sign_token(session_claims(PEM_ISSUER), rsa_key("pem"), "RS256", kid="anything")
    assert (await build(jwks_store).verify(token)).issuer == PEM_ISSUER


# --- verified-session cache ------------------------------------------------------------


def cache_count(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "token_broker_session_cache_total", {"result": result}
    )
    return value or 0.0


async def test_cache_hit_returns_the_same_user(jwks_store: JwksStore, metrics: Metrics) -> None:
    verifier = build(jwks_store, metrics)
    token = hs_token()
    first = await verifier.verify(token)
    second = await verifier.verify(token)
    assert second is first
    assert (cache_count(metrics, "miss"), cache_count(metrics, "hit")) == (1, 1)


async def test_cache_never_serves_at_or_after_exp(jwks_store: JwksStore, metrics: Metrics) -> None:
    clock = WallClock()
    verifier = build(jwks_store, metrics, clock, leeway_seconds=30)
    token = hs_token(now=clock.now, ttl=60)
    await verifier.verify(token)
    clock.now += 60  # exactly exp: the cache must not answer; leeway still accepts
    await verifier.verify(token)
    assert (cache_count(metrics, "miss"), cache_count(metrics, "hit")) == (2, 0)
    clock.now += 31
    await assert_rejected(verifier, token, SessionExpired)


async def test_failures_are_not_cached(jwks_store: JwksStore, metrics: Metrics) -> None:
    verifier = build(jwks_store, metrics)
    token = hs_token(audience="someone-else")
    for _ in range(2):
        await assert_rejected(verifier, token)
    assert cache_count(metrics, "hit") == 0


def test_cache_is_a_bounded_lru() -> None:
    clock = WallClock()
    cache = SessionCache(2, clock)

    def user(name: str) -> SessionUser:
        return SessionUser(name, ("t",), (), None, {}, "iss", clock.now + 60)

    cache.put(b"a", user("a"))
    cache.put(b"b", user("b"))
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(b"c", user("c"))
    assert (cache.get(b"a"), cache.get(b"b")) == (user("a"), None)
    assert len(cache) == 2
    cache.put(b"old", SessionUser("x", ("t",), (), None, {}, "iss", clock.now))
    assert cache.get(b"old") is None


# --- configuration the verifier refuses ------------------------------------------------


async def test_mixed_hs_and_rs_issuer_is_refused(jwks_store: JwksStore) -> None:
    config = offline_config()
    config["issuers"] = [
        {
            "issuer": "mixed",
            "audiences": ["a"],
            "algorithms": ["HS256", "RS256"],
            "secret": HS_SECRET,
        }
    ]
    with pytest.raises(ValueError, match="cannot be mixed") as caught:
        SessionVerifier(SessionConfig.model_validate(config), jwks_store)
    assert HS_SECRET not in str(caught.value)


async def test_public_key_of_the_wrong_type_is_refused(jwks_store: JwksStore) -> None:
    config = offline_config()
    config["issuers"][1]["algorithms"] = ["ES256"]
    with pytest.raises(ValueError, match="public_key"):
        SessionVerifier(SessionConfig.model_validate(config), jwks_store)


async def test_asymmetric_issuer_without_keys_is_refused(jwks_store: JwksStore) -> None:
    config = offline_config()
    config["issuers"][1].pop("public_key")
    with pytest.raises(ValueError, match="jwks_url or public_key"):
        SessionVerifier(SessionConfig.model_validate(config), jwks_store)
