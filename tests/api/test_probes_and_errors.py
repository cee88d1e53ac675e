"""Probes, OpenAPI and problem bodies over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.support.policies import BASE_ENV, base_policy, write_policy
from tests.support.servers import serve_in_thread


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = write_policy(tmp_path_factory.mktemp("probes"), base_policy())
    with pytest.MonkeyPatch.context() as patch:
        for key, value in BASE_ENV.items():
            patch.setenv(key, value)
        app = create_app(Settings(config=Path(path)))
        with serve_in_thread(app) as base_url:
            yield base_url


def test_healthz(broker: str) -> None:
    response = httpx.get(f"{broker}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


def test_readyz_names_each_check(broker: str) -> None:
    response = httpx.get(f"{broker}/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["config"] == "ok"


def test_openapi_is_served(broker: str) -> None:
    response = httpx.get(f"{broker}/openapi.json")
    assert response.status_code == 200
    assert "/healthz" in response.json()["paths"]


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [("abc-123_X.y", True), ("x" * 128, True), ("x" * 129, False), ("bad id!", False), ("", False)],
)
def test_request_id_is_echoed_only_when_sane(broker: str, sent: str, echoed: bool) -> None:
    response = httpx.get(f"{broker}/healthz", headers={"X-Request-ID": sent})
    returned = response.headers["x-request-id"]
    assert (returned == sent) is echoed
    assert 1 <= len(returned) <= 128


def test_unknown_route_is_a_problem_body(broker: str) -> None:
    response = httpx.get(f"{broker}/nope", headers={"X-Request-ID": "req-404"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "not_found" and body["request_id"] == "req-404"
    assert body["type"].endswith("/not_found") and body["status"] == 404


def test_wrong_method_is_a_problem_body(broker: str) -> None:
    response = httpx.post(f"{broker}/healthz")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert "GET" in response.headers["allow"]
