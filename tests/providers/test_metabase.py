"""MetabaseProvider: the signed embed token, checked with an independent JWT library.

The broker signs with python-jose; these tests verify with PyJWT, so a token that only
python-jose itself would accept (a wrong header, a payload Metabase would not read)
fails here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from pydantic import SecretStr, TypeAdapter, ValidationError

from app.config.loader import ConfigError, load_policy_text
from app.providers.base import BaseProvider, EmbedElementConfig
from app.providers.metabase import MetabaseConfig, MetabaseProvider, sign, signed_resource_kind
from app.providers.registry import ProviderConfig
from tests.support.policies import BASE_ENV, base_policy
from tests.support.stack import bearer, running_stack, session_token

pytestmark = pytest.mark.anyio

SECRET = "5f3c1e0b9a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b"
SITE = "https://metabase.example.com"


def config(**overrides: Any) -> MetabaseConfig:
    block = {"type": "metabase", "site_url": SITE, "secret": SECRET, **overrides}
    parsed = TypeAdapter(ProviderConfig).validate_python(block)
    assert isinstance(parsed, MetabaseConfig)
    return parsed


def test_a_site_url_with_credentials_is_refused() -> None:
    # The iframe URL is built from site_url and handed to every viewer's browser.
    with pytest.raises(ValidationError, match="must not carry a user name or password") as caught:
        config(site_url="https://viewer:canary-pw-31@metabase.example.com")
    assert all("canary-pw-31" not in error["msg"] for error in caught.value.errors())


def _no_request(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"a signer made an outbound request: {request.method} {request.url}")


def provider(**overrides: Any) -> MetabaseProvider:
    # Every provider takes the outbound client; a signer's fails the test if it is used.
    client = httpx.AsyncClient(transport=httpx.MockTransport(_no_request))
    return MetabaseProvider("metabase", config(**overrides), http_client=client)


def verified(token: str, secret: str = SECRET) -> dict[str, Any]:
    claims: dict[str, Any] = pyjwt.decode(
        token, secret, algorithms=["HS256"], options={"require": ["exp"]}
    )
    return claims


async def test_the_token_is_hs256_over_resource_locked_params_and_exp() -> None:
    body = {"resource": {"dashboard": 12}, "params": {"tenant_id": "acme", "region": ["eu"]}}
    before = int(time.time())
    issued = await provider().issue(body, 600, None)
    after = int(time.time())

    assert pyjwt.get_unverified_header(issued.token)["alg"] == "HS256"
    claims = verified(issued.token)
    assert claims == {
        "resource": {"dashboard": 12},
        "params": {"tenant_id": "acme", "region": ["eu"]},
        "exp": claims["exp"],
    }
    assert before + 600 <= claims["exp"] <= after + 600
    assert issued.expires_at == claims["exp"]
    assert issued.vendor_status is None  # nothing was called


async def test_params_default_to_an_empty_object_metabase_requires() -> None:
    issued = await provider().issue({"resource": {"question": 7}}, 60, None)
    assert verified(issued.token)["params"] == {}


async def test_a_token_signed_with_another_secret_does_not_verify() -> None:
    other = "0" * 64
    forged = sign({"resource": {"dashboard": 12}}, SecretStr(other), int(time.time()) + 60)
    with pytest.raises(pyjwt.InvalidSignatureError):
        verified(forged)
    # and the broker's own token does not verify under another secret
    issued = await provider().issue({"resource": {"dashboard": 12}}, 60, None)
    with pytest.raises(pyjwt.InvalidSignatureError):
        verified(issued.token, other)


async def test_the_iframe_url_names_the_resource_kind_and_carries_the_token() -> None:
    built = provider()
    for kind in ("dashboard", "question"):
        issued = await built.issue({"resource": {kind: 3}}, 60, None)
        element = built.element(None, None)
        assert element.describe(issued.token) == {
            "iframe": f"{SITE}/embed/{kind}/{issued.token}#bordered=true&titled=true"
        }


async def test_bordered_and_titled_are_configurable() -> None:
    built = provider(bordered=False, titled=False, site_url=f"{SITE}/bi/")
    issued = await built.issue({"resource": {"dashboard": 3}}, 60, None)
    url = built.element(None, None).describe(issued.token)["iframe"]
    assert url == f"{SITE}/bi/embed/dashboard/{issued.token}#bordered=false&titled=false"


def test_an_entity_id_is_a_resource_too() -> None:
    MetabaseProvider.validate_request({"resource": {"dashboard": "Xq3bXBnP1bQhV5yH9vXNc"}})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"resource": {}}, "exactly one of dashboard or question"),
        ({"resource": {"dashboard": 1, "question": 2}}, "exactly one of dashboard or question"),
        ({"resource": {"dashboard": 0}}, "positive"),
        ({"resource": {"dashboard": "12; drop"}}, "entity id"),
        ({"resource": {"dashboard": True}}, "resource.dashboard"),
        ({"resource": {"card": 1}}, "resource.card: unknown field"),
        ({"params": {"tenant": "acme"}}, "resource: Field required"),
        ({"resource": {"dashboard": 1}, "params": {"t": {"nested": 1}}}, "params.t"),
    ],
)
def test_invalid_requests_name_the_field(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        MetabaseProvider.validate_request(body)
    assert reason in str(caught.value)


def test_metabase_embeds_take_no_element_block() -> None:
    MetabaseProvider.validate_element(None)
    with pytest.raises(ValueError, match="no element block"):
        MetabaseProvider.validate_element(EmbedElementConfig(dashboard_id="12"))


@pytest.mark.parametrize(
    ("secret", "ok"),
    [
        (SECRET, True),
        (SECRET.upper(), True),
        (SECRET[:-1], False),
        (SECRET + "\n", False),
        ("g" * 64, False),
    ],
)
def test_the_secret_is_64_hex_characters_and_never_echoed(secret: str, ok: bool) -> None:
    if ok:
        config(secret=secret)
        return
    with pytest.raises(ValidationError) as caught:
        config(secret=secret)
    assert "64 hexadecimal characters" in str(caught.value)
    assert secret.strip() not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://metabase.example.com", True),
        ("http://127.0.0.1:3000", True),
        ("http://metabase:3000", True),
        ("http://metabase.example.com", False),
    ],
)
def test_the_site_url_is_https_except_on_loopback(url: str, ok: bool) -> None:
    if ok:
        config(site_url=url)
        return
    with pytest.raises(ValidationError, match="use https"):
        config(site_url=url)


def test_repr_and_secrets() -> None:
    built = provider()
    assert SECRET not in repr(built)
    assert SECRET not in repr(built.config)
    assert [s.get_secret_value() for s in built.config.secrets()] == [SECRET]
    assert isinstance(built, BaseProvider)


def test_signed_resource_kind_refuses_what_is_no_metabase_token() -> None:
    with pytest.raises(ValueError, match="not a Metabase embed token"):
        signed_resource_kind("not-a-jwt")


def metabase_policy() -> dict[str, Any]:
    document = base_policy()
    document["providers"]["metabase"] = {
        "type": "metabase",
        "site_url": SITE,
        "secret": "${METABASE_EMBEDDING_SECRET}",
    }
    document["embeds"]["mb-sales"] = {
        "provider": "metabase",
        "allow": {"tenants": ["*"]},
        "token_ttl_seconds": 300,
        "request": {
            "resource": {"dashboard": 12},
            "params": {"tenant_id": "{tenant.id}", "user_id": "{user.id}"},
        },
    }
    return document


def test_the_loader_refuses_exp_in_the_request() -> None:
    import yaml

    document = metabase_policy()
    document["embeds"]["mb-sales"]["request"]["exp"] = 1
    env = {**BASE_ENV, "METABASE_EMBEDDING_SECRET": SECRET}
    with pytest.raises(ConfigError, match=r"embeds\.mb-sales\.request\.exp"):
        load_policy_text(yaml.safe_dump(document), environ=env)


def test_through_the_broker_signed_cached_and_isolated(tmp_path: Path) -> None:
    """Over real HTTP: the token verifies, the iframe carries it, a repeat is a cache
    hit, and another tenant's token locks another tenant id."""
    env = {"METABASE_EMBEDDING_SECRET": SECRET}
    with running_stack(tmp_path, metabase_policy(), env=env) as stack:
        first = stack.token("mb-sales")
        assert first.status_code == 200, first.text
        grant = first.json()
        claims = verified(grant["token"])
        assert claims["resource"] == {"dashboard": 12}
        assert claims["params"] == {"tenant_id": "acme", "user_id": "alice"}
        assert grant["provider"] == "metabase"
        assert grant["element"] == {
            "iframe": f"{SITE}/embed/dashboard/{grant['token']}#bordered=true&titled=true"
        }
        assert 0 < grant["expires_in"] <= 300

        again = stack.token("mb-sales")
        assert again.json()["token"] == grant["token"]

        other = stack.client.post(
            f"{stack.broker}/v1/tokens",
            json={"embed": "mb-sales"},
            headers=bearer(session_token(user="bob", tenants="globex")),
        )
        assert other.status_code == 200, other.text
        assert verified(other.json()["token"])["params"] == {
            "tenant_id": "globex",
            "user_id": "bob",
        }
        metrics = stack.client.get(f"{stack.broker}/metrics").text
        assert 'provider="metabase"' in metrics
        assert SECRET not in metrics
        assert stack.vendor_requests() == []  # a signer calls no vendor
