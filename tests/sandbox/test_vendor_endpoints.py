"""The emulated vendor endpoints over real HTTP: tokens, keys, shapes of errors."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from jose import jwt

from tests.sandbox.harness import (
    DATABRAIN_BODY,
    DATABRAIN_KEY,
    EMBEDDABLE_BODY,
    EU_KEY,
    TOKEN_SECRET,
    US_KEY,
    Sandbox,
    databrain_post,
    embeddable_post,
)


def test_embeddable_issues_an_hs256_jwt_and_remembers_it(sandbox: Sandbox) -> None:
    response = embeddable_post(sandbox)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    token = response.json()["token"]
    claims = jwt.decode(token, TOKEN_SECRET, algorithms=["HS256"])
    assert set(claims) == {"securityTokenId", "iat", "exp"}
    assert uuid.UUID(claims["securityTokenId"]).version == 4
    assert claims["exp"] == claims["iat"] + 600
    assert abs(claims["iat"] - time.time()) < 5
    remembered = sandbox.control.get(f"{sandbox.url}/_sandbox/tokens/{token}").json()["request"]
    assert remembered["body"] == EMBEDDABLE_BODY
    assert remembered["region"] == "eu"


def test_databrain_issues_a_uuid_and_remembers_it(sandbox: Sandbox) -> None:
    response = databrain_post(sandbox)

    assert response.status_code == 200
    body = response.json()
    assert body["error"] is None
    assert uuid.UUID(body["token"]).version == 4
    remembered = sandbox.control.get(f"{sandbox.url}/_sandbox/tokens/{body['token']}")
    assert remembered.json()["request"]["body"] == DATABRAIN_BODY


def test_an_unknown_token_is_not_found(sandbox: Sandbox) -> None:
    assert sandbox.control.get(f"{sandbox.url}/_sandbox/tokens/nope").status_code == 404


@pytest.mark.parametrize(
    ("region", "key"),
    [("eu", US_KEY), ("us", EU_KEY), ("eu", DATABRAIN_KEY), ("eu", None)],
)
def test_embeddable_refuses_a_key_that_is_not_the_region_key(
    sandbox: Sandbox, region: str, key: str | None
) -> None:
    response = embeddable_post(sandbox, region=region, key=key)

    assert response.status_code == 401
    assert set(response.json()) == {"errorMessage"}
    assert sandbox.last_request("embeddable")["authorized"] is False


@pytest.mark.parametrize("key", [EU_KEY, "wrong", None])
def test_databrain_refuses_a_wrong_key_with_its_error_shape(
    sandbox: Sandbox, key: str | None
) -> None:
    response = databrain_post(sandbox, key=key)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "AUTHENTICATION_ERROR"


@pytest.mark.parametrize(
    "authorization",
    [
        f"Basic {DATABRAIN_KEY}",
        DATABRAIN_KEY,
        f"Bearer {DATABRAIN_KEY}x",
        f"Bearer {DATABRAIN_KEY[:-1]}",
        "Bearer",
    ],
)
def test_only_the_exact_bearer_key_is_accepted(sandbox: Sandbox, authorization: str) -> None:
    response = databrain_post(sandbox, key=None, headers={"Authorization": authorization})

    assert response.status_code == 401


def test_two_authorization_headers_are_refused(sandbox: Sandbox) -> None:
    response = sandbox.control.post(
        f"{sandbox.databrain_url}/api/v2/guest-token/create",
        json=DATABRAIN_BODY,
        headers=[
            ("Authorization", f"Bearer {DATABRAIN_KEY}"),
            ("Authorization", f"Bearer {DATABRAIN_KEY}"),
        ],
    )
    assert response.status_code == 401


def test_the_bearer_scheme_is_case_insensitive(sandbox: Sandbox) -> None:
    response = databrain_post(
        sandbox, key=None, headers={"Authorization": f"bearer {DATABRAIN_KEY}"}
    )
    assert response.status_code == 200


def test_bodies_must_be_json(sandbox: Sandbox) -> None:
    text_headers = {"Content-Type": "text/plain"}
    assert embeddable_post(sandbox, json=None, content=b"{}", headers=text_headers).json() == {
        "errorMessage": "Content-Type must be application/json"
    }
    response = databrain_post(
        sandbox, json=None, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_REQUEST_BODY"
    assert sandbox.last_request("databrain")["body_error"] == "body is not JSON"


def test_embeddable_validation_errors_use_its_shape(sandbox: Sandbox) -> None:
    response = embeddable_post(sandbox, json={**EMBEDDABLE_BODY, "expiryInSeconds": "600"})

    assert response.status_code == 400
    assert response.json()["errorMessage"].startswith("invalid request: expiryInSeconds:")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"clientId": 5}, "CLIENT_ID_ERROR"),
        ({"dataAppName": "ops.app"}, "INVALID_REQUEST_BODY"),
        ({"expiryTime": None}, "INVALID_REQUEST_BODY"),
        ({"params": {"appFilters": [{"metricId": 1, "values": "x"}]}}, "APP_FILTER_PARAM_ERROR"),
        # As the live API answers: the appFilters code for a bad dashboardAppFilters entry.
        ({"params": {"dashboardAppFilters": [{"dashboardId": "d"}]}}, "APP_FILTER_PARAM_ERROR"),
        ({"params": {"rlsSettings": [{"metricId": "m"}]}}, "RLS_SETTINGS_PARAM_ERROR"),
        ({"params": {"allowedEmbeds": [3]}}, "INVALID_REQUEST_BODY"),
    ],
)
def test_databrain_validation_errors_use_its_shape_and_codes(
    sandbox: Sandbox, change: dict[str, Any], code: str
) -> None:
    response = databrain_post(sandbox, json={**DATABRAIN_BODY, **change})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]


@pytest.mark.parametrize(
    "change",
    [
        {"dataAppName": "sales-dashboard"},
        {"dataAppName": "Demo Sales Data App"},
        {"expiryTime": ...},
        {
            "params": {
                "allowedEmbeds": ["ops-dash"],
                "rlsSettings": [{"metricId": "m", "values": 1}],
            }
        },
    ],
)
def test_databrain_accepts_what_its_docs_and_demos_send(
    sandbox: Sandbox, change: dict[str, Any]
) -> None:
    body = {key: value for key, value in {**DATABRAIN_BODY, **change}.items() if value is not ...}

    response = databrain_post(sandbox, json=body)

    assert response.status_code == 200, response.text
    assert sandbox.last_request("databrain")["body"] == body


@pytest.mark.parametrize(
    ("filters", "status"),
    [
        ([{"member": "m", "operator": "set"}], 200),
        ([{"member": "m", "operator": "notSet"}], 200),
        ([{"member": "m", "operator": "equals", "values": ["x"]}], 200),
        ([{"member": "m", "operator": "set", "values": ["x"]}], 400),
        ([{"member": "m", "operator": "equals"}], 400),
    ],
)
def test_embeddable_filter_values_follow_the_operator(
    sandbox: Sandbox, filters: list[dict[str, Any]], status: int
) -> None:
    response = embeddable_post(sandbox, json={**EMBEDDABLE_BODY, "filters": filters})

    assert response.status_code == status
    if status == 400:
        assert set(response.json()) == {"errorMessage"}
        assert "filters.0" in response.json()["errorMessage"]


@pytest.mark.parametrize(
    "change",
    [{"expiryInSeconds": "600"}, {"dashboardState": "s"}, {"extra": 1}, {"embeddableId": ...}],
)
def test_embeddable_errors_carry_only_an_error_message(
    sandbox: Sandbox, change: dict[str, Any]
) -> None:
    body = {key: value for key, value in {**EMBEDDABLE_BODY, **change}.items() if value is not ...}

    response = embeddable_post(sandbox, json=body)

    assert response.status_code == 400
    assert set(response.json()) == {"errorMessage"}


def test_an_unknown_data_app_is_404_data_app_id_error(sandbox: Sandbox) -> None:
    response = databrain_post(sandbox, json={**DATABRAIN_BODY, "dataAppName": "otherapp"})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "DATA_APP_ID_ERROR"


def test_an_unknown_region_is_not_found(sandbox: Sandbox) -> None:
    response = embeddable_post(sandbox, region="ap")

    assert response.status_code == 404
    assert "errorMessage" in response.json()
    assert sandbox.requests() == []


@pytest.mark.parametrize(
    "path",
    ["/embeddable/eu/api/v1/security-token", "/databrain/api/v2/guest-token/create"],
)
def test_vendor_endpoints_take_only_post(sandbox: Sandbox, path: str) -> None:
    response = sandbox.control.get(f"{sandbox.url}{path}")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_a_body_over_the_limit_is_refused(sandbox: Sandbox) -> None:
    huge = {**EMBEDDABLE_BODY, "securityContext": {"blob": "x" * 70_000}}

    response = embeddable_post(sandbox, json=huge)

    assert response.status_code == 413
    assert "errorMessage" in response.json()


def test_health_and_unknown_paths(sandbox: Sandbox) -> None:
    assert sandbox.control.get(f"{sandbox.url}/healthz").json() == {"status": "ok"}
    assert sandbox.control.get(f"{sandbox.url}/nothing/here").status_code == 404
    assert sandbox.control.get(f"{sandbox.url}/_sandbox/nothing").status_code == 404
