"""The Superset and Preset emulators over real HTTP: the three-step dance, the CSRF
cookie requirement, the 400s a real Superset 6.1.0 answers (tests/superset), Preset."""

from __future__ import annotations

import time
from contextlib import closing, contextmanager
from typing import Any

import httpx
import pytest
from jose import jwt

from tests.sandbox.harness import (
    GUEST_BODY,
    PRESET_SECRET,
    PRESET_TEAM,
    PRESET_TOKEN,
    PRESET_WORKSPACE,
    SUPERSET_AUDIENCE,
    SUPERSET_DASHBOARD,
    SUPERSET_GUEST_SECRET,
    SUPERSET_PASSWORD,
    SUPERSET_USER,
    Sandbox,
    running_sandbox,
)
from tests.support.eventually import eventually

LOGIN = {
    "username": SUPERSET_USER,
    "password": SUPERSET_PASSWORD,
    "provider": "db",
    "refresh": True,
}


def login(sandbox: Sandbox, body: Any = LOGIN) -> httpx.Response:
    return sandbox.control.post(f"{sandbox.superset_url}/api/v1/security/login", json=body)


def access_token(sandbox: Sandbox) -> str:
    response = login(sandbox)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def csrf(client: httpx.Client, sandbox: Sandbox, access: str) -> httpx.Response:
    return client.get(
        f"{sandbox.superset_url}/api/v1/security/csrf_token/",
        headers={"Authorization": f"Bearer {access}"},
    )


def guest(
    client: httpx.Client, sandbox: Sandbox, headers: dict[str, str], body: Any = GUEST_BODY
) -> httpx.Response:
    return client.post(
        f"{sandbox.superset_url}/api/v1/security/guest_token/", json=body, headers=headers
    )


def ready(sandbox: Sandbox) -> tuple[httpx.Client, dict[str, str]]:
    """A client holding the session cookie, and the headers the guest-token call needs."""
    access = access_token(sandbox)
    client = httpx.Client(timeout=5)
    answer = csrf(client, sandbox, access)
    assert answer.status_code == 200, answer.text
    return client, {"Authorization": f"Bearer {access}", "X-CSRFToken": answer.json()["result"]}


def test_the_three_steps_give_a_guest_token_with_superset_claims(sandbox: Sandbox) -> None:
    client, headers = ready(sandbox)
    with closing(client):
        response = guest(client, sandbox, headers)
    assert response.status_code == 200, response.text
    claims = jwt.decode(
        response.json()["token"],
        SUPERSET_GUEST_SECRET,
        algorithms=["HS256"],
        audience=SUPERSET_AUDIENCE,
    )
    assert claims["user"] == GUEST_BODY["user"]
    assert claims["resources"] == GUEST_BODY["resources"]
    assert claims["rls_rules"] == [{"clause": "tenant_id = 'acme'"}]
    assert claims["type"] == "guest"
    assert claims["exp"] == pytest.approx(claims["iat"] + 300)
    assert claims["iat"] == pytest.approx(time.time(), abs=30)


def test_the_login_answers_an_access_token_with_exp(sandbox: Sandbox) -> None:
    response = login(sandbox)
    body = response.json()
    assert set(body) == {"access_token", "refresh_token"}
    claims = jwt.get_unverified_claims(body["access_token"])
    assert claims["type"] == "access"
    assert claims["exp"] == claims["iat"] + 900


@pytest.mark.parametrize(
    ("body", "status", "answer"),
    [
        ({**LOGIN, "password": "wrong"}, 401, {"message": "Not authorized"}),
        ({**LOGIN, "username": "someone"}, 401, {"message": "Not authorized"}),
        (
            {"username": SUPERSET_USER, "provider": "db"},
            400,
            {"message": {"password": ["Missing data for required field."]}},
        ),
        (
            {**LOGIN, "provider": "oauth"},
            400,
            {"message": {"provider": ["Must be one of: db, ldap."]}},
        ),
    ],
)
def test_login_refusals_have_supersets_shapes(
    sandbox: Sandbox, body: dict[str, Any], status: int, answer: dict[str, Any]
) -> None:
    response = login(sandbox, body)
    assert (response.status_code, response.json()) == (status, answer)


def test_the_recorded_login_masks_the_password(sandbox: Sandbox) -> None:
    login(sandbox)
    recorded = sandbox.last_request("superset")
    assert recorded["body"]["password"] == "***"
    assert SUPERSET_PASSWORD not in str(sandbox.requests())


def test_without_the_csrf_header_it_is_400_csrf_token_missing(sandbox: Sandbox) -> None:
    client, headers = ready(sandbox)
    with closing(client):
        response = guest(client, sandbox, {"Authorization": headers["Authorization"]})
    assert response.status_code == 400
    assert response.json()["errors"][0]["message"] == "400 Bad Request: The CSRF token is missing."


def test_without_the_session_cookie_it_is_400_csrf_session_token_missing(sandbox: Sandbox) -> None:
    client, headers = ready(sandbox)
    client.close()
    with httpx.Client(timeout=5) as cookieless:
        response = guest(cookieless, sandbox, headers)
    assert response.status_code == 400
    message = response.json()["errors"][0]["message"]
    assert message == "400 Bad Request: The CSRF session token is missing."


def test_a_csrf_token_of_another_session_does_not_match(sandbox: Sandbox) -> None:
    client, headers = ready(sandbox)
    other_client, other = ready(sandbox)
    other_client.close()
    with closing(client):
        response = guest(client, sandbox, {**headers, "X-CSRFToken": other["X-CSRFToken"]})
    assert response.status_code == 400
    assert "do not match" in response.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    ("authorization", "status", "msg"),
    [
        (None, 401, "Missing Authorization Header"),
        ("Bearer abc.def.ghi", 422, "Signature verification failed"),
    ],
)
def test_the_access_token_is_checked_after_csrf(
    sandbox: Sandbox, authorization: str | None, status: int, msg: str
) -> None:
    client, headers = ready(sandbox)
    headers = {"X-CSRFToken": headers["X-CSRFToken"]}
    if authorization is not None:
        headers["Authorization"] = authorization
    with closing(client):
        response = guest(client, sandbox, headers)
    assert (response.status_code, response.json()) == (status, {"msg": msg})


def test_revoked_access_tokens_are_401_and_a_new_login_works(sandbox: Sandbox) -> None:
    client, headers = ready(sandbox)
    sandbox.control.delete(f"{sandbox.url}/_sandbox/sessions").raise_for_status()
    with closing(client):
        refused = csrf(client, sandbox, headers["Authorization"].removeprefix("Bearer "))
        assert (refused.status_code, refused.json()) == (401, {"msg": "Token has been revoked"})
    client, headers = ready(sandbox)
    with closing(client):
        assert guest(client, sandbox, headers).status_code == 200


def test_an_expired_access_token_is_401() -> None:
    with contextmanager(running_sandbox)(superset_access_token_seconds=1) as short:
        access = access_token(short)
        claims = jwt.get_unverified_claims(access)
        with httpx.Client(timeout=5) as client:
            # The token's own exp says when: wait for that, not for a guessed time.
            eventually(lambda: time.time() > claims["exp"], what="the access token's exp")
            response = csrf(client, short, access)
        assert (response.status_code, response.json()) == (401, {"msg": "Token has expired"})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({k: v for k, v in GUEST_BODY.items() if k != "rls"}, "rls"),
        ({k: v for k, v in GUEST_BODY.items() if k != "resources"}, "resources"),
        ({**GUEST_BODY, "rls": [{"dataset": 3}]}, "rls.0.clause"),
        ({**GUEST_BODY, "rls": [{"clause": "x = 1", "dataset": "3"}]}, "rls.0.dataset"),
        (
            {**GUEST_BODY, "resources": [{"type": "chart", "id": SUPERSET_DASHBOARD}]},
            "resources.0.type",
        ),
        ({**GUEST_BODY, "user": {"username": "a", "email": "a@b"}}, "user.email"),
        ({**GUEST_BODY, "extra": 1}, "extra"),
    ],
)
def test_invalid_guest_token_bodies_are_400_naming_the_field(
    sandbox: Sandbox, body: dict[str, Any], field: str
) -> None:
    client, headers = ready(sandbox)
    with closing(client):
        response = guest(client, sandbox, headers, body)
    assert response.status_code == 400
    assert field in response.json()["message"]


def test_an_unknown_embedded_dashboard_is_400_not_found(sandbox: Sandbox) -> None:
    client, headers = ready(sandbox)
    body = {**GUEST_BODY, "resources": [{"type": "dashboard", "id": "00000000-0000-4000-8000-0"}]}
    with closing(client):
        response = guest(client, sandbox, headers, body)
    assert (response.status_code, response.json()) == (
        400,
        {"message": "EmbeddedDashboard not found."},
    )


def test_an_empty_rls_list_is_allowed(sandbox: Sandbox) -> None:
    client, headers = ready(sandbox)
    with closing(client):
        assert guest(client, sandbox, headers, {**GUEST_BODY, "rls": []}).status_code == 200


def test_a_fault_applies_to_supersets_calls(sandbox: Sandbox) -> None:
    sandbox.fault(vendor="superset", status=503, count=1)
    assert login(sandbox).status_code == 503
    assert login(sandbox).status_code == 200


# --- Preset ------------------------------------------------------------------------------


def preset_access(
    sandbox: Sandbox, name: str = PRESET_TOKEN, secret: str = PRESET_SECRET
) -> httpx.Response:
    return sandbox.control.post(
        f"{sandbox.preset_url}/v1/auth/", json={"name": name, "secret": secret}
    )


def preset_guest(
    sandbox: Sandbox, access: str, body: Any = GUEST_BODY, team: str = PRESET_TEAM
) -> httpx.Response:
    return sandbox.control.post(
        f"{sandbox.preset_url}/v1/teams/{team}/workspaces/{PRESET_WORKSPACE}/guest-token/",
        json=body,
        headers={"Authorization": f"Bearer {access}"},
    )


def test_preset_auth_then_guest_token_in_payload(sandbox: Sandbox) -> None:
    auth = preset_access(sandbox)
    assert auth.status_code == 200, auth.text
    access = auth.json()["payload"]["access_token"]
    response = preset_guest(sandbox, access)
    assert response.status_code == 200, response.text
    token = response.json()["payload"]["token"]
    claims = jwt.decode(
        token, SUPERSET_GUEST_SECRET, algorithms=["HS256"], audience=SUPERSET_AUDIENCE
    )
    assert claims["rls_rules"] == GUEST_BODY["rls"]
    assert sandbox.last_request("preset")["token"] == token
    assert sandbox.requests(vendor="preset")[0]["body"]["secret"] == "***"


@pytest.mark.parametrize(("name", "secret"), [("wrong", PRESET_SECRET), (PRESET_TOKEN, "wrong")])
def test_preset_refuses_wrong_credentials(sandbox: Sandbox, name: str, secret: str) -> None:
    assert preset_access(sandbox, name, secret).status_code == 401


def test_preset_refuses_an_unknown_workspace_and_a_missing_token(sandbox: Sandbox) -> None:
    access = preset_access(sandbox).json()["payload"]["access_token"]
    assert preset_guest(sandbox, access, team="other-team").status_code == 404
    assert preset_guest(sandbox, "not-a-token").status_code == 422
    unknown = {**GUEST_BODY, "resources": [{"type": "dashboard", "id": "nope"}]}
    response = preset_guest(sandbox, access, unknown)
    assert (response.status_code, response.json()) == (
        400,
        {"message": "EmbeddedDashboard not found."},
    )
