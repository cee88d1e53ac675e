"""Commands from outside Python that tests need (npm, chromium)."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str) -> str:
    """The path of a command the test needs; under CI its absence is a failure
    (.ci/run installs it), elsewhere a skip that says what is missing."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    return found
