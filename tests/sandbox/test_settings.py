"""Sandbox settings, the app factory, and ``run_sandbox`` as the CLI runs it."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest

from app.sandbox import DEFAULT_PORT, SandboxSettings, create_sandbox_app
from app.sandbox.settings import (
    DEV_DATABRAIN_API_KEY,
    DEV_EMBEDDABLE_EU_API_KEY,
    DEV_EMBEDDABLE_US_API_KEY,
)
from tests.support.eventually import eventually
from tests.support.servers import LOOPBACK, free_port


def test_defaults_are_the_documented_dev_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EMBEDDABLE_US_API_KEY", "EMBEDDABLE_EU_API_KEY", "DATABRAIN_API_KEY"):
        monkeypatch.delenv(f"SANDBOX_{name}", raising=False)
    settings = SandboxSettings()

    assert {r: k.get_secret_value() for r, k in settings.embeddable_api_keys().items()} == {
        "us": DEV_EMBEDDABLE_US_API_KEY,
        "eu": DEV_EMBEDDABLE_EU_API_KEY,
    }
    assert settings.databrain_api_key.get_secret_value() == DEV_DATABRAIN_API_KEY
    assert DEFAULT_PORT == 8090


def test_the_token_secret_is_random_per_process_and_never_shown() -> None:
    first, second = SandboxSettings(), SandboxSettings()

    assert first.token_secret.get_secret_value() != second.token_secret.get_secret_value()
    assert len(first.token_secret.get_secret_value()) >= 32
    assert first.token_secret.get_secret_value() not in repr(first) + str(first)


def test_settings_come_from_sandbox_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_DATABRAIN_API_KEY", "from-env")
    monkeypatch.setenv("SANDBOX_DATABRAIN_DATA_APPS", "opsapp, salesapp")
    monkeypatch.setenv("SANDBOX_HISTORY_LIMIT", "5")

    settings = SandboxSettings()

    assert settings.databrain_api_key.get_secret_value() == "from-env"
    assert settings.databrain_data_apps == frozenset({"opsapp", "salesapp"})
    assert settings.history_limit == 5


def test_a_short_token_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="token_secret"):
        SandboxSettings.model_validate({"token_secret": "short"})


def test_each_app_has_its_own_state() -> None:
    first, second = create_sandbox_app(), create_sandbox_app()

    assert first.state is not second.state
    assert first.state.history is not second.state.history


def test_run_sandbox_serves_until_stopped() -> None:
    port = free_port()
    code = f"from app.sandbox import run_sandbox; run_sandbox({LOOPBACK!r}, {port})"
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:

        def answered() -> httpx.Response | None:
            try:
                return httpx.get(f"http://{LOOPBACK}:{port}/healthz", timeout=1)
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                return None

        response = eventually(answered, timeout=20, what="the sandbox answers")
        assert response is not None
        assert response.json() == {"status": "ok"}
        token = httpx.post(
            f"http://{LOOPBACK}:{port}/databrain/api/v2/guest-token/create",
            json={"clientId": "c", "dataAppName": "app", "expiryTime": 1000},
            headers={"Authorization": f"Bearer {DEV_DATABRAIN_API_KEY}"},
        )
        assert token.status_code == 200
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=15)
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM.
    assert process.returncode in (0, -signal.SIGTERM)
    assert b"Application shutdown complete" in output
    assert b"sandbox.starting" in output
    assert DEV_DATABRAIN_API_KEY.encode() not in output
