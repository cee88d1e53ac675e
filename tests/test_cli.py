"""The ``token-broker`` command as a user runs it: a child process, its exit code and
what it prints (one line, no traceback, no secret)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import ROOT, run_cli
from tests.support.policies import BASE_ENV, base_policy, write_policy

EXAMPLE_DEV_TOKEN = (
    "dev-token",
    "--config",
    str(ROOT / "config" / "broker.example.yaml"),
    "--user",
    "alice",
    "--tenant",
    "acme",
)


def check_config(directory: Path, document: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """``token-broker check-config`` on ``document``, with the test policy's variables."""
    return run_cli("check-config", str(write_policy(directory, document)), env=BASE_ENV)


def test_check_config_valid_prints_a_summary_without_secrets(tmp_path: Path) -> None:
    result = check_config(tmp_path, base_policy())
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "acme (region eu)" in result.stdout and "ops-dashboard -> databrain" in result.stdout
    for secret in BASE_ENV.values():
        assert secret not in result.stdout + result.stderr


def test_check_config_lists_request_fields_forwarded_unchecked(tmp_path: Path) -> None:
    document = base_policy()
    document["providers"]["databrain"]["allow_unknown_fields"] = True
    document["embeds"]["ops-dashboard"]["request"]["params"]["newParam"] = "{user.id}"

    result = check_config(tmp_path, document)

    assert result.returncode == 0, result.stderr
    assert "  databrain (databrain; allow_unknown_fields)\n" in result.stdout
    assert "  embeddable (embeddable; regions eu, us)\n" in result.stdout
    assert result.stdout.endswith(
        "warning: unknown request fields, forwarded as written (allow_unknown_fields):\n"
        "  embeds.ops-dashboard.request.params.newParam\n"
    )


def test_check_config_invalid_exits_1_with_path_and_reason(tmp_path: Path) -> None:
    document = base_policy()
    document["embeds"]["sales-overview"]["allow"]["tenant"] = ["acme"]
    result = check_config(tmp_path, document)
    assert result.returncode == 1
    assert "embeds.sales-overview.allow.tenant: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_header_bound_too_small_for_the_session_tokens_is_one_line(tmp_path: Path) -> None:
    """Sessions travel in a header: BROKER_MAX_HEADER_BYTES must hold the largest token
    the policy accepts, or every such session would be refused with 431."""
    document = base_policy()
    document["session"]["max_token_bytes"] = 65536
    path = str(write_policy(tmp_path, document))
    for command in (("check-config", path), ("serve", "--config", path, "--port", "0")):
        result = run_cli(*command, env=BASE_ENV)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert result.stderr.strip().splitlines() == [
            "token-broker: BROKER_MAX_HEADER_BYTES: 32768 bytes cannot carry the session "
            "tokens of up to 65536 bytes that session.max_token_bytes allows; set it to at "
            "least 67584"
        ], command
    raised = run_cli("check-config", path, env={**BASE_ENV, "BROKER_MAX_HEADER_BYTES": "67584"})
    assert raised.returncode == 0, raised.stderr


def test_check_config_rejects_an_api_key_file_with_an_extra_newline(tmp_path: Path) -> None:
    secret_file = tmp_path / "embeddable_us_key"
    secret_file.write_text("canary-file-key-91ab\n\n")
    document = base_policy()
    document["providers"]["embeddable"]["regions"]["us"]["api_key"] = f"${{file:{secret_file}}}"
    result = check_config(tmp_path, document)
    assert result.returncode == 1, result.stdout
    assert "providers.embeddable.regions.us.api_key: " in result.stderr
    assert "control character" in result.stderr
    assert "canary-file-key-91ab" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_masks_credentials_in_urls(tmp_path: Path) -> None:
    # Issue 14 item 10: check-config printed https://user:pass@... and ?key=... as is.
    document = base_policy()
    document["session"]["issuers"].append(
        {
            "issuer": "https://idp.example.com/",
            "audiences": ["analytics-web"],
            "algorithms": ["RS256"],
            "jwks_url": "https://jwks-user:canary-pass-77@idp.example.com/jwks?key=canary-q-88",
        }
    )
    result = check_config(tmp_path, document)
    assert result.returncode == 0, result.stderr
    assert "JWKS https://***@idp.example.com/jwks?key=***" in result.stdout
    for leaked in ("jwks-user", "canary-pass-77", "canary-q-88"):
        assert leaked not in result.stdout + result.stderr


def test_check_config_uses_broker_config_by_default(tmp_path: Path) -> None:
    path = write_policy(tmp_path, base_policy())
    result = run_cli("check-config", env={**BASE_ENV, "BROKER_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = run_cli("check-config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert "file not found" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_an_invalid_config_before_listening(tmp_path: Path) -> None:
    document = base_policy()
    document["version"] = 2
    path = write_policy(tmp_path, document)
    result = run_cli("serve", "--config", str(path), "--port", "0", env=BASE_ENV)
    assert result.returncode == 1
    assert "version" in result.stderr and "Traceback" not in result.stderr


def test_serve_rejects_bad_environment_settings(tmp_path: Path) -> None:
    path = write_policy(tmp_path, base_policy())
    result = run_cli("serve", "--config", str(path), env={**BASE_ENV, "BROKER_LOG_FORMAT": "xml"})
    assert result.returncode == 1
    assert "BROKER_LOG_FORMAT" in result.stderr


@pytest.mark.parametrize("command", ["serve", "check-config", "dev-token", "sandbox", "demo"])
def test_every_command_has_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"token-broker {command}" in result.stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2


# --- a fresh clone: no config/broker.yaml, no vendor keys --------------------------------


def _clone_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BROKER_", "SESSION_", "EMBEDDABLE_", "DATABRAIN_"))
    }


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (("check-config",), "e.g. `token-broker check-config config/demo.yaml`"),
        (("dev-token", "--user", "a", "--tenant", "acme"), "pass --config PATH"),
        (("serve",), "pass --config PATH"),
    ],
)
def test_without_a_policy_file_each_command_says_in_one_line_what_to_pass(
    tmp_path: Path, args: tuple[str, ...], hint: str
) -> None:
    # cwd: like a fresh clone, there is no config/broker.yaml
    result = run_cli(*args, cwd=tmp_path, base_env=_clone_env())
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "no policy file at config/broker.yaml" in line and hint in line
    assert "BROKER_CONFIG" in line


def test_dev_token_needs_only_the_session_secret(tmp_path: Path) -> None:
    # The example policy names every vendor key; none of them is set here.
    result = run_cli(
        *EXAMPLE_DEV_TOKEN,
        cwd=tmp_path,
        base_env=_clone_env(),
        env={"SESSION_HS256_SECRET": "s" * 32},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(".") == 2


def test_dev_token_names_the_missing_secret(tmp_path: Path) -> None:
    result = run_cli(*EXAMPLE_DEV_TOKEN, env={"SESSION_HS256_SECRET": ""})
    assert result.returncode == 1
    assert "session.issuers[1].secret: environment variable SESSION_HS256_SECRET" in result.stderr
    assert "EMBEDDABLE" not in result.stderr and "Traceback" not in result.stderr


def test_make_check_config_works_in_a_clone() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", "check-config"],
        cwd=ROOT,
        env=_clone_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "config/demo.yaml: valid" in result.stdout


def test_version() -> None:
    from app.version import package_version

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"token-broker {package_version()}"
    assert package_version()[0].isdigit()


def test_serve_on_a_busy_port_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    path = write_policy(tmp_path, base_policy())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--config", str(path), "--port", str(port), env=BASE_ENV)
    assert result.returncode == 1
    assert result.stdout == ""  # refused before uvicorn started the app
    (line,) = result.stderr.splitlines()
    assert line == (
        f"token-broker: port {port} on 127.0.0.1 is already in use; "
        "choose another with --port N (BROKER_PORT)"
    )
