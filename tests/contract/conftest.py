"""A running broker + sandbox whose /openapi.json the contract tests generate from."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.policies import base_policy
from tests.support.stack import Stack, running_stack

SESSION_COOKIE = "app_session"
ALLOWED_ORIGIN = "https://app.example.com"
# Cases schemathesis generated and sent, by run (test_fuzz.py); printed at the end.
GENERATED: Counter[str] = Counter()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if GENERATED:
        runs = ", ".join(f"{count} {run}" for run, count in sorted(GENERATED.items()))
        terminalreporter.write_line(f"schemathesis: {sum(GENERATED.values())} cases sent ({runs})")


def contract_policy() -> dict[str, Any]:
    document = base_policy()
    document["session"]["cookie"] = SESSION_COOKIE
    document["cors"] = {"allow_origins": [ALLOWED_ORIGIN]}
    document["limits"] = {"per_user": "5/minute", "per_tenant": "6000/minute"}
    return document


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("contract"), contract_policy()) as running:
        yield running


@pytest.fixture(scope="module")
def openapi_file(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    response = stack.client.get(f"{stack.broker}/openapi.json")
    response.raise_for_status()
    path = tmp_path_factory.mktemp("document") / "openapi.json"
    path.write_text(json.dumps(response.json(), indent=2))
    return path
