"""docker-compose.yml, .env.example and config/compose.yaml, checked without Docker."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from app.cli import build_parser
from app.config.loader import load_policy_file
from app.sandbox.settings import SandboxSettings
from tests.deploy.support import (
    COMPOSE_FILE,
    COMPOSE_POLICY,
    DOCKERIGNORE,
    ENV_EXAMPLE,
    REPO_ROOT,
    interpolate,
    load_yaml,
    read_env_file,
    variable_refs,
    yaml_strings,
    yaml_variable_refs,
)
from tests.support.cli import run_cli

SCHEMA_FILE = Path(__file__).parent / "schemas" / "compose-spec.json"
SCHEMA_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
WHOLE_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}$")
SANDBOX_URL_DEFAULT = "http://sandbox:8090"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = load_yaml(COMPOSE_FILE)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@functools.cache
def compose_validator() -> jsonschema.protocols.Validator:
    raw = SCHEMA_FILE.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, "schemas/README.md: update both"
    schema = json.loads(raw)
    # The file declares draft 2019-09 under a misspelt metaschema URI, so name the draft.
    assert "2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def schema_errors(document: Any) -> list[str]:
    errors = compose_validator().iter_errors(document)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "use the mapping form of environment"
    return {str(k): str(v) for k, v in env.items()}


# --- the Compose Specification schema ---------------------------------------------------


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda doc: doc["services"]["broker"].update(readonly=True), "services/broker"),
        (lambda doc: doc["services"]["redis"].update(healthcheck={"test": 1}), "healthcheck"),
        (
            lambda doc: doc["services"]["broker"]["depends_on"]["redis"].update(condition="up"),
            "depends_on",
        ),
    ],
)
def test_schema_rejects_a_broken_compose_file(
    compose: dict[str, Any], mutate: Any, where: str
) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    errors = schema_errors(broken)
    assert errors
    assert any(where in error for error in errors), errors


# --- what each service must be ---------------------------------------------------------


def test_broker_is_built_from_the_dockerfile_and_hardened(services: dict[str, Any]) -> None:
    broker = services["broker"]
    assert broker["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert broker["read_only"] is True
    assert any(str(mount).split(":")[0] == "/tmp" for mount in broker["tmpfs"])
    assert broker["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in broker["security_opt"]
    assert "./config:/app/config:ro" in broker["volumes"]


def test_broker_settings(services: dict[str, Any]) -> None:
    env = environment(services["broker"])
    assert env["BROKER_REDIS_URL"] == "redis://redis:6379/0"
    assert env["BROKER_HOST"] == "0.0.0.0"
    mounted = Path(env["BROKER_CONFIG"]).relative_to("/app/config")
    assert (REPO_ROOT / "config" / mounted).resolve() == COMPOSE_POLICY.resolve()
    # Published on loopback only: the demo keys must not be reachable from the network.
    assert all(str(port).startswith("127.0.0.1:") for port in services["broker"]["ports"])


def test_broker_waits_for_healthy_sandbox_and_redis(services: dict[str, Any]) -> None:
    assert services["broker"]["depends_on"] == {
        "sandbox": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }


def test_every_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert isinstance(test, list), f"{name}: healthcheck.test must be a list"
        assert test[0] == "CMD", f"{name}: exec form (no shell, no curl in the image)"
        assert "curl" not in test and "wget" not in test


def test_broker_and_sandbox_healthchecks_probe_their_own_ports(services: dict[str, Any]) -> None:
    broker_probe = " ".join(services["broker"]["healthcheck"]["test"])
    assert f"127.0.0.1:{environment(services['broker'])['BROKER_PORT']}/readyz" in broker_probe
    sandbox = services["sandbox"]
    port = sandbox["command"][sandbox["command"].index("--port") + 1]
    assert f"127.0.0.1:{port}/" in " ".join(sandbox["healthcheck"]["test"])


def test_sandbox_is_the_same_image_listening_for_the_broker(services: dict[str, Any]) -> None:
    sandbox = services["sandbox"]
    assert sandbox["image"] == services["broker"]["image"]
    assert sandbox["build"] == services["broker"]["build"]
    assert sandbox["read_only"] is True
    # The image's entrypoint is `token-broker`: the command must parse as its sandbox command.
    args = build_parser().parse_args(sandbox["command"])
    assert args.command == "sandbox"
    assert args.host == "0.0.0.0"
    assert f"http://sandbox:{args.port}" == SANDBOX_URL_DEFAULT


def test_sandbox_accepts_exactly_the_keys_the_broker_sends(services: dict[str, Any]) -> None:
    broker_env, sandbox_env = environment(services["broker"]), environment(services["sandbox"])
    pairs = {
        "SANDBOX_EMBEDDABLE_US_API_KEY": "EMBEDDABLE_US_API_KEY",
        "SANDBOX_EMBEDDABLE_EU_API_KEY": "EMBEDDABLE_EU_API_KEY",
        "SANDBOX_DATABRAIN_API_KEY": "DATABRAIN_API_KEY",
    }
    for sandbox_name, broker_name in pairs.items():
        assert sandbox_env[sandbox_name] == broker_env[broker_name]
        # The name must be one the sandbox actually reads.
        field = sandbox_name.removeprefix("SANDBOX_").lower()
        assert field in SandboxSettings.model_fields, f"{sandbox_name}: no such sandbox setting"


def test_redis_is_an_unpersisted_redis_7(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"] == "redis:7-alpine"
    command = redis["command"]
    assert command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"
    assert "volumes" not in redis
    assert "ports" not in redis


# --- secrets and .env.example ----------------------------------------------------------


def test_no_literal_secret_in_the_compose_file(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for variable, value in environment(service).items():
            if SECRET_NAME.search(variable):
                assert WHOLE_REFERENCE.match(value), f"{name}.{variable} must come from .env"
                ref = variable_refs(value)[0]
                assert ref.required, f"{name}.{variable}: a secret must not have a default"


def test_env_example_values_are_fake_and_not_copied_anywhere(env_example: dict[str, str]) -> None:
    compose_text = COMPOSE_FILE.read_text(encoding="utf-8")
    policy_text = COMPOSE_POLICY.read_text(encoding="utf-8")
    for variable, value in env_example.items():
        if SECRET_NAME.search(variable):
            assert "fake" in value, f"{variable}: placeholder must look fake"
            assert value not in compose_text and value not in policy_text


def test_env_example_covers_every_variable(env_example: dict[str, str]) -> None:
    used = {ref.name for path in (COMPOSE_FILE, COMPOSE_POLICY) for ref in yaml_variable_refs(path)}
    assert used - set(env_example) == set()
    assert set(env_example) - used == set(), "unused variables in .env.example"


def test_policy_variables_reach_the_broker_container(services: dict[str, Any]) -> None:
    passed = set(environment(services["broker"]))
    needed = {ref.name for ref in yaml_variable_refs(COMPOSE_POLICY)}
    assert needed - passed == set()


def test_compose_file_interpolates_with_env_example(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    strings = yaml_strings(compose)
    resolved = [interpolate(text, env_example) for text in strings]
    assert not [text for text in resolved if "${" in text]
    assert env_example["SESSION_HS256_SECRET"] in resolved


def test_compose_refuses_to_start_without_the_secrets(compose: dict[str, Any]) -> None:
    unresolved: set[str] = set()
    for text in yaml_strings(compose):
        try:
            interpolate(text, {})
        except KeyError as exc:
            unresolved.add(str(exc.args[0]).split()[0])
    assert {
        "SESSION_HS256_SECRET",
        "EMBEDDABLE_US_API_KEY",
        "EMBEDDABLE_EU_API_KEY",
        "DATABRAIN_API_KEY",
        "BROKER_CACHE_ENCRYPTION_KEY",
    } <= unresolved


def test_env_file_is_never_committed_or_sent_to_docker() -> None:
    assert ".env" in (REPO_ROOT / ".gitignore").read_text(encoding="utf-8").split()
    patterns = DOCKERIGNORE.read_text(encoding="utf-8").split()
    assert "*" in patterns, ".dockerignore must be an allow-list"
    assert not [p for p in patterns if p.startswith("!") and ".env" in p]


# --- the compose policy ----------------------------------------------------------------


def test_compose_policy_loads_with_env_example(env_example: dict[str, str]) -> None:
    policy = load_policy_file(COMPOSE_POLICY, environ=env_example)
    embeddable = policy.providers["embeddable"]
    databrain = policy.providers["databrain"]
    assert embeddable.type == "embeddable" and databrain.type == "databrain"
    for region in ("us", "eu"):
        assert embeddable.base_url(region) == f"{SANDBOX_URL_DEFAULT}/embeddable/{region}"
    assert str(databrain.base_url).rstrip("/") == f"{SANDBOX_URL_DEFAULT}/databrain"
    for secret in policy.secrets():
        assert secret.get_secret_value() in env_example.values()


def test_compose_policy_follows_sandbox_url(env_example: dict[str, str]) -> None:
    elsewhere = {**env_example, "SANDBOX_URL": "http://127.0.0.1:18090"}
    policy = load_policy_file(COMPOSE_POLICY, environ=elsewhere)
    embeddable = policy.providers["embeddable"]
    assert embeddable.type == "embeddable"
    assert embeddable.base_url("eu") == "http://127.0.0.1:18090/embeddable/eu"


def test_check_config_accepts_the_compose_policy(env_example: dict[str, str]) -> None:
    path_only = {"PATH": os.environ.get("PATH", "")}
    result = run_cli("check-config", str(COMPOSE_POLICY), base_env=path_only, env=env_example)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    for variable, value in env_example.items():
        if SECRET_NAME.search(variable):
            assert value not in result.stdout + result.stderr


def test_check_config_rejects_the_compose_policy_without_its_secrets() -> None:
    path_only = {"PATH": os.environ.get("PATH", "")}
    result = run_cli("check-config", str(COMPOSE_POLICY), base_env=path_only)
    assert result.returncode == 1
    assert "SESSION_HS256_SECRET" in result.stderr
