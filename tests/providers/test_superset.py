"""SupersetProvider and PresetProvider against the sandbox over real HTTP.

The sandbox's Superset answers as a real Superset 6.1.0 does (tests/superset drives
one); here the broker's side: the three calls, the access token's reuse, its renewal
after a 401 and before its ``exp``, one login for many concurrent misses, the SQL
clause checks and the error mapping.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import yaml
from jose import jwt
from pydantic import TypeAdapter, ValidationError

import app.providers.superset as superset_module
from app.config.loader import ConfigError, load_policy_text
from app.errors import UpstreamAuthFailed, UpstreamRejected
from app.providers.base import EmbedElementConfig
from app.providers.errors import (
    ProviderAuthFailed,
    ProviderRejected,
    ProviderServerError,
)
from app.providers.mapping import to_broker_error
from app.providers.registry import ProviderConfig
from app.providers.superset import (
    PresetConfig,
    PresetProvider,
    SupersetConfig,
    SupersetProvider,
    session_cookie,
)
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
from tests.support.policies import BASE_ENV, base_policy

pytestmark = pytest.mark.anyio

LOGIN = "/superset/api/v1/security/login"
CSRF = "/superset/api/v1/security/csrf_token/"
GUEST = "/superset/api/v1/security/guest_token/"


def superset_config(sandbox: Sandbox, **overrides: Any) -> SupersetConfig:
    block = {
        "type": "superset",
        "base_url": sandbox.superset_url,
        "username": SUPERSET_USER,
        "password": SUPERSET_PASSWORD,
        **overrides,
    }
    parsed = TypeAdapter(ProviderConfig).validate_python(block)
    assert isinstance(parsed, SupersetConfig)
    return parsed


def preset_config(sandbox: Sandbox, **overrides: Any) -> PresetConfig:
    block = {
        "type": "preset",
        "api_url": sandbox.preset_url,
        "api_token": PRESET_TOKEN,
        "api_secret": PRESET_SECRET,
        "team": PRESET_TEAM,
        "workspace": PRESET_WORKSPACE,
        "superset_domain": "https://abc123.us1a.app.preset.io",
        **overrides,
    }
    parsed = TypeAdapter(ProviderConfig).validate_python(block)
    assert isinstance(parsed, PresetConfig)
    return parsed


def superset(sandbox: Sandbox, client: httpx.AsyncClient, **overrides: Any) -> SupersetProvider:
    return SupersetProvider("superset", superset_config(sandbox, **overrides), http_client=client)


def preset(sandbox: Sandbox, client: httpx.AsyncClient, **overrides: Any) -> PresetProvider:
    return PresetProvider("preset", preset_config(sandbox, **overrides), http_client=client)


def _no_request(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request was expected: {request.method} {request.url}")


def guest_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token, SUPERSET_GUEST_SECRET, algorithms=["HS256"], audience=SUPERSET_AUDIENCE
    )
    return claims


def calls(sandbox: Sandbox, path: str) -> list[dict[str, Any]]:
    return [entry for entry in sandbox.requests() if entry["path"] == path]


async def test_login_csrf_and_guest_token_in_order(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    issued = await superset(sandbox, client).issue(GUEST_BODY, 900, None)

    claims = guest_claims(issued.token)
    assert claims["rls_rules"] == GUEST_BODY["rls"]
    assert claims["user"] == GUEST_BODY["user"]
    assert claims["resources"] == [{"type": "dashboard", "id": SUPERSET_DASHBOARD}]
    # Superset's server-wide lifetime (300 s), read from the token, beats the broker's 900.
    assert issued.expires_at == pytest.approx(claims["exp"])
    assert [entry["path"] for entry in sandbox.requests()] == [LOGIN, CSRF, GUEST]
    guest = calls(sandbox, GUEST)[0]
    assert guest["headers"]["x-csrftoken"]
    assert guest["headers"]["cookie"].startswith("session=")
    assert guest["headers"]["authorization"] == "Bearer ***"
    assert calls(sandbox, LOGIN)[0]["body"] == {
        "username": SUPERSET_USER,
        "password": "***",
        "provider": "db",
        "refresh": False,
    }


async def test_rls_defaults_to_an_empty_list(sandbox: Sandbox, client: httpx.AsyncClient) -> None:
    body = {"resources": GUEST_BODY["resources"]}
    issued = await superset(sandbox, client).issue(body, 900, None)
    assert guest_claims(issued.token)["rls_rules"] == []
    assert calls(sandbox, GUEST)[0]["body"] == {**body, "rls": []}


async def test_the_access_token_is_reused_across_calls(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    provider = superset(sandbox, client)
    for tenant in ("acme", "globex", "initech"):
        body = {**GUEST_BODY, "rls": [{"clause": f"tenant_id = '{tenant}'"}]}
        await provider.issue(body, 900, None)
    assert len(calls(sandbox, LOGIN)) == provider.logins == 1
    assert len(calls(sandbox, GUEST)) == 3


async def test_concurrent_misses_share_one_login(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    provider = superset(sandbox, client)
    bodies = [{**GUEST_BODY, "rls": [{"clause": f"region = 'r{n}'"}]} for n in range(12)]
    issued = await asyncio.gather(*(provider.issue(body, 900, None) for body in bodies))
    assert len({grant.token for grant in issued}) == 12
    assert len(calls(sandbox, LOGIN)) == provider.logins == 1


async def test_concurrent_misses_with_a_wrong_password_make_one_failed_login(
    sandbox: Sandbox, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(superset_module, "LOGIN_REFUSED_HOLD_SECONDS", 0.0)
    # Each failed login counts towards a lockout (LDAP, an IdP policy): the calls that
    # waited on a refused login get its answer instead of trying again.
    provider = superset(sandbox, client, password="not-the-password-9f2c")
    bodies = [{**GUEST_BODY, "rls": [{"clause": f"region = 'r{n}'"}]} for n in range(12)]
    outcomes = await asyncio.gather(
        *(provider.issue(body, 900, None) for body in bodies), return_exceptions=True
    )
    assert all(isinstance(outcome, ProviderAuthFailed) for outcome in outcomes), outcomes
    assert len(calls(sandbox, LOGIN)) == 1
    # Once the hold is over, a call logs in again (the account may have been fixed).
    with pytest.raises(ProviderAuthFailed):
        await provider.issue(GUEST_BODY, 900, None)
    assert len(calls(sandbox, LOGIN)) == 2


async def test_refused_credentials_are_held_instead_of_tried_on_every_call(
    sandbox: Sandbox, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Steady traffic after a refusal: one failed login per hold, not one per call.
    monkeypatch.setattr(superset_module, "LOGIN_REFUSED_HOLD_SECONDS", 3600.0, raising=False)
    provider = superset(sandbox, client, password="not-the-password-9f2c")
    for _ in range(5):
        with pytest.raises(ProviderAuthFailed):
            await provider.issue(GUEST_BODY, 900, None)
    assert len(calls(sandbox, LOGIN)) == 1


async def test_a_revoked_access_token_is_renewed_once_on_401(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    provider = superset(sandbox, client)
    await provider.issue(GUEST_BODY, 900, None)
    sandbox.control.delete(f"{sandbox.url}/_sandbox/sessions").raise_for_status()

    issued = await provider.issue(GUEST_BODY, 900, None)

    assert guest_claims(issued.token)["rls_rules"] == GUEST_BODY["rls"]
    assert len(calls(sandbox, LOGIN)) == provider.logins == 2
    refused = [entry for entry in calls(sandbox, CSRF) if entry["status"] == 401]
    assert len(refused) == 1


async def test_an_access_token_is_renewed_before_its_exp(
    client: httpx.AsyncClient,
) -> None:
    # 20 s tokens are inside the 30 s renewal margin: each call needs a fresh login,
    # which shows the broker reads the access token's exp (a fixed guess would reuse).
    with contextmanager(running_sandbox)(superset_access_token_seconds=20) as short:
        provider = superset(short, client)
        await provider.issue(GUEST_BODY, 900, None)
        await provider.issue(GUEST_BODY, 900, None)
        assert len(calls(short, LOGIN)) == provider.logins == 2


async def test_wrong_credentials_are_upstream_auth_failed_without_the_password(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    provider = superset(sandbox, client, password="not-the-password-9f2c")
    with pytest.raises(ProviderAuthFailed) as caught:
        await provider.issue(GUEST_BODY, 900, None)
    assert caught.value.status == 401
    mapped = to_broker_error(caught.value)
    assert isinstance(mapped, UpstreamAuthFailed)
    for text in (str(caught.value), mapped.detail, repr(provider), repr(provider.config)):
        assert "not-the-password-9f2c" not in text
    assert calls(sandbox, GUEST) == []


async def test_an_unknown_embedded_dashboard_is_upstream_rejected(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    body = {**GUEST_BODY, "resources": [{"type": "dashboard", "id": "unknown-embed"}]}
    with pytest.raises(ProviderRejected) as caught:
        await superset(sandbox, client).issue(body, 900, None)
    mapped = to_broker_error(caught.value)
    assert isinstance(mapped, UpstreamRejected)
    assert mapped.extra["upstream_status"] == 400
    assert "EmbeddedDashboard not found." in mapped.detail


async def test_a_vendor_outage_at_login_is_retryable(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    sandbox.fault(vendor="superset", status=503, count=1)
    provider = superset(sandbox, client)
    with pytest.raises(ProviderServerError) as caught:
        await provider.issue(GUEST_BODY, 900, None)
    assert caught.value.retryable
    assert (await provider.issue(GUEST_BODY, 900, None)).token
    assert len(calls(sandbox, LOGIN)) == 2  # an outage is not held like a refusal


def test_the_element_is_the_sdk_with_the_embedded_id_and_domain(sandbox: Sandbox) -> None:
    provider = SupersetProvider(
        "superset",
        superset_config(sandbox, superset_domain="https://bi.example.com/"),
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(_no_request)),
    )
    element = provider.element(EmbedElementConfig(dashboard_id=SUPERSET_DASHBOARD), None)
    assert element.describe("t") == {
        "sdk": "@superset-ui/embedded-sdk",
        "options": {"id": SUPERSET_DASHBOARD, "supersetDomain": "https://bi.example.com"},
    }
    default = SupersetProvider(
        "s",
        superset_config(sandbox),
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(_no_request)),
    )
    options = default.element(EmbedElementConfig(dashboard_id="x"), None).describe("t")
    assert options["options"]["supersetDomain"] == sandbox.superset_url


def test_an_embed_needs_the_embedded_dashboard_id() -> None:
    for element in (None, EmbedElementConfig(metric_id="m")):
        with pytest.raises(ValueError, match=r"element\.dashboard_id"):
            SupersetProvider.validate_element(element)
    SupersetProvider.validate_element(EmbedElementConfig(dashboard_id=SUPERSET_DASHBOARD))


@pytest.mark.parametrize(
    ("clause", "reason"),
    [
        ("tenant_id = 'acme'; DROP TABLE users", "';'"),
        ("tenant_id = 'acme' -- and more", "'--'"),
        ("tenant_id = 'acme' /* x */", "'/*'"),
        ("tenant_id = 'ac\\'me'", "'\\\\'"),
        ("tenant_id = 'acme", "unbalanced quote"),
        ("tenant_id = 'acme'\nOR 1=1", "control characters"),
        ("   ", "empty"),
    ],
)
def test_unsafe_rls_clauses_are_refused(clause: str, reason: str) -> None:
    body = {**GUEST_BODY, "rls": [{"clause": clause}]}
    with pytest.raises(ValueError, match=r"rls\.0\.clause") as caught:
        SupersetProvider.validate_request(body)
    assert reason in str(caught.value)


async def test_an_unsafe_clause_is_refused_before_any_call(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    body = {**GUEST_BODY, "rls": [{"clause": "a = 'x'; DELETE FROM t"}]}
    with pytest.raises(ProviderRejected, match="refused before sending"):
        await superset(sandbox, client).issue(body, 900, None)
    assert sandbox.requests() == []


def superset_policy() -> dict[str, Any]:
    document = base_policy()
    document["providers"]["superset"] = {
        "type": "superset",
        "base_url": "https://bi.example.com",
        "username": "broker",
        "password": "${SUPERSET_PASSWORD}",
    }
    document["embeds"]["bi-sales"] = {
        "provider": "superset",
        "allow": {"tenants": ["*"]},
        "element": {"dashboard_id": SUPERSET_DASHBOARD},
        "request": {
            "user": {"username": "{user.id}"},
            "resources": [{"type": "dashboard", "id": SUPERSET_DASHBOARD}],
            "rls": [{"clause": "tenant_id = '{tenant.id}'"}],
        },
    }
    return document


ENV = {**BASE_ENV, "SUPERSET_PASSWORD": "s3cret-password"}


def test_the_loader_accepts_tenant_values_in_clauses() -> None:
    policy = load_policy_text(yaml.safe_dump(superset_policy()), environ=ENV)
    assert "bi-sales" in policy.embeds


@pytest.mark.parametrize("where", ["embed", "role"])
def test_the_loader_refuses_session_values_in_clauses(where: str) -> None:
    document = superset_policy()
    clause = {"clause": "owner = '{user.claims.owner}'"}
    if where == "embed":
        document["embeds"]["bi-sales"]["request"]["rls"].append(clause)
        path = r"embeds\.bi-sales\.request\.rls\[1\]\.clause"
    else:
        document["roles"]["analyst"]["superset"] = {"rls": [clause]}
        path = r"roles\.analyst\.superset\.rls\[0\]\.clause"
    with pytest.raises(ConfigError, match=path) as caught:
        load_policy_text(yaml.safe_dump(document), environ=ENV)
    assert "session value inside SQL" in str(caught.value)


def test_the_loader_refuses_a_clause_a_tenant_attribute_makes_unsafe() -> None:
    document = superset_policy()
    document["tenants"]["acme"]["attributes"]["code"] = "x' OR '1'='1"
    document["embeds"]["bi-sales"]["request"]["rls"] = [
        {"clause": "code = '{tenant.attributes.code}"}
    ]
    with pytest.raises(ConfigError, match="unbalanced quote"):
        load_policy_text(yaml.safe_dump(document), environ=ENV)


@pytest.mark.parametrize("where", ["embed", "role"])
def test_the_loader_refuses_a_tenant_value_that_ends_its_sql_literal(where: str) -> None:
    # Balanced quotes: the clause check alone sees valid SQL reading every tenant's rows.
    document = superset_policy()
    document["tenants"]["acme"]["attributes"]["code"] = "x' OR '1'='1"
    document["tenants"]["globex"]["attributes"]["code"] = "globex"
    clause = {"clause": "code = '{tenant.attributes.code}'"}
    if where == "embed":
        document["embeds"]["bi-sales"]["request"]["rls"] = [clause]
        path = r"embeds\.bi-sales\.request\.rls\[0\]\.clause"
    else:
        document["roles"]["analyst"]["superset"] = {"rls": [clause]}
        path = r"roles\.analyst\.superset\.rls\[0\]\.clause"
    with pytest.raises(ConfigError, match=path) as caught:
        load_policy_text(yaml.safe_dump(document), environ=ENV)
    message = str(caught.value)
    assert "{tenant.attributes.code} of tenant 'acme'" in message
    assert "must not contain a quote" in message
    assert "'globex'" not in message


def test_a_clause_that_is_wholly_a_tenant_value_is_the_operators_sql() -> None:
    document = superset_policy()
    document["tenants"]["acme"]["attributes"]["rls"] = "org IN ('a', 'b')"
    document["tenants"]["globex"]["attributes"]["rls"] = "org = 'globex'"
    document["embeds"]["bi-sales"]["request"]["rls"] = [{"clause": "{tenant.attributes.rls}"}]
    assert "bi-sales" in load_policy_text(yaml.safe_dump(document), environ=ENV).embeds


@pytest.mark.parametrize(
    ("kind", "overrides", "reason"),
    [
        # supersetDomain defaults to base_url and goes to every browser in the element.
        (
            "superset",
            {"base_url": "https://proxy:canary-pw-31@bi.example.com"},
            "set superset_domain",
        ),
        (
            "superset",
            {"superset_domain": "https://proxy:canary-pw-31@bi.example.com"},
            "must not carry",
        ),
        (
            "preset",
            {"superset_domain": "https://u:canary-pw-31@x.us1a.app.preset.io"},
            "must not carry",
        ),
    ],
)
def test_a_browser_facing_url_with_credentials_is_refused(
    sandbox: Sandbox, kind: str, overrides: dict[str, Any], reason: str
) -> None:
    make = superset_config if kind == "superset" else preset_config
    with pytest.raises(ValidationError, match=reason) as caught:
        make(sandbox, **overrides)
    assert all("canary-pw-31" not in error["msg"] for error in caught.value.errors())


def test_base_url_credentials_are_fine_with_a_separate_superset_domain(sandbox: Sandbox) -> None:
    parsed = superset_config(
        sandbox,
        base_url="https://proxy:pw@bi.internal.example.com",
        superset_domain="https://bi.example.com",
    )
    assert str(parsed.superset_domain) == "https://bi.example.com/"


def test_config_checks() -> None:
    with pytest.raises(ValidationError, match="cleartext"):
        TypeAdapter(ProviderConfig).validate_python(
            {
                "type": "superset",
                "base_url": "http://bi.example.com",
                "username": "u",
                "password": "p",
            }
        )
    with pytest.raises(ValidationError, match="control character"):
        TypeAdapter(ProviderConfig).validate_python(
            {
                "type": "superset",
                "base_url": "https://bi.example.com",
                "username": "u",
                "password": "p\n",
            }
        )
    with pytest.raises(ValidationError, match="superset_domain"):
        TypeAdapter(ProviderConfig).validate_python(
            {"type": "preset", "api_token": "t", "api_secret": "s", "team": "a", "workspace": "b"}
        )


def test_session_cookie_returns_only_name_value_pairs() -> None:
    headers = httpx.Headers(
        [("set-cookie", "session=abc.def; HttpOnly; Path=/; SameSite=Lax"), ("set-cookie", "x=1")]
    )
    assert session_cookie(headers) == "session=abc.def; x=1"
    assert session_cookie(httpx.Headers()) is None


# --- Preset ------------------------------------------------------------------------------


async def test_preset_auth_then_the_workspace_guest_token(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    provider = preset(sandbox, client)
    issued = await provider.issue(GUEST_BODY, 900, None)
    await provider.issue({**GUEST_BODY, "rls": []}, 900, None)

    assert guest_claims(issued.token)["rls_rules"] == GUEST_BODY["rls"]
    paths = [entry["path"] for entry in sandbox.requests(vendor="preset")]
    guest = f"/preset/v1/teams/{PRESET_TEAM}/workspaces/{PRESET_WORKSPACE}/guest-token/"
    assert paths == ["/preset/v1/auth/", guest, guest]
    assert provider.logins == 1
    assert sandbox.requests(vendor="preset")[0]["body"] == {"name": PRESET_TOKEN, "secret": "***"}
    element = provider.element(EmbedElementConfig(dashboard_id="e-1"), None).describe("t")
    assert element["options"] == {
        "id": "e-1",
        "supersetDomain": "https://abc123.us1a.app.preset.io",
    }


async def test_preset_wrong_secret_is_auth_failed_and_revocation_renews(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    with pytest.raises(ProviderAuthFailed):
        await preset(sandbox, client, api_secret="wrong-secret").issue(GUEST_BODY, 900, None)
    provider = preset(sandbox, client)
    await provider.issue(GUEST_BODY, 900, None)
    sandbox.control.delete(f"{sandbox.url}/_sandbox/sessions").raise_for_status()
    assert (await provider.issue(GUEST_BODY, 900, None)).token
    assert provider.logins == 2
    assert PRESET_SECRET not in repr(provider) + repr(provider.config)
