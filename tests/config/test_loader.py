from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.config.loader import ConfigError, load_policy_document, load_policy_file, load_policy_text
from tests.support.policies import BASE_ENV, HS_SECRET, base_policy, write_policy


def load(document: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    return load_policy_document(
        document, source="test.yaml", environ=env if env is not None else BASE_ENV
    )


def problems(document: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(document, env)
    return [str(issue) for issue in caught.value.issues]


def assert_problem(
    document: dict[str, Any], path: str, fragment: str, env: dict[str, str] | None = None
) -> None:
    found = problems(document, env)
    assert any(p.startswith(f"{path}: ") and fragment in p for p in found), found


def test_the_base_policy_is_valid() -> None:
    policy = load(base_policy())
    assert set(policy.embeds) == {"sales-overview", "ops-dashboard"}
    assert policy.session.issuers[0].secret is not None
    assert policy.session.issuers[0].secret.get_secret_value() == HS_SECRET


def test_the_example_file_documents_a_valid_policy() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "broker.example.yaml"
    policy = load_policy_file(example, environ={**BASE_ENV})
    # Every top-level section of config.md is shown in the example.
    assert policy.cors.allow_origins and policy.services and policy.roles
    assert policy.limits.per_user and policy.cache.max_entries
    assert policy.session.cookie == "app_session"


# --- typos and unknown keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d.update(sesion={}), "sesion"),
        (lambda d: d["session"].update(leway_seconds=3), "session.leway_seconds"),
        (
            lambda d: d["session"]["issuers"][0].update(audience=["x"]),
            "session.issuers[0].audience",
        ),
        (lambda d: d["session"]["claims"].update(tenant="org"), "session.claims.tenant"),
        (lambda d: d["tenants"]["acme"].update(regoin="eu"), "tenants.acme.regoin"),
        (
            lambda d: d["providers"]["embeddable"]["regions"]["eu"].update(apikey="x"),
            "providers.embeddable.regions.eu.apikey",
        ),
        (lambda d: d["providers"]["databrain"].update(baseurl="x"), "providers.databrain.baseurl"),
        (
            lambda d: d["embeds"]["sales-overview"]["allow"].update(role=["x"]),
            "embeds.sales-overview.allow.role",
        ),
        (lambda d: d["embeds"]["sales-overview"].update(ttl=5), "embeds.sales-overview.ttl"),
        (
            lambda d: d["services"]["report-worker"]["allow"].update(embed=["x"]),
            "services.report-worker.allow.embed",
        ),
        (lambda d: d["limits"].update(per_users="1/second"), "limits.per_users"),
        (lambda d: d["cache"].update(max_entry=1), "cache.max_entry"),
    ],
)
def test_unknown_keys_are_errors_at_every_depth(mutate: Any, path: str) -> None:
    document = base_policy()
    mutate(document)
    assert_problem(document, path, "unknown key")


def test_misspelt_vendor_field_in_a_request_fails_at_load() -> None:
    document = base_policy()
    document["embeds"]["sales-overview"]["request"]["embedableId"] = "x"
    assert_problem(document, "embeds.sales-overview.request", "not a valid embeddable request")


def test_unknown_provider_type_lists_the_known_ones() -> None:
    document = base_policy()
    document["providers"]["databrain"]["type"] = "looker"
    found = problems(document)
    assert any(
        p.startswith("providers.databrain") and "embeddable" in p and "databrain" in p
        for p in found
    ), found


# --- interpolation ------------------------------------------------------------------------


def test_missing_environment_variable_names_it_and_the_path() -> None:
    env = {k: v for k, v in BASE_ENV.items() if k != "EMBEDDABLE_EU_API_KEY"}
    assert_problem(
        base_policy(),
        "providers.embeddable.regions.eu.api_key",
        "EMBEDDABLE_EU_API_KEY is not set",
        env,
    )


def test_empty_environment_variable_is_unset() -> None:
    env = {**BASE_ENV, "DATABRAIN_API_KEY": ""}
    assert_problem(
        base_policy(), "providers.databrain.api_key", "DATABRAIN_API_KEY is not set", env
    )


def test_defaults_and_escapes() -> None:
    document = base_policy()
    document["tenants"]["acme"]["attributes"]["note"] = "$${not-a-var} ${UNSET_VAR:-fallback}"
    policy = load(document)
    assert policy.tenants["acme"].attributes["note"] == "${not-a-var} fallback"


def test_file_secrets_strip_one_trailing_newline(tmp_path: Path) -> None:
    secret_file = tmp_path / "databrain_key"
    secret_file.write_text("file-key-123\n")
    document = base_policy()
    document["providers"]["databrain"]["api_key"] = f"${{file:{secret_file}}}"
    policy = load(document)
    assert policy.providers["databrain"].secrets()[0].get_secret_value() == "file-key-123"


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("canary-key-5b3e\n", "control character"),  # a YAML "\n"
        ("canary-key-5b3e\r", "control character"),
        ("canary\tkey-5b3e", "control character"),
        ("canary-key\x00-5b3e", "control character"),
        ("canary-key-5b3e\x7f", "control character"),
        ("canary key-5b3e", "printable ASCII"),
        ("canary-kéy-5b3e", "printable ASCII"),
    ],
)
def test_api_keys_with_control_characters_fail_at_load(key: str, fragment: str) -> None:
    # Issue 14 item 12: such a key passed check-config, then every vendor call failed
    # locally, was retried and tripped the breaker.
    document = base_policy()
    document["providers"]["embeddable"]["regions"]["us"]["api_key"] = key
    document["providers"]["databrain"]["api_key"] = key
    found = problems(document)
    for path in ("providers.embeddable.regions.us.api_key", "providers.databrain.api_key"):
        assert any(p.startswith(f"{path}: ") and fragment in p for p in found), found
    assert not any("canary" in p for p in found), found


def test_a_secret_file_with_two_trailing_newlines_fails_at_load(tmp_path: Path) -> None:
    secret_file = tmp_path / "databrain_key"
    secret_file.write_text("file-key-123\n\n")  # one is stripped, one is a typo
    document = base_policy()
    document["providers"]["databrain"]["api_key"] = f"${{file:{secret_file}}}"
    assert_problem(document, "providers.databrain.api_key", "control character")


def test_missing_secret_file_is_an_error_naming_the_path(tmp_path: Path) -> None:
    document = base_policy()
    document["providers"]["databrain"]["api_key"] = f"${{file:{tmp_path}/absent}}"
    assert_problem(document, "providers.databrain.api_key", "cannot read")


def test_unterminated_placeholder() -> None:
    document = base_policy()
    document["providers"]["databrain"]["api_key"] = "${DATABRAIN_API_KEY"
    assert_problem(document, "providers.databrain.api_key", "closing")


# --- files and YAML -----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_policy_file(tmp_path / "nope.yaml", environ=BASE_ENV)
    assert "file not found" in str(caught.value)


def test_yaml_syntax_error_gives_position_not_content() -> None:
    with pytest.raises(ConfigError) as caught:
        load_policy_text(
            "version: 1\nsession: [unclosed\n  secret: hunter2-secret-value\n", environ=BASE_ENV
        )
    message = str(caught.value)
    assert "line" in message and "hunter2" not in message


def test_duplicate_yaml_keys_are_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        load_policy_text("version: 1\nversion: 1\n", environ=BASE_ENV)
    assert "duplicate key 'version'" in str(caught.value)


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError):
        load_policy_text("- just\n- a list\n", environ=BASE_ENV)


def test_written_file_round_trip(tmp_path: Path) -> None:
    path = write_policy(tmp_path, base_policy())
    assert load_policy_file(path, environ=BASE_ENV).version == 1


# --- issuers --------------------------------------------------------------------------------


def test_short_hs_secret_is_rejected_without_showing_it() -> None:
    env = {**BASE_ENV, "SESSION_HS256_SECRET": "short-secret-value"}
    found = problems(base_policy(), env)
    assert any("session.issuers[0].secret" in p and "at least 32 bytes" in p for p in found), found
    assert all("short-secret-value" not in p for p in found)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_rejected(alg: str) -> None:
    document = base_policy()
    document["session"]["issuers"][0]["algorithms"] = [alg]
    assert_problem(document, "session.issuers[0].algorithms", "never accepted")


def test_mixing_hs_and_asymmetric_in_one_issuer_is_rejected() -> None:
    document = base_policy()
    document["session"]["issuers"][0]["algorithms"] = ["HS256", "RS256"]
    assert_problem(document, "session.issuers[0].algorithms", "mixing HS*")


def test_asymmetric_issuer_needs_keys() -> None:
    document = base_policy()
    document["session"]["issuers"].append(
        {"issuer": "https://idp.example/", "audiences": ["a"], "algorithms": ["RS256"]}
    )
    assert_problem(document, "session.issuers[1]", "jwks_url or public_key")


def test_jwks_url_must_be_https_off_loopback() -> None:
    document = base_policy()
    document["session"]["issuers"].append(
        {
            "issuer": "https://idp.example/",
            "audiences": ["a"],
            "algorithms": ["RS256"],
            "jwks_url": "http://idp.example/jwks",
        }
    )
    assert_problem(document, "session.issuers[1].jwks_url", "https")


def test_public_key_must_fit_the_algorithm() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    document = base_policy()
    document["session"]["issuers"].append(
        {
            "issuer": "https://idp.example/",
            "audiences": ["a"],
            "algorithms": ["RS256"],
            "public_key": pem,
        }
    )
    assert_problem(document, "session.issuers[1].public_key", "EC key fits only ES*")
    document["session"]["issuers"][1]["algorithms"] = ["ES384"]
    assert_problem(document, "session.issuers[1].public_key", "does not fit ES384")
    document["session"]["issuers"][1]["algorithms"] = ["ES256"]
    assert load(document).session.issuers[1].public_key == pem


def test_duplicate_issuers_are_rejected() -> None:
    document = base_policy()
    document["session"]["issuers"].append(dict(document["session"]["issuers"][0]))
    assert_problem(document, "session.issuers[1].issuer", "configured twice")


# --- services -------------------------------------------------------------------------------


def test_duplicate_service_keys_are_rejected() -> None:
    document = base_policy()
    document["services"]["other"] = dict(document["services"]["report-worker"])
    assert_problem(document, "services.other.key_sha256", "same key as service 'report-worker'")


def test_service_key_must_be_sha256_hex() -> None:
    document = base_policy()
    document["services"]["report-worker"]["key_sha256"] = "not-a-hash"
    assert_problem(document, "services.report-worker.key_sha256", "pattern")


def test_service_allow_names_existing_things() -> None:
    document = base_policy()
    document["services"]["report-worker"]["allow"] = {"tenants": ["initech"], "embeds": ["nope"]}
    found = problems(document)
    assert "services.report-worker.allow.tenants[0]: no tenant named 'initech'" in found
    assert "services.report-worker.allow.embeds[0]: no embed named 'nope'" in found


# --- embeds and templates -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["expiryInSeconds", "expiryTime"])
def test_expiry_fields_inside_request_are_rejected(field: str) -> None:
    document = base_policy()
    document["embeds"]["sales-overview"]["request"][field] = 60
    assert_problem(document, f"embeds.sales-overview.request.{field}", "set by the broker")


def test_expiry_field_in_role_additions_is_rejected() -> None:
    document = base_policy()
    document["roles"]["analyst"]["databrain"]["expiryTime"] = 1
    assert_problem(document, "roles.analyst.databrain.expiryTime", "set by the broker")


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{session.id}", "unknown reference root 'session'"),
        ("{user.name}", "unknown reference"),
        ("{tenant.attributes}", "unknown reference"),
        ("{user.claims}", "unknown reference"),
        ("{embed.title}", "unknown reference"),
        ("hello {user.id", "never closed"),
        ("hello }", "no opening brace"),
        ("{user.id + 1}", "not a reference"),
        ("{}", "not a reference"),
    ],
)
def test_bad_templates_fail_at_load(template: str, fragment: str) -> None:
    document = base_policy()
    document["embeds"]["sales-overview"]["request"]["user"] = template
    assert_problem(document, "embeds.sales-overview.request.user", fragment)


def test_literal_braces_are_allowed() -> None:
    document = base_policy()
    document["embeds"]["sales-overview"]["request"]["user"] = "{{literal}} {user.id}"
    load(document)


def test_missing_tenant_attribute_for_an_allowed_tenant() -> None:
    document = base_policy()
    del document["tenants"]["globex"]["attributes"]["environment"]
    assert_problem(
        document, "embeds.sales-overview.request.environment", "not defined for tenant 'globex'"
    )


def test_tenant_attribute_only_needed_for_allowed_tenants() -> None:
    document = base_policy()
    del document["tenants"]["globex"]["attributes"]["datasource"]  # ops-dashboard is acme-only
    load(document)


def test_list_interpolated_into_text_fails_at_load() -> None:
    document = base_policy()
    document["embeds"]["sales-overview"]["request"]["user"] = "user-{tenant.attributes.regions}"
    assert_problem(document, "embeds.sales-overview.request", "only strings and numbers")


def test_user_claims_references_are_accepted_at_load() -> None:
    document = base_policy()
    document["embeds"]["sales-overview"]["request"]["securityContext"]["dept"] = (
        "{user.claims.org.department}"
    )
    document["embeds"]["sales-overview"]["request"]["roles"] = "{user.claims.groups}"
    load(document)


def test_unknown_embed_provider_and_tenant() -> None:
    document = base_policy()
    document["embeds"]["sales-overview"]["provider"] = "looker"
    document["embeds"]["ops-dashboard"]["allow"]["tenants"] = ["initech"]
    found = problems(document)
    assert "embeds.sales-overview.provider: no provider named 'looker'" in found
    assert "embeds.ops-dashboard.allow.tenants[0]: no tenant named 'initech'" in found


def test_tenant_region_needs_a_provider_region() -> None:
    document = base_policy()
    document["tenants"]["acme"]["region"] = "ap"
    assert_problem(document, "providers.embeddable.regions", "no region 'ap'")


def test_role_additions_for_unknown_provider() -> None:
    document = base_policy()
    document["roles"]["analyst"]["looker"] = {"x": 1}
    assert_problem(document, "roles.analyst.looker", "no provider named 'looker'")


def test_role_additions_are_validated_against_the_vendor_model() -> None:
    document = base_policy()
    document["roles"]["analyst"]["databrain"]["permissions"]["isEnableEverything"] = True
    assert_problem(document, "embeds.ops-dashboard.request", "with every role's additions")


def test_databrain_embed_needs_an_element() -> None:
    document = base_policy()
    del document["embeds"]["ops-dashboard"]["element"]
    assert_problem(document, "embeds.ops-dashboard.element", "dashboard_id or element.metric_id")


@pytest.mark.parametrize("name", ["sales-dashboard", "Demo Sales Data App", "my_app", "ops app!"])
def test_databrain_app_names_as_databrain_writes_them_load(name: str) -> None:
    document = base_policy()
    document["embeds"]["ops-dashboard"]["request"]["dataAppName"] = name
    assert load(document).embeds["ops-dashboard"].request["dataAppName"] == name


@pytest.mark.parametrize("name", ["", " ", "ops\napp", "ops\u0000app"])
def test_databrain_app_name_must_be_visible(name: str) -> None:
    document = base_policy()
    document["embeds"]["ops-dashboard"]["request"]["dataAppName"] = name
    assert_problem(document, "embeds.ops-dashboard.request", "dataAppName")


def test_databrain_allowed_embeds_and_rls_settings_are_templated_and_checked() -> None:
    document = base_policy()
    params = document["embeds"]["ops-dashboard"]["request"]["params"]
    params["allowedEmbeds"] = ["ops-dash", "{tenant.attributes.environment}"]
    params["rlsSettings"] = [{"metricId": "m-1", "values": {"tenant": "{tenant.id}"}}]
    load(document)

    params["allowedEmbeds"] = "ops-dash"
    assert_problem(document, "embeds.ops-dashboard.request", "params.allowedEmbeds")


@pytest.mark.parametrize(
    ("written", "fragment"),
    [
        ({"member": "orders.shipped_at", "operator": "set", "values": []}, "takes no values"),
        ({"member": "orders.country", "operator": "equals"}, "needs values"),
    ],
)
def test_embeddable_filter_values_must_fit_the_operator(
    written: dict[str, Any], fragment: str
) -> None:
    document = base_policy()
    document["embeds"]["sales-overview"]["request"]["filters"] = [written]
    assert_problem(document, "embeds.sales-overview.request", fragment)


def test_embeddable_presence_filters_and_templated_values_load() -> None:
    document = base_policy()
    document["embeds"]["sales-overview"]["request"]["filters"] = [
        {"member": "orders.shipped_at", "operator": "set"},
        {"member": "orders.region", "operator": "equals", "values": "{tenant.attributes.regions}"},
    ]
    load(document)


def test_both_canvas_state_names_at_once_fail_at_load() -> None:
    document = base_policy()
    request = document["embeds"]["sales-overview"]["request"]
    request.update(customCanvasState="a", dashboardState="b")
    assert_problem(document, "embeds.sales-overview.request", "write only one")


# --- allow_unknown_fields -----------------------------------------------------------------


def _with_unknown_fields(document: dict[str, Any]) -> dict[str, Any]:
    document["embeds"]["sales-overview"]["request"]["themeOverride"] = {"tenant": "{tenant.id}"}
    document["embeds"]["ops-dashboard"]["request"]["params"]["newParam"] = "{user.id}"
    document["roles"]["analyst"]["databrain"]["newPermissionBlock"] = {"x": True}
    return document


def test_unknown_request_fields_fail_at_load_by_default() -> None:
    found = problems(_with_unknown_fields(base_policy()))

    text = "\n".join(found)
    assert "themeOverride: unknown field" in text
    assert "params.newParam: unknown field" in text
    assert "allow_unknown_fields" in text


def test_allow_unknown_fields_forwards_and_lists_them_per_provider() -> None:
    document = _with_unknown_fields(base_policy())
    document["providers"]["databrain"]["allow_unknown_fields"] = True

    # Only the lenient provider's embeds pass; Embeddable stays strict.
    assert_problem(document, "embeds.sales-overview.request", "themeOverride: unknown field")
    document["providers"]["embeddable"]["allow_unknown_fields"] = True
    policy = load(document)

    assert policy.forwarded_unknown_fields == (
        "embeds.sales-overview.request.themeOverride",
        "embeds.ops-dashboard.request.params.newParam",
        "embeds.ops-dashboard.request.newPermissionBlock",  # added by the analyst role
    )


def test_a_strict_policy_forwards_nothing_unknown() -> None:
    assert load(base_policy()).forwarded_unknown_fields == ()


def test_allowing_unknown_fields_still_validates_the_known_ones() -> None:
    document = _with_unknown_fields(base_policy())
    for provider in document["providers"].values():
        provider["allow_unknown_fields"] = True
    document["embeds"]["ops-dashboard"]["request"]["dataAppName"] = "bad\nname"
    document["embeds"]["sales-overview"]["request"]["expiryInSeconds"] = 60

    found = problems(document)

    assert any("dataAppName" in p for p in found), found
    assert any(p.startswith("embeds.sales-overview.request.expiryInSeconds: ") for p in found)


@pytest.mark.parametrize("rate", ["60/minutes", "sixty/minute", "0/second", "10 per minute"])
def test_bad_rate_limits(rate: str) -> None:
    document = base_policy()
    document["limits"]["per_user"] = rate
    assert_problem(document, "limits.per_user", "not a rate")


def test_cors_star_is_rejected() -> None:
    document = base_policy()
    document["cors"] = {"allow_origins": ["*"]}
    assert_problem(document, "cors.allow_origins", "not allowed")


def test_no_error_message_contains_a_secret_value() -> None:
    document = base_policy()
    document["providers"]["databrain"]["api_key"] = 12345  # wrong type, but no leak either way
    document["embeds"]["sales-overview"]["request"]["bogus"] = "{user.id}"
    env = {**BASE_ENV, "SESSION_HS256_SECRET": "tiny"}
    text = "\n".join(problems(document, env))
    for value in env.values():
        assert value not in text


@pytest.mark.parametrize(("alg", "needed"), [("HS384", 48), ("HS512", 64)])
def test_hmac_secret_must_be_as_long_as_the_hash(alg: str, needed: int) -> None:
    document = base_policy()
    document["session"]["issuers"][0]["algorithms"] = [alg]
    env = {**BASE_ENV, "SESSION_HS256_SECRET": "s" * (needed - 1)}
    assert_problem(document, "session.issuers[0].secret", f"at least {needed} bytes", env)
    load(document, {**BASE_ENV, "SESSION_HS256_SECRET": "s" * needed})


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("http://api.usedatabrain.com", False),
        ("http://10.0.0.5:8080", False),
        ("https://api.usedatabrain.com", True),
        ("http://127.0.0.1:8090/databrain", True),
        ("http://localhost:8090", True),
        ("http://sandbox:8090/databrain", True),  # a compose / in-cluster service name
    ],
)
def test_vendor_urls_need_https_off_loopback(url: str, accepted: bool) -> None:
    document = base_policy()
    document["providers"]["databrain"]["base_url"] = url
    document["providers"]["embeddable"]["regions"]["eu"]["base_url"] = url
    if accepted:
        load(document)
    else:
        found = problems(document)
        assert any(p.startswith("providers.databrain.base_url") and "cleartext" in p for p in found)
        assert any(p.startswith("providers.embeddable.regions.eu.base_url") for p in found)


def test_role_additions_need_the_attributes_of_every_allowed_tenant() -> None:
    document = base_policy()
    document["roles"]["analyst"]["embeddable"]["securityContext"] = {
        "x": "{tenant.attributes.nope}"
    }
    found = problems(document)
    assert any(
        p.startswith(
            "roles.analyst.embeddable.securityContext.x: {tenant.attributes.nope} is not defined"
        )
        for p in found
    ), found
