"""/docs in a real browser: Swagger UI, served by the broker under its self-only CSP,
renders every operation of the document, and the browser reports no CSP violation."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support.policies import base_policy
from tests.support.stack import Stack, running_stack
from tests.support.tools import require_tool

pytestmark = pytest.mark.slow
OPERATION_IDS = (
    "createToken",
    "listEmbeds",
    "createServiceToken",
    "getHealth",
    "getReadiness",
    "getMetrics",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("docs"), base_policy()) as running:
        yield running


def test_swagger_ui_renders_every_operation_without_a_csp_violation(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    chromium = require_tool("chromium")
    profile = tmp_path_factory.mktemp("chromium-profile")
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=15000",
            "--dump-dom",
            f"{stack.broker}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    for operation_id in OPERATION_IDS:
        assert f'-{operation_id}"' in dom, operation_id
    assert "Content Security Policy" not in result.stderr, result.stderr[-2000:]
