"""Property: what ``explain`` prints is what the vendor gets, byte for byte.

For users, tenants, roles and claims drawn from the policy (hypothesis), the same
request is made twice: once as ``token-broker explain`` (its printed output), once over
HTTP to the real broker, whose vendor is the sandbox on loopback. The decisions agree;
for an allowed request, the body line explain printed has the SHA-256 of the bytes the
sandbox received, and the request went to the URL explain printed. Explain itself
never reaches the sandbox.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from app.cli import main
from tests.support.policies import base_policy
from tests.support.stack import Stack, running_stack, session_token

TENANTS = ("acme", "globex")
EMBEDS = ("sales-overview", "ops-dashboard")
ROLES = ("viewer", "analyst", "auditor", "intern")
# Any text a session JWT can carry: no lone surrogates (they are not UTF-8).
# argparse cannot take "--" as an option's value (explain refuses it as bad input).
TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=24).filter(lambda s: s != "--")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    document = base_policy()
    document["roles"]["auditor"] = {
        "embeddable": {"securityContext": {"auditScope": "{user.claims.audit_scope}"}}
    }
    document["embeds"]["sales-overview"]["allow"]["roles"].append("auditor")
    # Every request must reach the vendor: no cached tokens, no rate limits.
    document["cache"] = {"enabled": False}
    del document["limits"]
    with running_stack(tmp_path_factory.mktemp("explain"), document) as running:
        yield running


def explain(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["explain", *args])
    return code, out.getvalue()


def printed_lines(stdout: str) -> list[str]:
    """Lines as a terminal or a pipe sees them: split at "\n" only. str.splitlines()
    would also split at U+0085 or U+2028, which a JSON string may hold unescaped."""
    return stdout.split("\n")


def printed_body(stdout: str) -> bytes:
    lines = printed_lines(stdout)
    index = next(i for i, line in enumerate(lines) if line.startswith("body ("))
    return lines[index + 1].encode("utf-8")


def printed_url(stdout: str) -> str:
    line = next(line for line in printed_lines(stdout) if line.startswith("vendor request"))
    return line.rsplit(" ", 1)[1]


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(  # both vendors allowed, a claim read by a role addition
    user="alice", tenants=["acme"], act_for=None, roles=["analyst"], audit_scope=None,
    embed="ops-dashboard",
)  # fmt: skip
@example(  # a line separator JSON leaves unescaped: the body stays one printed line
    user="\x85\u2028", tenants=["globex"], act_for=None, roles=["viewer"], audit_scope=None,
    embed="sales-overview",
)  # fmt: skip
@example(
    user="dave", tenants=["acme", "globex"], act_for="globex", roles=["viewer", "auditor"],
    audit_scope="finance", embed="sales-overview",
)  # fmt: skip
@given(
    user=TEXT,
    tenants=st.sampled_from([["acme"], ["globex"], ["acme", "globex"], ["globex", "acme"]]),
    act_for=st.none() | st.sampled_from(TENANTS),
    roles=st.lists(st.sampled_from(ROLES), min_size=1, max_size=3, unique=True),
    audit_scope=st.none() | TEXT,
    embed=st.sampled_from(EMBEDS),
)
def test_explain_prints_the_bytes_the_vendor_receives(
    stack: Stack,
    user: str,
    tenants: list[str],
    act_for: str | None,
    roles: list[str],
    audit_scope: str | None,
    embed: str,
) -> None:
    stack.clear_vendor_requests()
    args = [f"--config={stack.policy_path}", f"--user={user}", f"--embed={embed}"]
    args += [f"--tenant={tenant}" for tenant in tenants]
    args += [f"--roles={','.join(roles)}"]
    if act_for is not None:
        args.append(f"--act-for={act_for}")
    claims: dict[str, Any] = {}
    if audit_scope is not None:
        claims["audit_scope"] = audit_scope
        args.append(f"--claim=audit_scope={orjson.dumps(audit_scope).decode()}")
    code, stdout = explain(*args)
    assert stack.vendor_requests() == []  # explain never calls the vendor

    token = session_token(user, tenants, roles, email=None, **claims)
    answer = stack.token(embed, token, **({"tenant": act_for} if act_for is not None else {}))

    decision = printed_lines(stdout)[0]
    event(decision)
    if answer.status_code == 200:
        assert (code, decision) == (0, "decision: allowed"), stdout
        [received] = stack.vendor_requests()
        body = printed_body(stdout)
        assert received["body_sha256"] == hashlib.sha256(body).hexdigest(), (
            received["body"],
            body,
        )
        assert printed_url(stdout) == f"{stack.sandbox}{received['path']}"
    else:
        problem = answer.json()
        assert code == 1, stdout
        assert decision.startswith(f"decision: {problem['code']} (HTTP {answer.status_code})")
        assert stack.vendor_requests() == []
