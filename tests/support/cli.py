"""``token-broker`` as a user runs it: a child process from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_SECONDS = 120


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    base_env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``token-broker ARGS`` (the installed console script's module) and capture it.
    The child's environment is ``base_env`` (this process's by default) plus ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env={**(os.environ if base_env is None else base_env), **(env or {})},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )
