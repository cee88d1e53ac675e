"""The stand-in web components the sandbox serves, and the token look-up they use."""

from __future__ import annotations

import httpx

from app.sandbox.components import SCRIPT_FILE
from tests.sandbox.harness import Sandbox, databrain_post, embeddable_post


def test_components_script_is_served_to_any_origin(sandbox: Sandbox) -> None:
    response = httpx.get(
        f"{sandbox.url}/_sandbox/components.js", headers={"Origin": "http://app.test"}
    )
    assert response.status_code == 200
    assert response.content == SCRIPT_FILE.read_bytes()
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
    assert response.headers["etag"].startswith('"')


def test_components_define_the_vendors_real_tag_names() -> None:
    source = SCRIPT_FILE.read_text()
    for tag in ("em-beddable", "dbn-dashboard", "dbn-metric"):
        assert f'["{tag}",' in source
    assert "eval(" not in source and "innerHTML" not in source


def test_a_page_on_another_origin_may_read_what_a_token_was_issued_for(sandbox: Sandbox) -> None:
    token = embeddable_post(sandbox, region="eu", key="test-embeddable-eu-key").json()["token"]
    response = httpx.get(f"{sandbox.url}/_sandbox/tokens/{token}")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    request = response.json()["request"]
    assert request["body"]["securityContext"]
    assert request["headers"]["authorization"] == "Bearer ***"
    assert "test-embeddable-eu-key" not in response.text

    databrain = databrain_post(sandbox).json()["token"]
    assert httpx.get(f"{sandbox.url}/_sandbox/tokens/{databrain}").json()["request"]["body"][
        "clientId"
    ]
    missing = httpx.get(f"{sandbox.url}/_sandbox/tokens/no-such-token")
    assert missing.status_code == 404
    assert missing.headers["access-control-allow-origin"] == "*"
