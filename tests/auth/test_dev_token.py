"""mint_dev_token (``token-broker dev-token``) round-trips through the verifier."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.auth import JwksStore, SessionVerifier, mint_dev_token
from app.config.models import SessionConfig
from app.errors import SessionExpired
from tests.auth.checks import assert_rejected
from tests.auth.conftest import HS_ISSUER, standard_config
from tests.auth.keys import rsa_key

pytestmark = pytest.mark.anyio


def session(**overrides: Any) -> SessionConfig:
    return SessionConfig.model_validate(
        standard_config("http://127.0.0.1:9/rs", "http://127.0.0.1:9/es", **overrides)
    )


async def test_round_trip(jwks_store: JwksStore) -> None:
    config = session()
    token = mint_dev_token(config, user="bob", tenant="acme", roles=["analyst"], ttl_seconds=300)
    user = await SessionVerifier(config, jwks_store).verify(token)
    assert (user.id, user.tenants, user.roles, user.issuer) == (
        "bob",
        ("acme",),
        ("analyst",),
        HS_ISSUER,
    )
    assert user.claims["aud"] == "analytics-web"
    assert user.expires_at == user.claims["iat"] + 300


async def test_nested_claim_paths(jwks_store: JwksStore) -> None:
    config = session(
        claims={"user_id": "user.id", "tenants": "org.ids", "roles": "realm_access.roles"}
    )
    token = mint_dev_token(config, user="bob", tenant="acme", roles=["a", "b"], ttl_seconds=60)
    user = await SessionVerifier(config, jwks_store).verify(token)
    assert (user.id, user.tenants, user.roles) == ("bob", ("acme",), ("a", "b"))
    assert user.claims["org"] == {"ids": "acme"}


async def test_expired_dev_token(jwks_store: JwksStore) -> None:
    config = session()
    token = mint_dev_token(
        config, user="bob", tenant="acme", roles=[], ttl_seconds=60, now=time.time() - 3600
    )
    await assert_rejected(SessionVerifier(config, jwks_store), token, SessionExpired)


def test_refuses_without_an_hs_issuer() -> None:
    config = session()
    rs_only = SessionConfig.model_validate(
        {
            **config.model_dump(mode="json"),
            "issuers": [
                {
                    "issuer": "https://pem.example.test/",
                    "audiences": ["analytics-web"],
                    "algorithms": ["RS256"],
                    "public_key": rsa_key("pem").public_pem(),
                }
            ],
        }
    )
    with pytest.raises(ValueError, match="no HS"):
        mint_dev_token(rs_only, user="bob", tenant="acme", roles=[], ttl_seconds=60)


@pytest.mark.parametrize("ttl", [0, -5])
def test_refuses_a_non_positive_ttl(ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl"):
        mint_dev_token(session(), user="bob", tenant="acme", roles=[], ttl_seconds=ttl)


def test_refuses_colliding_claim_paths() -> None:
    config = session(claims={"user_id": "org", "tenants": "org.id"})
    with pytest.raises(ValueError, match="collides"):
        mint_dev_token(config, user="bob", tenant="acme", roles=[], ttl_seconds=60)
