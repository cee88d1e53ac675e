"""The broker against a real Apache Superset 6.1.0 (``make test-superset``).

Superset runs on loopback with SQLite, ``EMBEDDED_SUPERSET`` on and
``GUEST_TOKEN_JWT_AUDIENCE`` set (tests/support/superset.py); its admin, a dashboard
and the dashboard's embedded uuid are made through Superset's own API. The broker
then asks it for guest tokens over real HTTP, and each token is decoded with
Superset's guest-token secret: what Superset signed is what the policy said.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from tests.support.eventually import eventually
from tests.support.policies import base_policy
from tests.support.stack import Stack, bearer, running_stack, session_token
from tests.support.superset import SupersetServer, superset_server

pytestmark = [
    pytest.mark.superset,
    pytest.mark.slow,
    # The first test starts Superset (its setup takes about a minute on a shared machine).
    pytest.mark.timeout(900),
]

UNKNOWN_EMBED = "00000000-0000-4000-8000-00000000dead"


@dataclass
class RealSuperset:
    server: SupersetServer
    embedded_uuid: str


@pytest.fixture(scope="module")
def superset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealSuperset]:
    with superset_server(tmp_path_factory.mktemp("superset")) as server:
        admin = server.admin_session()
        try:
            dashboard = admin.create_dashboard("Broker sales")
            embedded = admin.embed_dashboard(dashboard)
        finally:
            admin.close()
        yield RealSuperset(server, embedded)


def policy(real: RealSuperset) -> dict[str, Any]:
    document = base_policy()
    document["providers"]["superset"] = {
        "type": "superset",
        "base_url": "${REAL_SUPERSET_URL}",
        "username": real.server.admin_username,
        "password": "${REAL_SUPERSET_PASSWORD}",
    }
    document["providers"]["superset-wrong"] = {
        "type": "superset",
        "base_url": "${REAL_SUPERSET_URL}",
        "username": real.server.admin_username,
        "password": "not-the-admin-password-4c1d",
    }
    request = {
        "user": {"username": "{user.id}", "first_name": "{tenant.id}"},
        "resources": [{"type": "dashboard", "id": real.embedded_uuid}],
        "rls": [{"clause": "tenant_id = '{tenant.id}'"}],
    }
    element = {"dashboard_id": real.embedded_uuid}
    allow = {"tenants": ["*"]}
    document["embeds"]["bi-sales"] = {
        "provider": "superset",
        "allow": allow,
        "element": element,
        "request": request,
    }
    document["embeds"]["bi-unknown"] = {
        "provider": "superset",
        "allow": allow,
        "element": {"dashboard_id": UNKNOWN_EMBED},
        "request": {**request, "resources": [{"type": "dashboard", "id": UNKNOWN_EMBED}]},
    }
    document["embeds"]["bi-wrong-credentials"] = {
        "provider": "superset-wrong",
        "allow": allow,
        "element": element,
        "request": request,
    }
    return document


@pytest.fixture(scope="module")
def stack(superset: RealSuperset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "REAL_SUPERSET_URL": superset.server.url,
        "REAL_SUPERSET_PASSWORD": superset.server.admin_password,
    }
    with running_stack(tmp_path_factory.mktemp("broker"), policy(superset), env=env) as running:
        yield running


def decoded(real: RealSuperset, token: str) -> dict[str, Any]:
    """The guest token as Superset itself reads it: its secret, its audience."""
    claims: dict[str, Any] = pyjwt.decode(
        token,
        real.server.guest_token_secret,
        algorithms=["HS256"],
        audience=real.server.audience,
    )
    return claims


def ask(stack: Stack, embed: str, user: str, tenant: str) -> dict[str, Any]:
    response = stack.client.post(
        f"{stack.broker}/v1/tokens",
        json={"embed": embed},
        headers=bearer(session_token(user=user, tenants=tenant)),
    )
    body: dict[str, Any] = response.json()
    body["_status"] = response.status_code
    return body


def test_two_tenants_get_their_own_rls_and_one_login_serves_them(
    superset: RealSuperset, stack: Stack
) -> None:
    logins_before = superset.server.logins()

    acme = ask(stack, "bi-sales", "alice", "acme")
    globex = ask(stack, "bi-sales", "bob", "globex")
    third = ask(stack, "bi-sales", "carol", "acme")

    for grant in (acme, globex, third):
        assert grant["_status"] == 200, grant
    acme_claims = decoded(superset, acme["token"])
    globex_claims = decoded(superset, globex["token"])
    assert acme_claims["rls_rules"] == [{"clause": "tenant_id = 'acme'"}]
    assert globex_claims["rls_rules"] == [{"clause": "tenant_id = 'globex'"}]
    assert acme_claims["user"] == {"username": "alice", "first_name": "acme"}
    assert globex_claims["user"] == {"username": "bob", "first_name": "globex"}
    assert acme_claims["resources"] == [{"type": "dashboard", "id": superset.embedded_uuid}]
    assert acme_claims["type"] == "guest"
    # Superset's lifetime (GUEST_TOKEN_JWT_EXP_SECONDS = 300), read from the token.
    assert 0 < acme["expires_in"] <= 300
    assert acme["element"] == {
        "sdk": "@superset-ui/embedded-sdk",
        "options": {"id": superset.embedded_uuid, "supersetDomain": superset.server.url},
    }

    # Three guest tokens, one login: the access token was reused.
    eventually(
        lambda: superset.server.count_requests("POST", "/api/v1/security/guest_token/") >= 3,
        what="Superset logged the three guest-token calls",
    )
    assert superset.server.logins() - logins_before == 1


def test_a_repeat_is_served_from_the_cache(superset: RealSuperset, stack: Stack) -> None:
    first = ask(stack, "bi-sales", "dave", "acme")
    calls_before = superset.server.count_requests("POST", "/api/v1/security/guest_token/")
    again = ask(stack, "bi-sales", "dave", "acme")
    assert again["token"] == first["token"]
    assert superset.server.count_requests("POST", "/api/v1/security/guest_token/") == calls_before


def test_an_unknown_embedded_id_is_upstream_rejected(superset: RealSuperset, stack: Stack) -> None:
    problem = ask(stack, "bi-unknown", "alice", "acme")
    assert problem["_status"] == 502
    assert problem["code"] == "upstream_rejected"
    assert problem["upstream_status"] == 400
    assert "EmbeddedDashboard not found" in problem["detail"]


def test_wrong_credentials_are_upstream_auth_failed(superset: RealSuperset, stack: Stack) -> None:
    problem = ask(stack, "bi-wrong-credentials", "alice", "acme")
    assert problem["_status"] == 502
    assert problem["code"] == "upstream_auth_failed"
    assert "not-the-admin-password-4c1d" not in str(problem)
    assert superset.server.admin_password not in str(problem)


def test_the_session_cookie_and_csrf_token_were_required(superset: RealSuperset) -> None:
    """The same Superset refuses the guest-token call without them: the broker's
    success above is not a lax server's."""
    admin = superset.server.admin_session()
    try:
        without = httpx.post(
            f"{superset.server.url}/api/v1/security/guest_token/",
            json={"resources": [{"type": "dashboard", "id": superset.embedded_uuid}], "rls": []},
            headers={"Authorization": admin.client.headers["Authorization"]},
        )
    finally:
        admin.close()
    assert without.status_code == 400
    assert "CSRF token is missing" in without.text
