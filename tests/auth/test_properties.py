"""Property tests: whatever arrives, the verifier answers 401, never a 500.

Random text and bytes, random JSON headers/payloads with random signatures, and
correctly HMAC-signed tokens with random claims (to reach the claim checks). Only
InvalidSession or SessionExpired may come out (or a user, for a valid token).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.auth import JwksStore, SessionUser, SessionVerifier
from app.auth.tokenizer import parse_compact_jws
from app.config.models import SessionConfig
from app.errors import InvalidSession, SessionExpired
from tests.auth.conftest import ES_ISSUER, HS_ISSUER, PEM_ISSUER, RS_ISSUER, standard_config
from tests.auth.keys import b64url, compact, ec_key, jwks_document, rsa_key, sign_token
from tests.support.policies import HS_SECRET

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
claim_names = st.sampled_from(
    ["iss", "aud", "sub", "org_id", "roles", "email", "exp", "iat", "nbf"]
)
header_names = st.sampled_from(["alg", "kid", "typ", "crit", "jku", "jwk", "x5c", "b64"])
issuers = st.sampled_from([RS_ISSUER, ES_ISSUER, HS_ISSUER, PEM_ISSUER, "other"])
algorithms = st.sampled_from(
    ["RS256", "RS512", "ES256", "ES384", "ES512", "HS256", "HS512", "none", "NONE", ""]
)


class Harness:
    """One verifier whose JWKS comes from an in-process transport (no network)."""

    def __init__(self) -> None:
        document = jwks_document(rsa_key("rs-1"), ec_key("es-256"))
        transport = httpx.MockTransport(lambda _: httpx.Response(200, json=document))
        self.client = httpx.AsyncClient(transport=transport)
        self.store = JwksStore(self.client)
        self.verifier = SessionVerifier(
            SessionConfig.model_validate(
                standard_config("http://127.0.0.1/rs", "http://127.0.0.1/es", max_token_bytes=4096)
            ),
            self.store,
        )

    def outcome(self, token: Any) -> SessionUser | Exception:
        async def run() -> SessionUser | Exception:
            try:
                return await self.verifier.verify(token)
            except (InvalidSession, SessionExpired) as exc:
                return exc

        return asyncio.run(run())

    def close(self) -> None:
        async def close() -> None:
            await self.store.aclose()
            await self.client.aclose()

        asyncio.run(close())


@pytest.fixture(scope="module")
def harness() -> Any:
    harness = Harness()
    yield harness
    harness.close()


@PROPERTY_SETTINGS
@given(st.text(max_size=600) | st.binary(max_size=600).map(lambda b: b.decode("latin-1")))
def test_tokenizer_only_raises_invalid_session(text: str) -> None:
    with contextlib.suppress(InvalidSession):
        parse_compact_jws(text, max_bytes=512)


@PROPERTY_SETTINGS
@given(
    st.text(max_size=300)
    | st.lists(st.text(alphabet="ABCDabcd0123-_=+/.", max_size=60), max_size=6).map(".".join)
)
def test_random_strings_only_give_401(harness: Harness, text: str) -> None:
    assert isinstance(harness.outcome(text), InvalidSession | SessionExpired)


@PROPERTY_SETTINGS
@given(
    header=st.dictionaries(header_names, json_values, max_size=4),
    alg=algorithms,
    payload=st.dictionaries(claim_names, json_values, max_size=9),
    issuer=issuers,
    signature=st.binary(max_size=300),
)
def test_random_json_and_signature_only_give_401(
    harness: Harness,
    header: dict[str, Any],
    alg: str,
    payload: dict[str, Any],
    issuer: str,
    signature: bytes,
) -> None:
    header.setdefault("alg", alg)
    payload.setdefault("iss", issuer)
    result = harness.outcome(compact(header, payload, signature))
    assert isinstance(result, InvalidSession | SessionExpired)


@PROPERTY_SETTINGS
@given(
    claims=st.dictionaries(claim_names, json_values, max_size=9),
    header=st.dictionaries(st.sampled_from(["kid", "typ", "jku"]), json_values, max_size=2),
    use_valid_times=st.booleans(),
    use_valid_audience=st.booleans(),
)
def test_correctly_signed_random_claims_give_a_user_or_401(
    harness: Harness,
    claims: dict[str, Any],
    header: dict[str, Any],
    use_valid_times: bool,
    use_valid_audience: bool,
) -> None:
    claims["iss"] = HS_ISSUER
    if use_valid_times:
        now = int(time.time())
        claims.update(iat=now, exp=now + 600)
    if use_valid_audience:
        claims["aud"] = "analytics-web"
    token = sign_token(claims, HS_SECRET.encode(), "HS256", header=header)
    result = harness.outcome(token)
    assert isinstance(result, SessionUser | InvalidSession | SessionExpired)
    if isinstance(result, SessionUser):
        assert result.tenants and all(isinstance(t, str) and t for t in result.tenants)
        assert isinstance(result.id, str) and result.id


@PROPERTY_SETTINGS
@given(signature=st.binary(min_size=0, max_size=200))
def test_random_ecdsa_signatures_never_verify(harness: Harness, signature: bytes) -> None:
    now = int(time.time())
    claims = {
        "iss": ES_ISSUER,
        "aud": "analytics-web",
        "sub": "a",
        "org_id": "t",
        "iat": now,
        "exp": now + 60,
    }
    token = compact({"alg": "ES256", "kid": "es-256"}, claims, b"") + b64url(signature)
    assert isinstance(harness.outcome(token), InvalidSession)
