"""The image's install steps, for real, and the compose stack without Docker.

The builder stage's RUN steps run here as written in the Dockerfile (with the image's
paths moved into a temp dir) on exactly the files it copies: export the locked
dependencies, install them with their hashes into a fresh virtual environment, build
the wheel and install it. Then `token-broker` runs from that environment: check-config,
serve until ready, SIGTERM; and the compose services (sandbox, Redis, broker) with the
environment docker-compose.yml gives them, down to a token minted through the sandbox.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    COMPOSE_FILE,
    COMPOSE_POLICY,
    DOCKERFILE,
    ENV_EXAMPLE,
    REPO_ROOT,
    example_env,
    interpolate,
    load_yaml,
    parse_dockerfile,
    read_env_file,
)
from tests.support.eventually import eventually
from tests.support.redis import start_private_redis
from tests.support.servers import LOOPBACK, free_port

pytestmark = pytest.mark.slow

READY_TIMEOUT_SECONDS = 30.0
STEP_TIMEOUT_SECONDS = 120.0
EXAMPLE_CONFIG = REPO_ROOT / "config" / "broker.example.yaml"
# Where the builder stage puts things in the image; the test moves them under tmp.
IMAGE_VENV = "/opt/venv"
IMAGE_DIST = "/tmp/dist"
IMAGE_PYTHON = "/usr/local/bin/python3.11"


def find_uv() -> str:
    local = REPO_ROOT / ".tools" / "bin" / "uv"  # where `make install` puts it
    found = str(local) if local.exists() else shutil.which("uv")
    assert found, "uv not found: run `make install` (it installs uv into .tools/)"
    return found


def uv_env() -> dict[str, str]:
    # Nothing from the caller's uv or virtualenv setup (e.g. the Makefile's
    # UV_PROJECT_ENVIRONMENT) may steer where or what gets installed.
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_") and k != "VIRTUAL_ENV"}
    env.update(UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
    return env


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"{command[:3]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build_context(destination: Path) -> Path:
    """The sources the Dockerfile's builder stage copies, and nothing else."""
    _, stages = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    sources = [
        word
        for copy in stages[0].all("COPY")
        for word in copy.words()[:-1]
        if not word.startswith("--")
    ]
    destination.mkdir()
    for source in sources:
        origin = REPO_ROOT / source
        if origin.is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(origin, destination / source, ignore=ignore)
        else:
            shutil.copy2(origin, destination / source)
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the builder stage's RUN steps; return the bin dir of the venv they create."""
    root = tmp_path_factory.mktemp("install-path")
    context = build_context(root / "src")
    venv = root / "venv"
    image_paths = {
        IMAGE_VENV: str(venv),
        IMAGE_DIST: str(root / "dist"),
        IMAGE_PYTHON: sys.executable,
    }
    uv = find_uv()
    env = uv_env()
    env["PATH"] = f"{Path(uv).parent}{os.pathsep}{env.get('PATH', '')}"
    _, stages = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    steps = [step.arguments for step in stages[0].all("RUN")]
    assert steps[0] == "pip install --no-cache-dir uv==0.13.8"  # this machine has uv already
    for step in steps[1:]:
        for image_path, local_path in image_paths.items():
            step = step.replace(image_path, local_path)
        assert "/opt/" not in step and "/usr/local/" not in step, step
        run(["/bin/sh", "-ec", step], context, env)
    return venv / "bin"


def clean_env(values: dict[str, str]) -> dict[str, str]:
    """Only the given variables: nothing of this test process leaks into the service."""
    return {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1", **values}


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post_json(url: str, body: dict[str, Any], bearer: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {bearer}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@contextlib.contextmanager
def service(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=log.parent, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def wait_for_200(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    def answered() -> bool:
        if process.poll() is not None:
            logs = log.read_text(errors="replace")
            pytest.fail(f"{url}: the process exited with {process.poll()}:\n{logs}")
        try:
            return get(url)[0] == 200
        except OSError:
            return False  # not listening yet

    eventually(answered, timeout=READY_TIMEOUT_SECONDS, what=f"{url} answers 200")


def assert_no_secret_in(log: Path) -> None:
    text = log.read_text(errors="replace")
    for variable, value in read_env_file(ENV_EXAMPLE).items():
        if "KEY" in variable or "SECRET" in variable:
            assert value not in text, f"{variable} leaked into {log.name}"


# --- the installed package ---------------------------------------------------------------


def test_the_installed_package_is_the_wheel_not_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    where = run([str(installed / "python"), "-c", "import app; print(app.__file__)"], tmp_path)
    assert Path(where.strip()).is_relative_to(installed.parent / "lib")


def test_no_dependency_is_missing_after_no_deps_installs(installed: Path, tmp_path: Path) -> None:
    # Both installs use --no-deps (as in the image): the lock export must be complete.
    run([find_uv(), "pip", "check", "--python", str(installed / "python")], tmp_path, uv_env())


def test_check_config_accepts_the_example(installed: Path, tmp_path: Path) -> None:
    env = clean_env(example_env(ENV_EXAMPLE))
    output = run(
        [str(installed / "token-broker"), "check-config", str(EXAMPLE_CONFIG)], tmp_path, env
    )
    assert "valid" in output


def test_the_image_can_trace(installed: Path, tmp_path: Path) -> None:
    # The otel extra is installed, so tracing is a setting, not a rebuild.
    env = clean_env({**example_env(ENV_EXAMPLE), "BROKER_OTEL_ENABLED": "true"})
    output = run(
        [str(installed / "token-broker"), "check-config", str(EXAMPLE_CONFIG)], tmp_path, env
    )
    assert "tracing on" in output


def test_serve_becomes_ready_and_exits_0_on_sigterm(installed: Path, tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://{LOOPBACK}:{port}"
    log = tmp_path / "broker.log"
    command = [str(installed / "token-broker"), "serve", "--config", str(COMPOSE_POLICY)]
    command += ["--host", LOOPBACK, "--port", str(port)]
    with service(command, clean_env(read_env_file(ENV_EXAMPLE)), log) as process:
        wait_for_200(f"{base_url}/readyz", process, log)
        status, body = get(f"{base_url}/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        # The browser client ships inside the wheel (no checkout next to the venv).
        status, body = get(f"{base_url}/v1/client.js")
        assert (status, body) == (200, (REPO_ROOT / "clients/js/token-broker.js").read_bytes())

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log.read_text(errors="replace")
    assert_no_secret_in(log)


# --- the compose stack, without Docker -----------------------------------------------------


def compose_service_env(name: str) -> dict[str, str]:
    """A service's environment from docker-compose.yml, interpolated with .env.example."""
    compose = load_yaml(COMPOSE_FILE)
    values = read_env_file(ENV_EXAMPLE)
    environment = compose["services"][name].get("environment", {})
    return {key: interpolate(str(value), values) for key, value in environment.items()}


def host_path(container_path: str) -> Path:
    """Where a path inside the broker container comes from, through its compose volumes."""
    for volume in load_yaml(COMPOSE_FILE)["services"]["broker"]["volumes"]:
        source, target = str(volume).split(":")[:2]
        if container_path.startswith(target + "/"):
            return (REPO_ROOT / source / container_path[len(target) + 1 :]).resolve()
    raise AssertionError(f"{container_path} is not on a broker volume")


def with_option(command: list[str], option: str, value: str) -> list[str]:
    index = command.index(option)
    return [*command[: index + 1], value, *command[index + 2 :]]


@pytest.mark.redis
def test_compose_services_mint_tokens_through_the_sandbox(installed: Path, tmp_path: Path) -> None:
    compose = load_yaml(COMPOSE_FILE)
    sandbox_port, broker_port = free_port(), free_port()
    sandbox_url = f"http://{LOOPBACK}:{sandbox_port}"
    broker_url = f"http://{LOOPBACK}:{broker_port}"
    # Loopback ports instead of compose's service names; everything else as compose says.
    sandbox_command = with_option(compose["services"]["sandbox"]["command"], "--host", LOOPBACK)
    sandbox_command = with_option(sandbox_command, "--port", str(sandbox_port))
    broker_env = compose_service_env("broker")
    config = host_path(broker_env["BROKER_CONFIG"])

    with start_private_redis() as redis_server:
        broker_env.update(
            BROKER_CONFIG=str(config),
            BROKER_HOST=LOOPBACK,
            BROKER_PORT=str(broker_port),
            BROKER_REDIS_URL=redis_server.url,
            SANDBOX_URL=sandbox_url,
        )
        sandbox_log, broker_log = tmp_path / "sandbox.log", tmp_path / "broker.log"
        sandbox_env = clean_env(compose_service_env("sandbox"))
        with (
            service(
                [str(installed / "token-broker"), *sandbox_command], sandbox_env, sandbox_log
            ) as sandbox,
            service(
                [str(installed / "token-broker"), "serve"], clean_env(broker_env), broker_log
            ) as broker,
        ):
            wait_for_200(f"{sandbox_url}/healthz", sandbox, sandbox_log)
            wait_for_200(f"{broker_url}/readyz", broker, broker_log)
            dev_token = ["dev-token", "--user", "alice", "--tenant", "acme", "--roles", "analyst"]
            session = run(
                [str(installed / "token-broker"), *dev_token, "--config", str(config)],
                tmp_path,
                clean_env(broker_env),
            ).strip()

            for embed, provider in (
                ("sales-overview", "embeddable"),
                ("ops-dashboard", "databrain"),
            ):
                status, body = post_json(f"{broker_url}/v1/tokens", {"embed": embed}, session)
                assert status == 200, body
                assert body["provider"] == provider
                assert body["tenant"] == "acme"
                assert body["token"]
            status, body = post_json(
                f"{broker_url}/v1/tokens", {"embed": "sales-overview"}, session
            )
            assert status == 200, body
            assert body["element"]["attributes"]["base-url"].startswith(
                f"{sandbox_url}/embeddable/eu"
            )

            status, received = get(f"{sandbox_url}/_sandbox/requests")
            assert status == 200
            assert b"alice" in received
    assert_no_secret_in(broker_log)
