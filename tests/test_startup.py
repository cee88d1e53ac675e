"""Start-up stays cheap (S6): redis-py is imported only when Redis is configured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_app_does_not_import_redis() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys, app.main, app.cli; print('redis' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "False"
