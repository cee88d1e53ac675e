"""openapi-typescript generates types from /openapi.json, and TypeScript compiles a
client written against them (pinned in tests/contract/package.json)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.tools import require_tool

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent

# Uses every operation: a missing path, method, schema or error type fails to compile.
USAGE = """\
import type { components, operations, paths } from "./schema";

type TokenResponse = components["schemas"]["TokenResponse"];
type Problem = components["schemas"]["Problem"];

type Created = paths["/v1/tokens"]["post"]["responses"][200]["content"]["application/json"];
type Forbidden = paths["/v1/tokens"]["post"]["responses"][403]["content"]["application/problem+json"];
type Limited = paths["/v1/tokens"]["post"]["responses"][429]["content"]["application/problem+json"];
type Embeds = paths["/v1/embeds"]["get"]["responses"][200]["content"]["application/json"];
type ServiceBody = operations["createServiceToken"]["requestBody"]["content"]["application/json"];
type ServiceCreated = operations["createServiceToken"]["responses"][200]["content"]["application/json"];
type Health = operations["getHealth"]["responses"][200]["content"]["application/json"];
type Ready = operations["getReadiness"]["responses"][503]["content"]["application/json"];
type Metrics = operations["getMetrics"]["responses"][200]["content"]["text/plain"];
type RetryAfter = paths["/v1/tokens"]["post"]["responses"][429]["headers"]["Retry-After"];

const token: Created = {
  token: "t", provider: "embeddable", embed: "sales-overview", tenant: "acme",
  expires_at: "2026-11-22T10:15:00Z", expires_in: 900,
  element: { tag: "em-beddable", attributes: { "base-url": "https://api.eu.embeddable.com/" } },
};
const same: TokenResponse = token;
const serviceToken: ServiceCreated = same;
const code: Problem["code"] = "embed_not_allowed";
const forbidden: Forbidden = {
  type: "https://token-broker.dev/errors/embed_not_allowed", title: "Embed not allowed",
  status: 403, detail: "no", code, request_id: "r",
};
const limited: Limited = { ...forbidden, status: 429, code: "rate_limited" };
const embeds: Embeds = { tenant: "acme", embeds: [{ name: "a", title: null, provider: "embeddable" }] };
const body: ServiceBody = { embed: "sales-overview", user: { id: "alice", tenant: "acme" } };
const health: Health = { status: "ok" };
const ready: Ready = { status: "not_ready", checks: {} };
const metrics: Metrics = "";
const retryAfter: RetryAfter = 30;
export const all = [token, serviceToken, forbidden, limited, embeds, body, health, ready, metrics, retryAfter];
"""


def run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command[:2]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def node_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    npm = require_tool("npm")
    require_tool("node")
    project = tmp_path_factory.mktemp("typescript")
    for name in ("package.json", "package-lock.json"):
        shutil.copy(HERE / name, project / name)
    run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], project)
    return project


@pytest.fixture(scope="module")
def generated_types(node_project: Path, openapi_file: Path) -> Path:
    generator = node_project / "node_modules" / ".bin" / "openapi-typescript"
    output = run([str(generator), str(openapi_file), "-o", "schema.d.ts"], node_project)
    assert "error" not in output.lower(), output
    return node_project / "schema.d.ts"


def compile_typescript(project: Path, source: str) -> subprocess.CompletedProcess[str]:
    (project / "usage.ts").write_text(source)
    return subprocess.run(
        [
            str(project / "node_modules" / ".bin" / "tsc"),
            "--noEmit",
            "--strict",
            "--target",
            "es2022",
            "--module",
            "esnext",
            "--moduleResolution",
            "bundler",
            "usage.ts",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_openapi_typescript_generates_types_a_client_compiles_against(
    generated_types: Path,
) -> None:
    schema = generated_types.read_text()
    for operation_id in (
        "createToken",
        "listEmbeds",
        "createServiceToken",
        "getHealth",
        "getReadiness",
        "getMetrics",
    ):
        assert f"    {operation_id}: {{" in schema
    result = compile_typescript(generated_types.parent, USAGE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_use_of_the_types_does_not_compile(generated_types: Path) -> None:
    """The compile step above can fail: an unknown error code is rejected."""
    result = compile_typescript(
        generated_types.parent,
        'import type { components } from "./schema";\n'
        'export const code: components["schemas"]["Problem"]["code"] = "no_such_code";\n',
    )
    assert result.returncode != 0
    assert "no_such_code" in result.stdout
