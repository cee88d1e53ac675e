"""security.md "Negative catalogue", item by item, at the verifier level.

The cases come from :mod:`tests.auth.catalogue`, the one list that
``tests/security/test_catalogue_http.py`` also sends to the running broker: each
attack is its own test id (``test_attack[item<NN>-<variant>]``) and must end in
exactly the error class and detail the catalogue names. The verifier trusts the
catalogue's issuers, with their key sets served by a real loopback server.

Below the shared cases are the ones that only make sense here, each marked
"verifier level only". Item 13 (credentials) is in test_credentials.py and the HTTP
file; item 14 ends in the policy, so here it is checked as far as the session goes.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.auth import SessionVerifier
from tests.auth.catalogue import (
    ATTACKS,
    CONTROLS,
    JWKS_ISSUERS,
    ODD_KIDS,
    RS,
    TENANT_CASES,
    Attack,
    attack_params,
    odd_kid_token,
    remote_key_token,
    segments,
    session_section,
)
from tests.auth.checks import assert_rejected
from tests.auth.conftest import LoopbackServer, MakeVerifier
from tests.auth.keys import jwks_document, rsa_key

pytestmark = pytest.mark.anyio


def publish_keys(server: LoopbackServer) -> str:
    """Publish the catalogue's key sets under a fresh prefix (so that each test
    counts its own fetches); returns the prefix."""
    prefix = uuid.uuid4().hex
    for issuer in JWKS_ISSUERS:
        server.publish(f"{prefix}/{issuer.jwks_path}", issuer.jwks())
    return prefix


def catalogue_verifier(
    server: LoopbackServer, make_verifier: MakeVerifier, prefix: str, **session: Any
) -> SessionVerifier:
    """A verifier trusting the catalogue's issuers, their keys as published."""
    section = session_section(lambda path: server.url(f"{prefix}/{path}"), **session)
    return make_verifier(section)


@pytest.fixture
async def verifier(loopback_server: LoopbackServer, make_verifier: MakeVerifier) -> SessionVerifier:
    started = catalogue_verifier(loopback_server, make_verifier, publish_keys(loopback_server))
    await started.start()
    return started


# --- the shared catalogue -----------------------------------------------------------------


@pytest.mark.parametrize("attack", attack_params())
async def test_attack(verifier: SessionVerifier, attack: Attack) -> None:
    await assert_rejected(verifier, attack.build(), attack.error, detail=attack.detail)


@pytest.mark.parametrize("case", CONTROLS)
async def test_control_valid_token_is_accepted(verifier: SessionVerifier, case: str) -> None:
    """The catalogue is only meaningful if the issuers' genuine tokens pass."""
    user = await verifier.verify(CONTROLS[case]("control-user"))
    assert (user.id, user.tenants) == ("control-user", ("acme",))


@pytest.mark.parametrize("case", TENANT_CASES)
async def test_item14_session_grants_only_its_own_tenant(
    verifier: SessionVerifier, case: str
) -> None:
    """The body's ``"tenant": "B"`` is refused by the policy (403 tenant_not_allowed,
    in the HTTP file); what the session contributes is that the user's tenants are
    exactly the claim's."""
    tenant_case = TENANT_CASES[case]
    user = await verifier.verify(tenant_case.build("alice"))
    assert user.tenants == (tenant_case.own,)
    assert tenant_case.other not in user.tenants


def test_catalogue_ids_are_stable_and_cover_items_1_to_12() -> None:
    ids = [attack.id for attack in ATTACKS]
    assert len(ids) == len(set(ids))
    assert {attack_id[:6] for attack_id in ids} == {f"item{n:02d}" for n in range(1, 13)}


# --- verifier level only --------------------------------------------------------------------


@pytest.mark.parametrize("member", ["jku", "x5u"])
@pytest.mark.parametrize("kid", ["attacker", "rs-1"])
async def test_item5_remote_key_url_is_never_fetched(
    verifier: SessionVerifier, loopback_server: LoopbackServer, member: Any, kid: str
) -> None:
    """Verifier level only: the URL is on this level's own loopback server (the HTTP
    file has the same test against the broker's)."""
    path = f"{uuid.uuid4().hex}/attacker/{member}"
    loopback_server.publish(path, jwks_document(rsa_key("attacker").jwk(kid=kid)))
    await assert_rejected(verifier, remote_key_token(member, kid, loopback_server.url(path)))
    assert loopback_server.hits(path) == 0


@pytest.mark.parametrize("kid", ODD_KIDS)
async def test_item6_odd_kid_reaches_the_key_lookup_and_fetches_at_most_once(
    loopback_server: LoopbackServer, make_verifier: MakeVerifier, kid: str
) -> None:
    """Verifier level only: a token limit large enough that the 10 KB kid reaches the
    key lookup too, and a count of the JWKS fetches the kid causes (the broker has the
    standard limit; its 1,000-kid burst is in the HTTP file)."""
    prefix = publish_keys(loopback_server)
    verifier = catalogue_verifier(loopback_server, make_verifier, prefix, max_token_bytes=65536)
    await assert_rejected(verifier, odd_kid_token(ODD_KIDS[kid]))
    fetches = sum(loopback_server.hits(f"{prefix}/{issuer.jwks_path}") for issuer in JWKS_ISSUERS)
    assert fetches <= 1


def _whitespace_cases() -> dict[str, str]:
    token = RS.token()
    header, payload, signature = segments(token)
    return {
        "empty": "",
        "space": f"{header}.{payload} .{signature}",
        "trailing-newline": token + "\n",
        "leading-space": " " + token,
    }


@pytest.mark.parametrize("case", ["empty", "space", "trailing-newline", "leading-space"])
async def test_item11_empty_or_whitespace_token(verifier: SessionVerifier, case: str) -> None:
    """Verifier level only: an HTTP server strips the whitespace around a header value,
    and the broker's credential parser refuses an empty or spaced Bearer token before
    any verifier sees it (item 13 in the HTTP file)."""
    await assert_rejected(verifier, _whitespace_cases()[case])
