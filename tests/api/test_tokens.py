"""POST /v1/tokens, GET /v1/embeds and POST /internal/v1/tokens over real HTTP,
with the sandbox as the vendors."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.policies import BASE_ENV, SERVICE_KEY, base_policy
from tests.support.stack import Stack, bearer, running_stack, session_token


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    document = base_policy()
    document["session"]["cookie"] = "app_session"
    document["cors"] = {"allow_origins": ["https://app.example.com"]}
    document["embeds"]["claims-embed"] = {
        "provider": "embeddable",
        "allow": {"tenants": ["*"]},
        "request": {
            "embeddableId": "claims-embed-id",
            "user": "{user.id}",
            "securityContext": {
                "department": "{user.claims.org.department}",
                "mail": "{user.email}",
            },
        },
    }
    document["embeds"]["roles-embed"] = {
        "provider": "embeddable",
        "allow": {"tenants": ["*"]},
        "request": {"embeddableId": "roles-embed-id", "user": "{user.id}", "roles": "{user.roles}"},
    }
    with running_stack(tmp_path_factory.mktemp("tokens"), document) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean(stack: Stack) -> None:
    stack.clear_vendor_requests()
    stack.clear_faults()


def unique_user(prefix: str = "user") -> str:
    return f"{prefix}-{time.monotonic_ns()}"


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    return dict(body)


# --- success ------------------------------------------------------------------------------


def test_embeddable_token_for_an_eu_tenant(stack: Stack) -> None:
    user = unique_user()
    response = stack.token("sales-overview", session_token(user, "acme", ("viewer",)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "token",
        "provider",
        "embed",
        "tenant",
        "expires_at",
        "expires_in",
        "element",
    }
    assert body["provider"] == "embeddable"
    assert body["embed"] == "sales-overview"
    assert body["tenant"] == "acme"
    assert 890 <= body["expires_in"] <= 900
    expires_at = dt.datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=dt.UTC
    )
    assert abs(expires_at.timestamp() - (time.time() + body["expires_in"])) < 5
    assert body["element"] == {
        "tag": "em-beddable",
        "attributes": {"base-url": f"{stack.sandbox}/embeddable/eu/"},
        "script": "https://embed.embeddable.com/js/v1/?region=EU",
    }
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["ratelimit-limit"] == "600"

    (call,) = stack.vendor_requests("embeddable")
    assert call["region"] == "eu"
    assert call["status"] == 200
    assert call["token"] == body["token"]
    assert call["body"] == {
        "embeddableId": "c2b1a0de-0000-4000-8000-000000000001",
        "savedVersion": "production",
        "user": user,
        "environment": "acme-prod",
        "securityContext": {"userId": user, "tenantId": "acme", "regions": ["eu-west"]},
        "expiryInSeconds": 900,
    }
    # The key is the EU key (the sandbox checks it); the recording masks it.
    assert call["authorized"] is True
    assert BASE_ENV["EMBEDDABLE_EU_API_KEY"] not in str(call)


def test_us_tenant_goes_to_the_us_region_with_the_us_key(stack: Stack) -> None:
    user = unique_user()
    response = stack.token("sales-overview", session_token(user, "globex", ("viewer",)))
    assert response.status_code == 200, response.text
    assert response.json()["element"]["attributes"]["base-url"] == f"{stack.sandbox}/embeddable/us/"
    (call,) = stack.vendor_requests("embeddable")
    assert call["region"] == "us"
    assert call["authorized"] is True
    assert call["body"]["securityContext"] == {
        "userId": user,
        "tenantId": "globex",
        "regions": ["us-east"],
    }
    assert call["body"]["environment"] == "globex-prod"


def test_databrain_with_role_additions_merged(stack: Stack) -> None:
    user = unique_user()
    response = stack.token("ops-dashboard", session_token(user, "acme", ("analyst",)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["provider"] == "databrain"
    assert body["element"] == {"tag": "dbn-dashboard", "attributes": {"dashboard-id": "ops-dash"}}
    (call,) = stack.vendor_requests("databrain")
    assert call["body"] == {
        "clientId": "acme",
        "dataAppName": "opsapp",
        "datasourceName": "acme-warehouse",
        "params": {
            "userIdentifier": user,
            "dashboardAppFilters": [{"dashboardId": "ops-dash", "values": {"region": ["eu-west"]}}],
        },
        "permissions": {"isShowSideBar": False, "isEnableUnderlyingData": True},
        "expiryTime": 600_000,
    }


def test_role_additions_reach_embeddable_roles_only_for_that_role(stack: Stack) -> None:
    analyst, viewer = unique_user("analyst"), unique_user("viewer")
    assert (
        stack.token("sales-overview", session_token(analyst, "acme", ("analyst",))).status_code
        == 200
    )
    assert (
        stack.token("sales-overview", session_token(viewer, "acme", ("viewer",))).status_code == 200
    )
    calls = {c["body"]["user"]: c["body"] for c in stack.vendor_requests("embeddable")}
    assert calls[analyst]["roles"] == ["analyst"]
    assert "roles" not in calls[viewer]


def test_role_additions_join_lists_that_come_from_the_user(stack: Stack) -> None:
    user = unique_user()
    assert (
        stack.token(
            "roles-embed", session_token(user, "acme", ("viewer", "analyst", "auditor"))
        ).status_code
        == 200
    )
    (call,) = stack.vendor_requests()
    assert call["body"]["roles"] == [
        "viewer",
        "analyst",
        "auditor",
    ]  # analyst adds "analyst": no repeat


def test_repeat_requests_are_served_from_the_cache(stack: Stack) -> None:
    token = session_token(unique_user(), "acme", ("viewer",))
    first = stack.token("sales-overview", token).json()
    second = stack.token("sales-overview", token).json()
    assert second["token"] == first["token"]
    assert second["expires_at"] == first["expires_at"]
    assert second["expires_in"] <= first["expires_in"]
    assert len(stack.vendor_requests()) == 1


def test_different_users_never_share_a_token(stack: Stack) -> None:
    one = stack.token("sales-overview", session_token(unique_user(), "acme")).json()
    two = stack.token("sales-overview", session_token(unique_user(), "acme")).json()
    assert one["token"] != two["token"]
    assert len(stack.vendor_requests()) == 2


def test_claims_and_email_templates(stack: Stack) -> None:
    user = unique_user()
    token = session_token(user, "acme", email="e@acme.test", org={"department": "finance"})
    assert stack.token("claims-embed", token).status_code == 200
    (call,) = stack.vendor_requests()
    assert call["body"]["securityContext"] == {"department": "finance", "mail": "e@acme.test"}


def test_missing_claim(stack: Stack) -> None:
    body = problem(
        stack.token("claims-embed", session_token(unique_user(), "acme")), 403, "missing_claim"
    )
    assert "org.department" in body["detail"]
    assert stack.vendor_requests() == []


def test_missing_email_is_a_missing_claim(stack: Stack) -> None:
    token = session_token(unique_user(), "acme", email=None, org={"department": "x"})
    problem(stack.token("claims-embed", token), 403, "missing_claim")


# --- tenants ------------------------------------------------------------------------------


def test_multi_tenant_user_must_choose(stack: Stack) -> None:
    token = session_token(unique_user(), ["acme", "globex"], ("viewer",))
    body = problem(stack.token("sales-overview", token), 400, "invalid_request")
    assert "tenant" in body["detail"]
    chosen = stack.token("sales-overview", token, tenant="globex")
    assert chosen.status_code == 200
    assert chosen.json()["tenant"] == "globex"
    (call,) = stack.vendor_requests()
    assert call["region"] == "us"


def test_tenant_not_granted_by_the_session(stack: Stack) -> None:
    token = session_token(unique_user(), "acme", ("viewer",))
    problem(stack.token("sales-overview", token, tenant="globex"), 403, "tenant_not_allowed")
    assert stack.vendor_requests() == []


def test_tenant_unknown_to_the_config(stack: Stack) -> None:
    problem(
        stack.token("sales-overview", session_token(unique_user(), "initech")),
        403,
        "tenant_not_allowed",
    )


# --- embeds -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("embed", "tenant", "roles"),
    [
        ("no-such-embed", "acme", ("analyst",)),
        ("ops-dashboard", "acme", ("viewer",)),  # role not allowed
        ("ops-dashboard", "globex", ("analyst",)),  # tenant not allowed
        ("sales-overview", "acme", ()),  # no role at all
    ],
)
def test_unknown_and_disallowed_embeds_share_one_code(
    stack: Stack, embed: str, tenant: str, roles: tuple[str, ...]
) -> None:
    response = stack.token(embed, session_token(unique_user(), tenant, roles))
    problem(response, 403, "embed_not_allowed")
    assert stack.vendor_requests() == []


def test_list_embeds(stack: Stack) -> None:
    response = stack.client.get(
        f"{stack.broker}/v1/embeds", headers=bearer(session_token("a", "acme", ("analyst",)))
    )
    assert response.status_code == 200
    assert response.json() == {
        "tenant": "acme",
        "embeds": [
            {"name": "sales-overview", "title": "Sales overview", "provider": "embeddable"},
            {"name": "ops-dashboard", "title": None, "provider": "databrain"},
            {"name": "claims-embed", "title": None, "provider": "embeddable"},
            {"name": "roles-embed", "title": None, "provider": "embeddable"},
        ],
    }
    viewer = stack.client.get(
        f"{stack.broker}/v1/embeds",
        params={"tenant": "globex"},
        headers=bearer(session_token("b", ["acme", "globex"], ("viewer",))),
    )
    assert [e["name"] for e in viewer.json()["embeds"]] == [
        "sales-overview",
        "claims-embed",
        "roles-embed",
    ]
    problem(
        stack.client.get(
            f"{stack.broker}/v1/embeds",
            params={"tenant": "globex"},
            headers=bearer(session_token("c", "acme")),
        ),
        403,
        "tenant_not_allowed",
    )


# --- credentials --------------------------------------------------------------------------


def test_no_credentials(stack: Stack) -> None:
    response = stack.client.post(f"{stack.broker}/v1/tokens", json={"embed": "sales-overview"})
    problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == "Bearer"


def test_garbage_bearer_is_invalid_session(stack: Stack) -> None:
    response = stack.client.post(
        f"{stack.broker}/v1/tokens", json={"embed": "sales-overview"}, headers=bearer("not-a-jwt")
    )
    body = problem(response, 401, "invalid_session")
    assert "not-a-jwt" not in response.text
    assert body["status"] == 401


def test_expired_session(stack: Stack) -> None:
    token = session_token(unique_user(), "acme", ttl=-120)
    problem(stack.token("sales-overview", token), 401, "session_expired")


def test_cookie_credentials_need_json_and_an_allowed_origin(stack: Stack) -> None:
    token = session_token(unique_user(), "acme", ("viewer",))
    url = f"{stack.broker}/v1/tokens"
    body = b'{"embed": "sales-overview"}'
    cookie = {"Cookie": f"app_session={token}"}
    ok = stack.client.post(
        url,
        content=body,
        headers={**cookie, "Content-Type": "application/json", "Origin": "https://app.example.com"},
    )
    assert ok.status_code == 200, ok.text
    no_origin = stack.client.post(
        url, content=body, headers={**cookie, "Content-Type": "application/json"}
    )
    assert no_origin.status_code == 200
    form = stack.client.post(url, content=body, headers={**cookie, "Content-Type": "text/plain"})
    problem(form, 403, "origin_not_allowed")
    evil = stack.client.post(
        url,
        content=body,
        headers={**cookie, "Content-Type": "application/json", "Origin": "https://evil.example"},
    )
    problem(evil, 403, "origin_not_allowed")


# --- request bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "JSON object"),
        (b"", "JSON object"),
        (b'{"embed": "sales-overview", "embed": "ops-dashboard"}', "duplicate key"),
        (b'{"embed": "sales-overview", "security": {}}', "security: unknown field"),
        (b'{"tenant": "acme"}', "embed: field required"),
        (b'{"embed": 5}', "embed"),
        (b'{"embed": "x", "tenant": ' + b"[" * 40 + b"]" * 40 + b"}", "nested"),
        (b'{"embed": "\xff"}', "not valid JSON"),
    ],
)
def test_bad_bodies_are_invalid_request(stack: Stack, content: bytes, fragment: str) -> None:
    response = stack.client.post(
        f"{stack.broker}/v1/tokens",
        content=content,
        headers={**bearer(session_token(unique_user())), "Content-Type": "application/json"},
    )
    body = problem(response, 400, "invalid_request")
    assert fragment in body["detail"]


def test_body_over_16_kib(stack: Stack) -> None:
    content = b'{"embed": "' + b"x" * (16 * 1024) + b'"}'
    response = stack.client.post(
        f"{stack.broker}/v1/tokens",
        content=content,
        headers={**bearer(session_token()), "Content-Type": "application/json"},
    )
    problem(response, 413, "request_too_large")


def test_chunked_body_over_16_kib(stack: Stack) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"embed": "'
        for _ in range(20):
            yield b"x" * 1024
        yield b'"}'

    response = stack.client.post(
        f"{stack.broker}/v1/tokens",
        content=chunks(),
        headers={**bearer(session_token()), "Content-Type": "application/json"},
    )
    problem(response, 413, "request_too_large")


# --- vendor failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"vendor": "embeddable", "status": 401, "count": 1}, 502, "upstream_auth_failed"),
        ({"vendor": "embeddable", "status": 400, "count": 1}, 502, "upstream_rejected"),
        ({"vendor": "embeddable", "malformed_200": True, "count": 1}, 502, "upstream_bad_response"),
        (
            {"vendor": "embeddable", "status": 429, "retry_after": 7, "count": 1},
            503,
            "upstream_unavailable",
        ),
        ({"vendor": "embeddable", "status": 503, "count": 3}, 503, "upstream_unavailable"),
    ],
)
def test_vendor_failures_map_to_stable_codes(
    stack: Stack, fault: dict[str, Any], status: int, code: str
) -> None:
    stack.set_fault(fault)
    response = stack.token("sales-overview", session_token(unique_user(), "acme"))
    body = problem(response, status, code)
    if code == "upstream_unavailable" and fault["status"] == 429:
        assert response.headers["retry-after"] == "7"
        assert len(stack.vendor_requests()) == 1  # a vendor 429 is never retried
    if fault.get("status") == 503:
        assert len(stack.vendor_requests()) == 3  # two retries
        assert "retry-after" in response.headers
    for secret in BASE_ENV.values():
        assert secret not in response.text
    assert body["detail"]


# --- internal API -------------------------------------------------------------------------


def internal(stack: Stack, body: dict[str, Any], key: str | None = SERVICE_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return stack.client.post(f"{stack.broker}/internal/v1/tokens", json=body, headers=headers)


def test_internal_api_issues_for_an_allowed_embed(stack: Stack) -> None:
    user = unique_user("svc-user")
    response = internal(
        stack,
        {"embed": "sales-overview", "user": {"id": user, "tenant": "globex", "roles": ["viewer"]}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["tenant"] == "globex"
    (call,) = stack.vendor_requests()
    assert call["region"] == "us"
    assert call["body"]["user"] == user


def test_internal_api_service_allow_rules(stack: Stack) -> None:
    user = {"id": unique_user(), "tenant": "acme", "roles": ["analyst"]}
    # ops-dashboard is allowed to analysts at acme by policy, but not to this service.
    problem(internal(stack, {"embed": "ops-dashboard", "user": user}), 403, "embed_not_allowed")
    problem(
        internal(stack, {"embed": "sales-overview", "user": {**user, "tenant": "initech"}}),
        403,
        "tenant_not_allowed",
    )
    # The normal policy still applies: no role, no embed.
    problem(
        internal(stack, {"embed": "sales-overview", "user": {**user, "roles": []}}),
        403,
        "embed_not_allowed",
    )
    assert stack.vendor_requests() == []


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer wrong-key",
        f"Bearer {SERVICE_KEY}x",
        f"Basic {SERVICE_KEY}",
        SERVICE_KEY,
    ],
)
def test_internal_api_rejects_missing_or_unknown_keys(
    stack: Stack, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = stack.client.post(
        f"{stack.broker}/internal/v1/tokens",
        json={"embed": "sales-overview", "user": {"id": "u", "tenant": "acme"}},
        headers=headers,
    )
    problem(response, 401, "invalid_service_key")


def test_internal_api_rejects_unknown_fields(stack: Stack) -> None:
    response = internal(
        stack,
        {"embed": "sales-overview", "user": {"id": "u", "tenant": "acme", "tenants": ["globex"]}},
    )
    problem(response, 400, "invalid_request")


def test_session_tokens_are_not_service_keys(stack: Stack) -> None:
    response = internal(
        stack,
        {"embed": "sales-overview", "user": {"id": "u", "tenant": "acme"}},
        key=session_token(),
    )
    problem(response, 401, "invalid_service_key")


def test_openapi_describes_every_endpoint(stack: Stack) -> None:
    document = stack.client.get(f"{stack.broker}/openapi.json").json()
    paths = document["paths"]
    for path in ("/v1/tokens", "/v1/embeds", "/internal/v1/tokens", "/healthz", "/readyz"):
        assert path in paths
    post = paths["/v1/tokens"]["post"]
    assert "requestBody" in post
    assert {"200", "400", "401", "403", "413", "429", "502", "503", "504"} <= set(post["responses"])


@pytest.mark.parametrize("value", [10**30, -(10**30), [1, 2**70]])
def test_claims_no_vendor_body_can_carry_are_403(stack: Stack, value: Any) -> None:
    token = session_token(unique_user(), "acme", org={"department": value})
    problem(stack.token("claims-embed", token), 403, "missing_claim")
    assert stack.vendor_requests() == []


@pytest.mark.parametrize(
    "content",
    [
        b'{"embed": "sales-overview", "user": {"id": "u", "tenant": "acme", "claims": {"d": NaN}}}',
        b'{"embed": "sales-overview", "user": {"id": "u", "tenant": "acme", "claims": {"d": "\\ud800"}}}',
        '{"embed": "sales-overview", "user": {"id": "u", "tenant": "acme"}}'.encode("utf-16"),
    ],
)
def test_internal_bodies_are_strict_json(stack: Stack, content: bytes) -> None:
    response = stack.client.post(
        f"{stack.broker}/internal/v1/tokens",
        content=content,
        headers={"Authorization": f"Bearer {SERVICE_KEY}", "Content-Type": "application/json"},
    )
    problem(response, 400, "invalid_request")


def test_echoed_field_names_are_bounded(stack: Stack) -> None:
    key = "k" * 2000
    response = stack.client.post(
        f"{stack.broker}/v1/tokens",
        json={"embed": "sales-overview", key: 1},
        headers=bearer(session_token(unique_user())),
    )
    body = problem(response, 400, "invalid_request")
    assert len(body["detail"]) < 200
