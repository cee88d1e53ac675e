"""``token-broker test``: the shipped policy tests, failure messages, and bad input.

The command runs as a child process, as a user or CI runs it. The shipped case files
are also checked for what they must cover, and run against deliberately broken copies
of the demo policy: cases that pass on a leaking policy would prove nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config.loader import load_policy_file
from app.policy_tests import (
    ABSENT,
    CaseFile,
    CaseFileError,
    first_difference,
    read_case_file,
)
from tests.deploy.support import example_env
from tests.support.cli import ROOT, run_cli

CONFIG = ROOT / "config"
DEMO = CONFIG / "demo.yaml"
DEMO_CASES = CONFIG / "demo.cases.yaml"
EXAMPLE = CONFIG / "broker.example.yaml"
EXAMPLE_CASES = CONFIG / "broker.example.cases.yaml"
EXAMPLE_ENV = example_env(ROOT / ".env.example")
DENIAL_KINDS = frozenset(
    {"embed_not_allowed", "tenant_not_allowed", "missing_claim", "invalid_request"}
)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the shipped case files -------------------------------------------------------------


def test_the_demo_policy_passes_its_cases_found_beside_it() -> None:
    result = run_cli("test", "--config", "config/demo.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(read_case_file(DEMO_CASES).cases)
    assert result.stdout.splitlines()[0] == f"{DEMO_CASES.relative_to(ROOT)} ({count} cases)"
    assert result.stdout.count("\n  pass  ") == count
    assert result.stdout.splitlines()[-1] == f"{count} passed, 0 failed"


def test_the_example_policy_passes_its_cases_without_printing_a_secret() -> None:
    result = run_cli("test", "--config", str(EXAMPLE), str(EXAMPLE_CASES), env=EXAMPLE_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(read_case_file(EXAMPLE_CASES).cases)
    assert result.stdout.splitlines()[-1] == f"{count} passed, 0 failed"
    for name, value in EXAMPLE_ENV.items():
        if "KEY" in name or "SECRET" in name:
            assert value not in result.stdout + result.stderr


@pytest.mark.parametrize(("policy", "cases"), [(DEMO, DEMO_CASES), (EXAMPLE, EXAMPLE_CASES)])
def test_shipped_cases_cover_every_embed_role_tenant_and_denial(policy: Path, cases: Path) -> None:
    config = load_policy_file(policy, environ=EXAMPLE_ENV)
    case_file = read_case_file(cases)
    allowed = [case for case in case_file.cases if case.expect.outcome == "allowed"]
    assert {case.embed for case in allowed} == set(config.embeds)
    assert {case.tenant or case.user.tenant for case in allowed} == set(config.tenants)
    roles = set(config.roles) | {
        role for embed in config.embeds.values() for role in embed.allow.roles or ()
    }
    assert roles <= {role for case in allowed for role in case.user.roles}
    assert {case.expect.outcome for case in case_file.cases} >= DENIAL_KINDS
    if config.services:
        assert {case.service for case in case_file.cases} >= set(config.services)


def _copy_acme_attributes_to_globex(policy: dict[str, Any]) -> None:
    policy["tenants"]["globex"]["attributes"] = copy.deepcopy(
        policy["tenants"]["acme"]["attributes"]
    )


def _give_viewers_the_analyst_additions(policy: dict[str, Any]) -> None:
    policy["roles"]["viewer"] = copy.deepcopy(policy["roles"]["analyst"])


def _open_ops_to_every_role(policy: dict[str, Any]) -> None:
    del policy["embeds"]["ops-dashboard"]["allow"]["roles"]


def _template_typo_in_the_security_context(policy: dict[str, Any]) -> None:
    context = policy["embeds"]["sales-overview"]["request"]["securityContext"]
    context["regions"] = ["eu-west"]  # a literal pasted where the template belonged


def _drop_the_claim_from_the_auditor_scope(policy: dict[str, Any]) -> None:
    policy["roles"]["auditor"]["embeddable"]["securityContext"]["auditScope"] = "all"


@pytest.mark.parametrize(
    ("leak", "failing_case"),
    [
        (_copy_acme_attributes_to_globex, "globex viewer gets globex rows from the US region"),
        (_give_viewers_the_analyst_additions, "acme viewer gets acme rows from the EU region"),
        (_open_ops_to_every_role, "a viewer cannot open the ops dashboard"),
        (_template_typo_in_the_security_context, "globex viewer gets globex rows"),
        (_drop_the_claim_from_the_auditor_scope, "an auditor without an audit_scope claim"),
    ],
)
def test_the_demo_cases_catch_a_leaking_policy(
    tmp_path: Path, leak: Callable[[dict[str, Any]], None], failing_case: str
) -> None:
    policy = yaml.safe_load(DEMO.read_text())
    leak(policy)
    broken = write(tmp_path, "demo.yaml", yaml.safe_dump(policy, sort_keys=False))
    result = run_cli("test", "--config", str(broken), str(DEMO_CASES))
    assert result.returncode == 1, result.stdout + result.stderr
    failures = [line for line in result.stdout.splitlines() if line.startswith("  FAIL  ")]
    assert any(line.startswith(f"  FAIL  {failing_case}") for line in failures), result.stdout
    assert "Traceback" not in result.stderr


# --- failure messages ---------------------------------------------------------------------

WRONG_EXPECTATIONS = """\
cases:
  - name: right
    user: {id: alice, tenant: acme, roles: [viewer]}
    embed: sales-overview
    expect: {outcome: allowed, request: {securityContext: {tenantId: acme}}}
  - name: wrong tenant in the body
    user: {id: alice, tenant: acme, roles: [viewer]}
    embed: sales-overview
    expect: {outcome: allowed, request: {securityContext: {tenantId: globex}}}
  - name: wrong outcome
    user: {id: bob, tenant: acme, roles: [viewer]}
    embed: ops-dashboard
    expect: {outcome: allowed}
  - name: expected a denial
    user: {id: carol, tenant: globex, roles: [analyst]}
    embed: ops-dashboard
    expect: {outcome: embed_not_allowed}
  - name: wrong list element
    user: {id: alice, tenant: acme, roles: [analyst]}
    embed: ops-dashboard
    expect:
      outcome: allowed
      request:
        params:
          dashboardAppFilters: [{dashboardId: ops-dash, values: {region: [us-east]}}]
  - name: a field the body lacks
    user: {id: alice, tenant: acme, roles: [viewer]}
    embed: sales-overview
    expect: {outcome: allowed, region: eu, request: {roles: [analyst]}}
  - name: misspelt embed
    user: {id: alice, tenant: acme, roles: [analyst]}
    embed: ops-dashbord
    expect: {outcome: embed_not_allowed}
"""


def test_a_wrong_expectation_says_where_what_was_expected_and_what_came(tmp_path: Path) -> None:
    cases = write(tmp_path, "wrong.cases.yaml", WRONG_EXPECTATIONS)
    result = run_cli("test", "--config", str(DEMO), str(cases))
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        f"{cases} (7 cases)",
        "  pass  right",
        "  FAIL  wrong tenant in the body: cases[1].expect.request.securityContext.tenantId: "
        'expected "globex", got "acme"',
        "  FAIL  wrong outcome: cases[2].expect.outcome: expected allowed, got embed_not_allowed "
        "(embeds.ops-dashboard.allow.roles is [analyst]; the user's roles are [viewer])",
        "  FAIL  expected a denial: cases[3].expect.outcome: expected embed_not_allowed, "
        "got allowed (tenant globex, region us)",
        "  FAIL  wrong list element: cases[4].expect.request.params.dashboardAppFilters[0]"
        '.values.region[0]: expected "us-east", got "eu-west"',
        "  FAIL  a field the body lacks: cases[5].expect.request.roles: "
        'expected ["analyst"], got nothing (no such field)',
        "  FAIL  misspelt embed: cases[6].embed: unknown embed 'ops-dashbord' "
        "(the policy has: ops-dashboard, revenue, sales-overview)",
        "1 passed, 6 failed",
    ]
    assert result.stderr == ""


# --- files that cannot be used ------------------------------------------------------------


def test_a_malformed_case_file_is_exit_2_with_every_yaml_path(tmp_path: Path) -> None:
    cases = write(
        tmp_path,
        "bad.cases.yaml",
        """\
cases:
  - name: typo in a key
    user: {id: alice, tenant: acme, rolse: [viewer]}
    embed: sales-overview
    expect: {outcome: alowed}
  - name: a date is no JSON claim
    user: {id: alice, tenants: acme, claims: {since: 2024-01-01}}
    embed: sales-overview
    expect: {outcome: embed_not_allowed, request: {a: 1}}
""",
    )
    result = run_cli("test", "--config", str(DEMO), str(DEMO_CASES), str(cases))
    assert result.returncode == 2
    assert result.stdout == ""  # nothing ran, not even the good file
    lines = result.stderr.splitlines()
    assert f"{cases}: cases[0].user.rolse: unknown key (check the spelling)" in lines
    assert any(
        line.startswith(f"{cases}: cases[0].expect.outcome: must be allowed or") for line in lines
    )
    assert f"{cases}: cases[1].user.tenants: Input should be a valid list" in lines
    assert any(
        line.startswith(f"{cases}: cases[1].user.claims.since: not a JSON value") for line in lines
    )
    assert (
        f"{cases}: cases[1].expect: request and region can only be expected with outcome: allowed"
        in lines
    )
    assert lines[-1] == "token-broker test: no case was run"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("cases: [\n", "YAML syntax error at line 2, column 1"),
        ("- just a list\n", "expected a mapping with a cases: list"),
        ("cases: []\n", "cases: List should have at least 1 item"),
        (
            "cases:\n  - {name: a, user: {id: x, tenant: acme}, embed: e, expect: {outcome: allowed}}\n"
            "  - {name: a, user: {id: x, tenant: acme}, embed: e, expect: {outcome: allowed}}\n",
            "cases[1] has the same name as cases[0]: 'a'",
        ),
        (
            "cases:\n  - {name: a, service: s, tenant: acme, user: {id: x, tenant: acme},"
            " embed: e, expect: {outcome: allowed}}\n",
            "cases[0]: a service acts for user.tenant (one tenant)",
        ),
    ],
)
def test_unusable_case_files_name_the_file_and_the_reason(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = write(tmp_path, "cases.yaml", text)
    with pytest.raises(CaseFileError) as raised:
        read_case_file(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert reason in str(raised.value)


def test_a_missing_case_file_is_exit_2_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.cases.yaml"
    result = run_cli("test", "--config", str(DEMO), str(missing))
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == f"{missing}: file not found"
    assert "Traceback" not in result.stderr


def test_a_policy_that_does_not_load_is_exit_2(tmp_path: Path) -> None:
    result = run_cli("test", "--config", str(tmp_path / "nope.yaml"), str(DEMO_CASES))
    assert result.returncode == 2
    assert "file not found" in result.stderr and "no case was run" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_directory_runs_every_case_file_in_it(tmp_path: Path) -> None:
    first = yaml.safe_load(DEMO_CASES.read_text())
    write(tmp_path, "a.yaml", yaml.safe_dump({"cases": first["cases"][:2]}))
    write(tmp_path, "b.yaml", yaml.safe_dump({"cases": first["cases"][2:3]}))
    result = run_cli("test", "--config", str(DEMO), str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "3 passed, 0 failed"


# --- matching -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "actual", "difference"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, None),  # objects: a subset by key
        ({"a": {"b": "x"}}, {"a": {"b": "x", "c": 1}}, None),
        ({"a": [1, 2]}, {"a": [1, 2]}, None),
        ({"a": [1]}, {"a": [1, 2]}, ("$.a", [1], [1, 2])),  # lists: exactly
        ({"a": [{"b": 1}]}, {"a": [{"b": 1, "c": 2}]}, ("$.a[0].c", ABSENT, 2)),
        ({"a": True}, {"a": 1}, ("$.a", True, 1)),  # JSON: true is not 1
        ({"a": 1}, {"a": 1.0}, None),  # ... but 1 and 1.0 are one number
        ({"a": "1"}, {"a": 1}, ("$.a", "1", 1)),
        ({"a": None}, {}, None),  # null: absent is as good
        ({"a": None}, {"a": None}, None),
        ({"a": None}, {"a": 0}, ("$.a", None, 0)),
        ({"a": 1}, {}, ("$.a", 1, ABSENT)),
        ({"a": {"b": 1}}, {"a": [1]}, ("$.a", {"b": 1}, [1])),
    ],
)
def test_first_difference(expected: Any, actual: Any, difference: tuple[Any, ...] | None) -> None:
    found = first_difference(expected, actual, "$")
    if difference is None:
        assert found is None
    else:
        assert found is not None
        assert (found.path, found.expected, found.actual) == difference


def test_the_case_model_takes_numeric_ids_as_the_broker_maps_them() -> None:
    case_file = CaseFile.model_validate(
        {
            "cases": [
                {
                    "name": "n",
                    "user": {"id": 42, "tenant": "acme"},
                    "embed": "e",
                    "expect": {"outcome": "allowed"},
                }
            ]
        }
    )
    assert case_file.cases[0].user.id == "42"
