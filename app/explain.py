"""``token-broker explain``: what one user would get for one embed, and why.

Prints the decision (allowed, or the error code with the policy rule behind it), the
tenant and region, and the vendor request exactly as the broker would send it — the
request line, the headers with credentials masked, the body byte for byte — without
calling the vendor. The decision comes from the real token flow (:mod:`app.dryrun`).

Exit codes: 0 allowed, 1 denied or an invalid policy file, 2 bad input (an unknown
embed, tenant or service, a ``--claim`` without ``=``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from app.config.loader import ConfigError, load_policy_file
from app.config.models import PolicyConfig
from app.dryrun import Decision, DryRun, DryRunInputError, DryRunRequest
from app.settings import Settings

EXIT_ALLOWED = 0
EXIT_DENIED = 1
EXIT_BAD_INPUT = 2
MAX_CLAIM_NESTING = 8


class UsageError(ValueError):
    """Bad command-line input; the message is one line for the person at the terminal."""


def policy_path(flag: str | None) -> Path:
    """``--config``, else ``BROKER_CONFIG``, else the settings' default."""
    if flag:
        return Path(flag)
    from_env = os.environ.get("BROKER_CONFIG")
    if from_env:
        return Path(from_env)
    default = Settings.model_fields["config"].default
    return Path(str(default))


def load_policy(path: Path) -> PolicyConfig | None:
    """The policy, or None after printing every problem (YAML path and reason)."""
    try:
        return load_policy_file(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None


def emit(text: str) -> None:
    """Write ``text`` and a newline to stdout as UTF-8, whatever the locale's encoding:
    the body line is the vendor's bytes, and a policy value may be any Unicode."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only stream (tests redirect stdout to StringIO)
        sys.stdout.write(text + "\n")
        return
    sys.stdout.flush()
    buffer.write(text.encode("utf-8") + b"\n")
    buffer.flush()


def quiet_flow_logs() -> None:
    """No log lines from the flow on the terminal: an unexpected error in a dry run is
    reported as its ``internal_error`` decision, never as a logged traceback."""
    flow_logs = logging.getLogger("token_broker")
    if not any(isinstance(handler, logging.NullHandler) for handler in flow_logs.handlers):
        flow_logs.addHandler(logging.NullHandler())


def parse_claims(pairs: list[str]) -> dict[str, Any]:
    """``--claim k=v`` pairs as nested claims: ``a.b=v`` nests, ``v`` is JSON when it
    parses as JSON (``3``, ``true``, ``["x"]``) and a plain string otherwise."""
    claims: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--claim {pair!r}: expected NAME=VALUE, e.g. --claim dept=finance")
        segments = name.split(".")
        if any(not segment for segment in segments) or len(segments) > MAX_CLAIM_NESTING:
            raise UsageError(f"--claim {pair!r}: the name is not a claim path like org.dept")
        try:
            value: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = text
        node = claims
        for segment in segments[:-1]:
            child = node.setdefault(segment, {})
            if not isinstance(child, dict):
                raise UsageError(f"--claim {pair!r}: {segment!r} is already a value, not an object")
            node = child
        if segments[-1] in node:
            raise UsageError(f"--claim {pair!r}: claim {name!r} is given twice")
        node[segments[-1]] = value
    return claims


def split_roles(text: str) -> tuple[str, ...]:
    return tuple(role.strip() for role in text.split(",") if role.strip())


# --- output -------------------------------------------------------------------------------


def render_text(decision: Decision) -> str:
    lines: list[str] = []
    if decision.allowed:
        lines.append("decision: allowed")
    else:
        lines.append(f"decision: {decision.outcome} (HTTP {decision.status})")
        lines.append(f"  why:     {decision.reason}")
        lines.append(f"  broker:  {decision.detail!r} (what the caller reads)")
    user = decision.user
    roles = ", ".join(user.roles) if user.roles else "none"
    lines.append(f"  user:    {user.id} (roles: {roles}; as {decision.caller})")
    provider = ""
    if decision.provider is not None:
        provider = f" -> provider {decision.provider}"
        if decision.provider_type is not None:
            provider += f" ({decision.provider_type})"
    lines.append(f"  embed:   {decision.embed}{provider}")
    if decision.tenant is not None:
        region = f" (region {decision.region})" if decision.region else ""
        lines.append(f"  tenant:  {decision.tenant}{region}")
    if decision.ttl_seconds is not None:
        lines.append(f"  token:   valid {decision.ttl_seconds} s (token_ttl_seconds)")
    request = decision.request
    if decision.allowed and request is None:
        lines.append("")
        lines.append("no vendor request: this provider signs the token itself")
        if decision.payload is not None:
            lines.append("signed payload (the broker adds exp):")
            lines.append(
                orjson.dumps(dict(decision.payload), option=orjson.OPT_INDENT_2).decode("utf-8")
            )
    if request is not None:
        lines.append("")
        lines.append(f"vendor request (not sent): {request.method} {request.url}")
        lines.extend(f"  {name}: {value}" for name, value in request.headers)
        masked = ", secrets masked" if request.content_masked else ""
        lines.append(f"body ({len(request.content)} bytes exactly as sent{masked}):")
        lines.append(request.content.decode("utf-8"))
        lines.append("body, indented:")
        lines.append(orjson.dumps(request.body, option=orjson.OPT_INDENT_2).decode("utf-8"))
        if decision.payload is not None:
            lines.append("")
            lines.append("token request body (sent after the request above):")
            lines.append(
                orjson.dumps(dict(decision.payload), option=orjson.OPT_INDENT_2).decode("utf-8")
            )
    lines.append("")
    lines.append("nothing was sent to the vendor.")
    return "\n".join(lines)


def render_json(decision: Decision) -> dict[str, Any]:
    user = decision.user
    request = decision.request
    return {
        "outcome": decision.outcome,
        "status": decision.status,
        "detail": decision.detail,
        "reason": decision.reason,
        "caller": decision.caller,
        "user": {
            "id": user.id,
            "tenants": list(user.tenants),
            "roles": list(user.roles),
            "email": user.email,
        },
        "embed": decision.embed,
        "provider": decision.provider,
        "provider_type": decision.provider_type,
        "tenant": decision.tenant,
        "region": decision.region,
        "token_ttl_seconds": decision.ttl_seconds,
        "request": None
        if request is None
        else {
            "method": request.method,
            "url": request.url,
            "headers": dict(request.headers),
            "body": request.body,
            "body_bytes": len(request.content),
            "body_sha256": request.content_sha256,
            "body_masked": request.content_masked,
        },
        "payload": None if decision.payload is None else dict(decision.payload),
        "sent": False,
    }


# --- the command --------------------------------------------------------------------------


def run_explain(args: argparse.Namespace) -> int:
    """``token-broker explain`` (the arguments are defined in app.cli)."""
    if not isinstance(args.user, str) or not args.user:
        # argparse (3.11) drops a value of exactly "--" and hands over [] instead.
        return _bad_input("--user needs a non-empty id ('--' itself cannot be given)")
    try:
        claims = parse_claims(args.claim or [])
    except UsageError as exc:
        return _bad_input(str(exc))
    config = load_policy(policy_path(args.config))
    if config is None:
        return EXIT_DENIED
    quiet_flow_logs()
    tenants = tuple(args.tenant)
    request = DryRunRequest(
        user_id=args.user,
        tenants=tenants,
        embed=args.embed,
        roles=split_roles(args.roles),
        email=args.email,
        claims=claims,
        tenant=args.act_for if args.act_for else None,
        service=args.service,
    )
    if args.service is not None and (len(tenants) > 1 or args.act_for):
        return _bad_input("--service acts for the one --tenant given; --act-for does not apply")
    try:
        decision = DryRun(config).decide(request)
    except DryRunInputError as exc:
        return _bad_input(str(exc))
    if args.json:
        emit(orjson.dumps(render_json(decision), option=orjson.OPT_INDENT_2).decode())
    else:
        emit(render_text(decision))
    return EXIT_ALLOWED if decision.allowed else EXIT_DENIED


def _bad_input(message: str) -> int:
    print(f"token-broker explain: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT
