"""Runs the browser client's unit tests (``node --test``, fake fetch/clock/DOM) under pytest.

The JavaScript tests live next to this file (``token_broker.test.mjs``); running them
from pytest puts them in ``make test`` and CI. Node 18 or newer must be on PATH; under
``CI=true`` a missing node is a failure, not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REPO_ROOT = HERE.parents[1]
MIN_NODE_MAJOR = 18  # Debian bookworm's nodejs; the tests use node:test and fetch's Response


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is not installed (CI installs nodejs; see .ci/run)")
        pytest.skip("node is not installed")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    major = int(version.lstrip("v").split(".")[0])
    assert major >= MIN_NODE_MAJOR, f"node {version} is too old; the client tests need 18+"
    return node


def test_client_unit_tests_pass_under_node() -> None:
    node = node_or_skip()
    files = sorted(str(path.relative_to(REPO_ROOT)) for path in HERE.glob("*.test.mjs"))
    assert files, "no JavaScript tests found"
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", *files],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", output, re.MULTILINE)
    assert passed is not None and failed is not None, output[-2000:]
    assert int(failed.group(1)) == 0
    assert int(passed.group(1)) >= 40, output[-2000:]


def test_the_module_has_no_eval_globals_or_imports() -> None:
    """CSP-safe and dependency-free, as client.md promises."""
    source = (REPO_ROOT / "clients" / "js" / "token-broker.js").read_text()
    assert not re.search(r"\beval\s*\(|new Function\s*\(", source)
    assert not re.search(r"^\s*import\s", source, re.MULTILINE), "the client imports nothing"
    assert "window." not in source
    assert not re.search(r"globalThis\.\w+\s*=", source), "the client defines no globals"
