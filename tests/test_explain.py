"""``token-broker explain`` as a user runs it: decisions, the request, masking, bad input.

That the printed body is byte for byte what a vendor receives is proven over HTTP in
tests/integration/test_explain_matches_vendor.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from tests.deploy.support import example_env
from tests.support.cli import ROOT, run_cli
from tests.support.policies import BASE_ENV, base_policy, write_policy

DEMO = "config/demo.yaml"
EXAMPLE_ENV = example_env(ROOT / ".env.example")


def body_line(stdout: str) -> bytes:
    """The body exactly as printed: the line after ``body (N bytes exactly as sent):``."""
    lines = stdout.split("\n")  # not splitlines(): JSON may hold U+2028 unescaped
    index = next(i for i, line in enumerate(lines) if line.startswith("body ("))
    return lines[index + 1].encode("utf-8")


def test_an_allowed_request_shows_decision_tenant_region_and_the_exact_request() -> None:
    result = run_cli(
        "explain", "--config", DEMO, "--user", "alice", "--tenant", "acme", "--roles", "analyst",
        "--embed", "ops-dashboard",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("decision: allowed\n")
    assert "  tenant:  acme (region eu)\n" in out
    assert "  embed:   ops-dashboard -> provider databrain (databrain)\n" in out
    assert (
        "vendor request (not sent): POST http://127.0.0.1:8090/databrain/api/v2/guest-token/create\n"
        in out
    )
    assert "  Authorization: Bearer ********\n" in out
    assert "  Content-Type: application/json\n" in out
    body = body_line(out)
    assert f"body ({len(body)} bytes exactly as sent):" in out
    assert f"  Content-Length: {len(body)}\n" in out
    assert orjson.loads(body) == {
        "clientId": "acme",
        "dataAppName": "ops-dashboard-app",
        "datasourceName": "acme-warehouse",
        "params": {
            "userIdentifier": "alice",
            "allowedEmbeds": ["ops-dash"],
            "dashboardAppFilters": [{"dashboardId": "ops-dash", "values": {"region": ["eu-west"]}}],
        },
        "permissions": {
            "isShowSideBar": False,
            "isEnableUnderlyingData": True,
            "isEnableDownloadMetrics": True,
        },
        "expiryTime": 60_000,
    }
    assert out.endswith("nothing was sent to the vendor.\n")
    assert "sandbox-databrain-dev-key" not in out + result.stderr


def test_a_denial_exits_1_with_the_code_and_the_policy_rule_behind_it() -> None:
    result = run_cli(
        "explain", "--config", DEMO, "--user", "bob", "--tenant", "globex", "--roles", "viewer",
        "--embed", "ops-dashboard",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "decision: embed_not_allowed (HTTP 403)"
    assert lines[1] == (
        "  why:     embeds.ops-dashboard.allow.roles is [analyst]; the user's roles are [viewer]"
    )
    assert "vendor request" not in result.stdout


def test_claims_act_for_and_json_output() -> None:
    result = run_cli(
        "explain", "--config", DEMO, "--user", "erin", "--tenant", "acme", "--tenant", "globex",
        "--act-for", "globex", "--roles", "viewer,auditor", "--claim", "audit_scope=finance",
        "--embed", "sales-overview", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert (decision["outcome"], decision["tenant"], decision["region"]) == (
        "allowed",
        "globex",
        "us",
    )
    request = decision["request"]
    assert request["url"] == "http://127.0.0.1:8090/embeddable/us/api/v1/security-token"
    assert request["headers"]["Authorization"] == "Bearer ********"
    assert request["body"]["securityContext"] == {
        "userId": "erin",
        "tenantId": "globex",
        "regions": ["us-east"],
        "auditScope": "finance",
    }
    assert decision["sent"] is False


def test_a_missing_claim_names_the_claim() -> None:
    result = run_cli(
        "explain", "--config", DEMO, "--user", "dave", "--tenant", "acme", "--roles", "auditor",
        "--embed", "sales-overview", "--json",
    )  # fmt: skip
    assert result.returncode == 1
    decision = json.loads(result.stdout)
    assert decision["outcome"] == "missing_claim"
    assert "'audit_scope'" in decision["reason"]


def test_a_service_request_and_no_secret_anywhere() -> None:
    result = run_cli(
        "explain", "--config", "config/broker.example.yaml", "--service", "report-worker",
        "--user", "nightly", "--tenant", "globex", "--roles", "viewer", "--embed", "sales-overview",
        env=EXAMPLE_ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "as service:report-worker" in result.stdout
    assert "https://api.us.embeddable.com/api/v1/security-token" in result.stdout
    for name, value in EXAMPLE_ENV.items():
        if "KEY" in name or "SECRET" in name:
            assert value not in result.stdout + result.stderr


def test_a_secret_templated_into_a_body_is_masked(tmp_path: Path) -> None:
    document = base_policy()
    context = document["embeds"]["sales-overview"]["request"]["securityContext"]
    context["oops"] = "${EMBEDDABLE_EU_API_KEY}"
    path = write_policy(tmp_path, document)
    result = run_cli(
        "explain", "--config", str(path), "--user", "a", "--tenant", "acme", "--roles", "viewer",
        "--embed", "sales-overview",
        env=BASE_ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert BASE_ENV["EMBEDDABLE_EU_API_KEY"] not in result.stdout
    assert '"oops":"********"' in body_line(result.stdout).decode()
    assert "exactly as sent, secrets masked" in result.stdout


def test_a_login_password_with_json_escapes_is_masked() -> None:
    # Superset's login carries the password in the JSON body, where a quote or a
    # backslash is escaped: the printed body must not show it in either form.
    password = 'pa"ss\\w0rd-7Q'
    escaped = orjson.dumps(password).decode()[1:-1]
    result = run_cli(
        "explain", "--config", "config/broker.example.yaml", "--user", "alice",
        "--tenant", "acme", "--roles", "analyst", "--embed", "bi-sales",
        env={**EXAMPLE_ENV, "SUPERSET_PASSWORD": password},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert '"password":"********"' in body_line(result.stdout).decode()
    for shown in (password, escaped, "w0rd-7Q"):
        assert shown not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--embed", "nope"],
            "token-broker explain: unknown embed 'nope' (the policy has: ops-dashboard, "
            "revenue, sales-overview)",
        ),
        (
            ["--embed", "sales-overview", "--tenant", "initech"],
            "token-broker explain: unknown tenant 'initech' (the policy has: acme, globex)",
        ),
        (
            ["--embed", "sales-overview", "--claim", "dept"],
            "token-broker explain: --claim 'dept': expected NAME=VALUE, e.g. --claim dept=finance",
        ),
        (
            ["--embed", "sales-overview", "--service", "worker"],
            "token-broker explain: unknown service 'worker' (the policy has: none)",
        ),
        (
            ["--embed", "sales-overview", "--service", "worker", "--act-for", "acme"],
            "token-broker explain: --service acts for the one --tenant given; --act-for does "
            "not apply",
        ),
        (
            # argparse turns a value of exactly "--" into []: refused, not explained as [].
            ["--embed", "sales-overview", "--user=--"],
            "token-broker explain: --user needs a non-empty id ('--' itself cannot be given)",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run_cli("explain", "--config", DEMO, "--user", "a", "--tenant", "acme", *args)
    assert result.returncode == 2
    assert result.stderr == message + "\n"
    assert result.stdout == ""


def test_an_invalid_policy_is_exit_1_with_its_path(tmp_path: Path) -> None:
    document = base_policy()
    document["embeds"]["sales-overview"]["allow"]["tenant"] = ["acme"]
    path = write_policy(tmp_path, document)
    result = run_cli(
        "explain", "--config", str(path), "--user", "a", "--tenant", "acme",
        "--embed", "sales-overview",
        env=BASE_ENV,
    )  # fmt: skip
    assert result.returncode == 1
    assert "embeds.sales-overview.allow.tenant: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["explain", "test"])
def test_both_commands_have_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"token-broker {command}" in result.stdout and "Exit 0" in result.stdout
