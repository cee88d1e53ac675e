"""schemathesis fuzzes every operation of the running broker from /openapi.json.

Two runs over the same document: one where an auth hook supplies valid credentials (a
session JWT on the browser routes, the service key on the internal route), one with no
credentials at all. Every response must be: no 5xx, a documented status, content type,
headers and body, and free of any secret (vendor keys, the session secret, the service
key, the session JWT itself). Bounded: a fixed number of examples per operation,
derandomized so a CI run is repeatable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import Case as GenericCase
from schemathesis import CheckContext
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.api import tokens
from app.api.openapi import build_document
from app.main import create_app
from app.settings import Settings
from app.version import package_version
from tests.contract.conftest import GENERATED, SESSION_COOKIE
from tests.support.policies import BASE_ENV, SERVICE_KEY
from tests.support.stack import Stack, session_token

pytestmark = pytest.mark.slow
Case = GenericCase[Any]

EXAMPLES_PER_OPERATION = 40
SESSION_JWT = session_token("fuzz-user", "acme", ("viewer", "analyst"), ttl=3600)
SECRETS = (*BASE_ENV.values(), SERVICE_KEY, SESSION_JWT)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def no_secret_in_body(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    text = response.content.decode("utf-8", "replace")
    for secret in SECRETS:
        assert secret not in text, f"a secret is in the body of {case.operation.label}"
    return None


def contract_document() -> dict[str, Any]:
    """The document the broker serves for the contract policy (a test checks they match),
    built at import so that schemathesis can parametrize the tests by operation."""
    app = create_app(Settings(config=Path("unused.yaml")))
    return build_document(
        version=package_version(),
        framework_routes=app.routes,
        token_routes=tokens.ROUTES,
        cookie_name=SESSION_COOKIE,
    )


DOCUMENT = contract_document()
credentialed = schemathesis.openapi.from_dict(DOCUMENT)
anonymous = schemathesis.openapi.from_dict(DOCUMENT)


@credentialed.auth(refresh_interval=None, retry_on=[])
class Credentials:
    """The auth hook: a valid session on the browser routes, the service key on the
    internal one."""

    def get(self, case: Case, ctx: Any) -> str:
        if case.operation.path.startswith("/internal/"):
            return SERVICE_KEY
        return SESSION_JWT

    def set(self, case: Case, data: str, ctx: Any) -> None:
        case.headers["Authorization"] = f"Bearer {data}"


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def test_the_fuzzed_document_is_the_one_the_broker_serves(stack: Stack) -> None:
    assert stack.client.get(f"{stack.broker}/openapi.json").json() == DOCUMENT


@credentialed.parametrize()
@FUZZ_SETTINGS
def test_with_valid_credentials(case: Case, stack: Stack) -> None:
    GENERATED["with credentials"] += 1
    case.call_and_validate(
        base_url=stack.broker, checks=CHECKS, additional_checks=[no_secret_in_body], timeout=30
    )


@anonymous.parametrize()
@FUZZ_SETTINGS
def test_without_credentials(case: Case, stack: Stack) -> None:
    GENERATED["without credentials"] += 1
    case.call_and_validate(
        base_url=stack.broker, checks=CHECKS, additional_checks=[no_secret_in_body], timeout=30
    )
