"""The demo page's server side over real HTTP: page, CSP, dev session, pass-through."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.demo import Demo, running_demo


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    with running_demo() as running:
        yield running


def test_the_page_names_the_sandbox_and_has_a_strict_csp(demo: Demo) -> None:
    response = httpx.get(demo.page)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert f'href="{demo.sandbox}/_sandbox/requests"' in response.text
    assert "{{SANDBOX}}" not in response.text
    csp = response.headers["content-security-policy"]
    assert f"script-src 'self' {demo.sandbox};" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "<script>" not in response.text, "no inline script"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("demo.js", "text/javascript; charset=utf-8"), ("demo.css", "text/css; charset=utf-8")],
)
def test_assets(demo: Demo, name: str, content_type: str) -> None:
    response = httpx.get(f"{demo.page}{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type


def test_the_page_imports_the_client_the_broker_serves(demo: Demo) -> None:
    assert 'from "/v1/client.js"' in httpx.get(f"{demo.page}demo.js").text
    assert httpx.get(f"{demo.broker}/v1/client.js").status_code == 200


def test_the_dev_session_works_for_both_tenants(demo: Demo) -> None:
    response = httpx.get(f"{demo.page}session")
    assert response.headers["cache-control"] == "no-store"
    session = response.json()
    assert session["user"] == "alice"
    assert [t["id"] for t in session["tenants"]] == ["acme", "globex"]
    headers = {"Authorization": f"Bearer {session['token']}"}
    for tenant in ("acme", "globex"):
        embeds = httpx.get(f"{demo.broker}/v1/embeds", params={"tenant": tenant}, headers=headers)
        assert embeds.status_code == 200, embeds.text
        providers = {e["provider"] for e in embeds.json()["embeds"]}
        assert providers == {"embeddable", "databrain", "superset"}
        for embed in embeds.json()["embeds"]:
            grant = httpx.post(
                f"{demo.broker}/v1/tokens",
                json={"embed": embed["name"], "tenant": tenant},
                headers=headers,
            )
            assert grant.status_code == 200, grant.text
            # short on purpose: a visitor sees a refresh within a minute
            assert grant.json()["expires_in"] <= 60
            element = grant.json()["element"]
            if embed["provider"] == "superset":
                # Superset renders through its SDK: the page loads the sandbox's stand-in.
                assert element == {
                    "sdk": "@superset-ui/embedded-sdk",
                    "options": {
                        "id": "5b1c8a0e-0000-4000-8000-000000000021",
                        "supersetDomain": f"{demo.sandbox}/superset",
                    },
                }
                continue
            # the stand-in components come as element.script, loaded by the client
            assert element["script"] == f"{demo.sandbox}/_sandbox/components.js"


def test_other_paths_reach_the_broker(demo: Demo) -> None:
    assert httpx.get(f"{demo.broker}/healthz").json() == {"status": "ok"}
    assert httpx.post(f"{demo.broker}/v1/tokens", json={}).json()["code"] == "unauthenticated"


def test_root_redirects_to_the_page(demo: Demo) -> None:
    response = httpx.get(f"{demo.broker}/")
    assert response.status_code == 307
    assert response.headers["location"] == "/demo/"


def test_unknown_files_and_methods(demo: Demo) -> None:
    assert httpx.get(f"{demo.page}secret.txt").status_code == 404
    assert httpx.post(f"{demo.page}session").status_code == 405
