"""Environment settings (config.md "Environment settings"): every one validated in one
place before anything starts; a bad one is one line naming the variable and the
reason, exit 1, never a traceback and never the value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import SettingsError, load_settings, unknown_variables
from tests.support.policies import BASE_ENV, base_policy, write_policy

ROOT = Path(__file__).resolve().parents[1]
KEY = "k" * 32
CANARY_PASSWORD = "canary-redis-password-4711"

# (variable, bad value, other variables it needs, words the reason must contain)
BAD_SETTINGS: list[tuple[str, str, dict[str, str], str]] = [
    ("BROKER_PORT", "eighty", {}, "integer"),
    ("BROKER_PORT", "70000", {}, "65535"),
    ("BROKER_WORKERS", "0", {}, "greater than or equal to 1"),
    ("BROKER_HOST", "", {}, "at least 1 character"),
    ("BROKER_LOG_LEVEL", "loud", {}, "'info'"),
    ("BROKER_LOG_FORMAT", "xml", {}, "'json' or 'console'"),
    ("BROKER_ACCESS_LOG", "perhaps", {}, "boolean"),
    ("BROKER_REDIS_URL", f"http://user:{CANARY_PASSWORD}@cache:6379", {}, "scheme"),
    ("BROKER_REDIS_URL", f"redis://user:{CANARY_PASSWORD}@:6379/0", {}, "no host"),
    ("BROKER_REDIS_URL", f"redis://user:{CANARY_PASSWORD}@cache:port/0", {}, "not a valid URL"),
    ("BROKER_CACHE_ENCRYPTION_KEY", "short-secret-key", {}, "at least 32 bytes"),
    (
        "BROKER_CACHE_ENCRYPTION_KEY",
        "",
        {"BROKER_REDIS_URL": f"redis://:{CANARY_PASSWORD}@127.0.0.1:6379/0"},
        "required when BROKER_REDIS_URL is set",
    ),
    ("BROKER_REDIS_URL", f"redis+cluster://u:{CANARY_PASSWORD}@a:7000/1", {}, "database 0"),
    ("BROKER_REDIS_URL", f"redis+sentinel://:{CANARY_PASSWORD}@s1:26379", {}, "service"),
    # An unencoded '?' or '/' in the password: its tail must not come back as an option
    # name or a service in the error (the password here is "<canary>?<canary>").
    (
        "BROKER_REDIS_URL",
        f"redis+cluster://u:{CANARY_PASSWORD}?{CANARY_PASSWORD}@a:7000",
        {},
        "percent-encode",
    ),
    (
        "BROKER_REDIS_URL",
        f"redis+sentinel://:{CANARY_PASSWORD}/{CANARY_PASSWORD}@s1:26379/svc",
        {},
        "percent-encode",
    ),
    ("BROKER_REDIS_KEY_PREFIX", "", {}, "at least 1 character"),
    ("BROKER_REDIS_KEY_PREFIX", "tb{x}:", {}, "must not contain {"),
    ("BROKER_RELOAD_INTERVAL_SECONDS", "-1", {}, "greater than or equal to 0"),
    ("BROKER_SHUTDOWN_TIMEOUT_SECONDS", "nan", {}, "finite"),
    ("BROKER_GC_FULL_INTERVAL_SECONDS", "often", {}, "number"),
    ("BROKER_METRICS_EMBED_LABELS", "perhaps", {}, "boolean"),
    ("BROKER_MAX_HEADER_BYTES", "512", {}, "greater than or equal to 1024"),
    ("BROKER_MAX_HEADER_FIELDS", "many", {}, "integer"),
    ("BROKER_HEADER_TIMEOUT_SECONDS", "-1", {}, "greater than 0"),
    ("BROKER_BODY_TIMEOUT_SECONDS", "inf", {}, "finite"),
    ("BROKER_MAX_CONNECTIONS", "0", {}, "greater than or equal to 1"),
    ("BROKER_PROBE_RESERVE", "0", {}, "greater than or equal to 1"),
]


def clean_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return {**env, **BASE_ENV, **extra}


def run_cli(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- in process ---------------------------------------------------------------------------


def test_defaults_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BROKER_"):
            monkeypatch.delenv(name)
    settings = load_settings()
    assert (settings.port, settings.redis_url, settings.metrics_embed_labels) == (8080, None, False)


@pytest.mark.parametrize(("variable", "value", "needs", "reason"), BAD_SETTINGS)
def test_each_bad_setting_is_named_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, needs: dict[str, str], reason: str
) -> None:
    for name in list(os.environ):
        if name.startswith("BROKER_"):
            monkeypatch.delenv(name)
    for name, other in {**needs, variable: value}.items():
        monkeypatch.setenv(name, other)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert len(caught.value.problems) == 1, caught.value.problems
    (problem,) = caught.value.problems
    assert problem.startswith(f"{variable}: "), problem
    assert reason in problem
    assert CANARY_PASSWORD not in problem and (not value or value not in problem)


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_PORT", "x")
    monkeypatch.setenv("BROKER_LOG_FORMAT", "xml")
    monkeypatch.setenv("BROKER_CACHE_ENCRYPTION_KEY", "short")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "BROKER_PORT",
        "BROKER_LOG_FORMAT",
        "BROKER_CACHE_ENCRYPTION_KEY",
    ]


def test_unknown_broker_variables_are_found() -> None:
    env = {"BROKER_PORT": "1", "BROKER_REDIS_UR": "x", "OTHER": "y"}
    assert unknown_variables(env) == ["BROKER_REDIS_UR"]


# --- over a real process ------------------------------------------------------------------


@pytest.mark.parametrize(("variable", "value", "needs", "reason"), BAD_SETTINGS)
def test_serve_refuses_each_bad_setting_in_one_line(
    tmp_path: Path, variable: str, value: str, needs: dict[str, str], reason: str
) -> None:
    path = write_policy(tmp_path, base_policy())
    env = clean_environment(BROKER_CONFIG=str(path), BROKER_PORT="0", **needs)
    env[variable] = value
    result = run_cli("serve", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""  # refused before logging was even configured
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"token-broker: {variable}: ") and reason in line, line
    assert "Traceback" not in result.stderr
    assert CANARY_PASSWORD not in result.stderr


def test_check_config_reports_every_bad_setting_and_the_policy(tmp_path: Path) -> None:
    document = base_policy()
    document["version"] = 2
    path = write_policy(tmp_path, document)
    env = clean_environment(
        BROKER_PORT="eighty",
        BROKER_LOG_FORMAT="xml",
        BROKER_REDIS_URL=f"redis://:{CANARY_PASSWORD}@127.0.0.1:6379/0",
    )
    result = run_cli("check-config", str(path), env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and CANARY_PASSWORD not in result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("token-broker: BROKER_PORT: ") for line in lines)
    assert any(line.startswith("token-broker: BROKER_LOG_FORMAT: ") for line in lines)
    assert any(
        line.startswith("token-broker: BROKER_CACHE_ENCRYPTION_KEY: required") for line in lines
    )
    assert any("version" in line for line in lines)  # the policy is still checked


def test_check_config_summarizes_the_environment_without_values(tmp_path: Path) -> None:
    path = write_policy(tmp_path, base_policy())
    env = clean_environment(
        BROKER_REDIS_URL=f"redis://:{CANARY_PASSWORD}@127.0.0.1:6379/0",
        BROKER_CACHE_ENCRYPTION_KEY=KEY,
        BROKER_WORKERS="2",
    )
    result = run_cli("check-config", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert (
        "environment: valid (Redis (shared cache, limits and vendor calls); 2 workers;"
        in result.stdout
    )
    assert CANARY_PASSWORD not in result.stdout and KEY not in result.stdout


@pytest.mark.parametrize(
    ("url", "named"),
    [
        (f"redis+cluster://:{CANARY_PASSWORD}@10.0.0.1:7000,10.0.0.2:7000", "Redis Cluster"),
        (f"rediss+sentinel://:{CANARY_PASSWORD}@s1,s2/cache", "Redis via Sentinel"),
    ],
)
def test_check_config_names_the_redis_topology(tmp_path: Path, url: str, named: str) -> None:
    path = write_policy(tmp_path, base_policy())
    env = clean_environment(BROKER_REDIS_URL=url, BROKER_CACHE_ENCRYPTION_KEY=KEY)
    result = run_cli("check-config", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert f"environment: valid ({named} (shared cache, limits and vendor calls);" in result.stdout
    assert CANARY_PASSWORD not in result.stdout + result.stderr


def test_a_misspelt_variable_is_warned_about(tmp_path: Path) -> None:
    path = write_policy(tmp_path, base_policy())
    env = clean_environment(BROKER_REDIS_URI="redis://127.0.0.1:6379/0")
    result = run_cli("check-config", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert "token-broker: warning: BROKER_REDIS_URI is not a token-broker setting" in result.stderr
    assert "redis://" not in result.stderr
