"""openapi-python-client generates a client from /openapi.json; the generated client
talks to a running broker + sandbox and parses success and problem bodies into its own
typed models."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.policies import SERVICE_KEY
from tests.support.stack import Stack, session_token

pytestmark = pytest.mark.slow
PACKAGE = "token_broker_client"
GENERATOR_CONFIG = "post_hooks: []\n"  # no formatter run on the output


@pytest.fixture(scope="module")
def client_package(openapi_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("python-client")
    config = root / "generator.yaml"
    config.write_text(GENERATOR_CONFIG)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "openapi-python-client"),
            "generate",
            "--path",
            str(openapi_file),
            "--output-path",
            str(root / PACKAGE),
            "--meta",
            "none",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # The generator skips what it cannot model (an endpoint, a body, an error schema)
    # with a warning and still succeeds; for a contract, any warning is a failure.
    assert "Warning" not in output, output
    sys.path.insert(0, str(root))
    try:
        yield PACKAGE
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def generated(package: str, module: str) -> ModuleType:
    return importlib.import_module(f"{package}.{module}")


def test_every_operation_has_a_generated_function(client_package: str) -> None:
    for module in (
        "api.tokens.create_token",
        "api.tokens.list_embeds",
        "api.service_to_service.create_service_token",
        "api.probes.get_health",
        "api.probes.get_readiness",
        "api.probes.get_metrics",
    ):
        assert callable(generated(client_package, module).sync_detailed)


def session_client(package: str, stack: Stack, user: str) -> Any:
    client = generated(package, "client")
    return client.AuthenticatedClient(
        base_url=stack.broker, token=session_token(user, "acme", ("viewer",))
    )


def test_a_token_and_the_embed_list(client_package: str, stack: Stack) -> None:
    models = generated(client_package, "models")
    create_token = generated(client_package, "api.tokens.create_token")
    list_embeds = generated(client_package, "api.tokens.list_embeds")
    with session_client(client_package, stack, "py-client-alice") as client:
        token = create_token.sync(client=client, body=models.TokenRequest(embed="sales-overview"))
        assert isinstance(token, models.TokenResponse)
        assert (token.provider, token.embed, token.tenant) == (
            "embeddable",
            "sales-overview",
            "acme",
        )
        assert token.token and token.expires_in > 0
        assert token.element.tag == "em-beddable"
        assert token.element.attributes["base-url"] == f"{stack.sandbox}/embeddable/eu/"

        embeds = list_embeds.sync(client=client)
        assert isinstance(embeds, models.EmbedsResponse)
        assert embeds.tenant == "acme"
        assert "sales-overview" in {embed.name for embed in embeds.embeds}


def test_the_internal_endpoint_with_a_service_key(client_package: str, stack: Stack) -> None:
    models = generated(client_package, "models")
    create_service_token = generated(client_package, "api.service_to_service.create_service_token")
    client = generated(client_package, "client").AuthenticatedClient(
        base_url=stack.broker, token=SERVICE_KEY
    )
    body = models.InternalTokenRequest(
        embed="sales-overview",
        user=models.ServiceUserBody(id="py-client-bob", tenant="globex", roles=["viewer"]),
    )
    with client:
        token = create_service_token.sync(client=client, body=body)
    assert isinstance(token, models.TokenResponse)
    assert (token.tenant, token.element.tag) == ("globex", "em-beddable")


def test_a_403_is_a_typed_problem(client_package: str, stack: Stack) -> None:
    models = generated(client_package, "models")
    create_token = generated(client_package, "api.tokens.create_token")
    with session_client(client_package, stack, "py-client-carol") as client:
        response = create_token.sync_detailed(
            client=client, body=models.TokenRequest(embed="ops-dashboard")
        )
    assert response.status_code == 403
    problem = response.parsed
    assert isinstance(problem, models.Problem)
    assert problem.code is models.ProblemCode.EMBED_NOT_ALLOWED
    assert problem.status == 403
    assert problem.request_id == response.headers["x-request-id"]


def test_a_429_is_a_typed_problem_with_retry_after(client_package: str, stack: Stack) -> None:
    models = generated(client_package, "models")
    create_token = generated(client_package, "api.tokens.create_token")
    body = models.TokenRequest(embed="sales-overview")
    with session_client(client_package, stack, "py-client-dave") as client:
        statuses = []
        for _ in range(10):  # the contract policy allows 5 per user and minute
            response = create_token.sync_detailed(client=client, body=body)
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
    assert statuses == [200] * 5 + [429]
    problem = response.parsed
    assert isinstance(problem, models.Problem)
    assert problem.code is models.ProblemCode.RATE_LIMITED
    assert int(response.headers["retry-after"]) >= 1
