"""``GET /v1/client.js`` over real HTTP: the module, its caching headers, CORS."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.api import client
from app.main import create_app
from app.settings import Settings
from tests.support.policies import BASE_ENV, base_policy, write_policy
from tests.support.servers import serve_in_thread

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE = REPO_ROOT / "clients" / "js" / "token-broker.js"
ALLOWED_ORIGIN = "http://localhost:3000"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    document = base_policy()
    document["cors"] = {"allow_origins": [ALLOWED_ORIGIN]}
    path = write_policy(tmp_path_factory.mktemp("client-js"), document)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in BASE_ENV.items():
            patch.setenv(key, value)
        with serve_in_thread(create_app(Settings(config=path))) as base_url:
            yield base_url


def test_serves_the_repository_module_with_a_strong_etag(broker: str) -> None:
    response = httpx.get(f"{broker}/v1/client.js")
    assert response.status_code == 200
    assert response.content == SOURCE.read_bytes()
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "public, max-age=300"
    etag = response.headers["etag"]
    assert etag == f'"{hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:32]}"'
    assert not etag.startswith("W/")
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("form", ["{etag}", "W/{etag}", '"other", {etag}', "*"])
def test_if_none_match_revalidates_with_304(broker: str, form: str) -> None:
    etag = httpx.get(f"{broker}/v1/client.js").headers["etag"]
    response = httpx.get(
        f"{broker}/v1/client.js", headers={"If-None-Match": form.format(etag=etag)}
    )
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag


def test_a_stale_etag_gets_the_module(broker: str) -> None:
    response = httpx.get(f"{broker}/v1/client.js", headers={"If-None-Match": '"stale"'})
    assert response.status_code == 200
    assert response.content == SOURCE.read_bytes()


def test_needs_no_credentials_and_a_listed_origin_may_import_it(broker: str) -> None:
    response = httpx.get(f"{broker}/v1/client.js", headers={"Origin": ALLOWED_ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


def test_is_in_the_openapi_document(broker: str) -> None:
    paths = httpx.get(f"{broker}/openapi.json").json()["paths"]
    assert paths["/v1/client.js"]["get"]["operationId"] == "getClientScript"


def test_the_packaged_copy_wins_over_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packaged = tmp_path / "static"
    packaged.mkdir()
    (packaged / client.CLIENT_FILE).write_text("export const packaged = true;\n")
    monkeypatch.setattr(client, "PACKAGED_DIR", packaged)
    assert client.client_script_path() == packaged / client.CLIENT_FILE
    monkeypatch.setattr(client, "PACKAGED_DIR", tmp_path / "missing")
    assert client.client_script_path() == SOURCE


def test_a_missing_module_fails_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "PACKAGED_DIR", tmp_path / "a")
    monkeypatch.setattr(client, "SOURCE_DIR", tmp_path / "b")
    with pytest.raises(FileNotFoundError, match=r"token-broker\.js"):
        client.client_script_path()
