"""The ``token-broker`` command (api.md "Command line").

Exit codes: 0 success, 1 invalid configuration or refused operation, 2 usage error.
Errors are one readable message on stderr, never a traceback.

Each command imports the heavy parts it alone needs (uvicorn, the app, the sandbox)
inside its function, so ``check-config`` and ``dev-token`` start in a fraction of the
time; no import here is deferred to avoid a cycle.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from app.config.loader import ConfigError, load_policy_file
from app.config.models import PolicyConfig
from app.masking import mask_url
from app.settings import Settings, SettingsError, load_settings, unknown_variables
from app.state.redis_url import parse_redis_url
from app.version import package_version

EXIT_OK = 0
EXIT_INVALID = 1
WORKER_HEALTHCHECK_SECONDS = 60
DEFAULT_CONFIG = Path("config/broker.yaml")
DEMO_CONFIG = Path("config/demo.yaml")


def _fail(message: str) -> int:
    print(f"token-broker: {message}", file=sys.stderr)
    return EXIT_INVALID


def _settings_or_report() -> Settings | None:
    """The environment settings, or None after one line per bad variable."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"token-broker: {problem}", file=sys.stderr)
        return None
    for name in unknown_variables():
        print(f"token-broker: warning: {name} is not a token-broker setting", file=sys.stderr)
    return settings


def _tracing_problem(settings: Settings) -> str | None:
    """With tracing on: what is wrong with the ``OTEL_*`` exporter choice, in one line."""
    if not settings.otel_enabled:
        return None
    from app.observability.tracing import TracingConfigError, exporter_classes

    try:
        exporter_classes(os.environ)
    except TracingConfigError as exc:
        return str(exc)
    return None


def _policy_path(explicit: str | None, how_to_pass: str) -> Path | None:
    """The policy file to use: the argument, else ``BROKER_CONFIG``, else the default
    when it exists. In a fresh clone there is no ``config/broker.yaml``: say in one
    line what to pass instead of failing on a file nobody created."""
    if explicit:
        return Path(explicit)
    configured = os.environ.get("BROKER_CONFIG")
    if configured:
        return Path(configured)
    if DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG
    _fail(
        f"no policy file at {DEFAULT_CONFIG} (the default); {how_to_pass}, or set "
        "BROKER_CONFIG (config/broker.example.yaml is a template to copy)"
    )
    return None


def _load_or_report(path: Path) -> PolicyConfig | None:
    """The policy, or None after printing every problem (YAML path and reason)."""
    try:
        return load_policy_file(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None


# --- check-config ---------------------------------------------------------------------


def _header_room_problem(settings: Settings, config: PolicyConfig) -> str | None:
    from app.connections import header_room_problem

    return header_room_problem(settings.max_header_bytes, config.session.max_token_bytes)


def summarize(config: PolicyConfig) -> str:
    lines = ["issuers:"]
    for issuer in config.session.issuers:
        if issuer.secret is not None:
            source = "shared secret"
        elif issuer.jwks_url is not None:
            source = f"JWKS {mask_url(issuer.jwks_url)}"
        else:
            source = "static public key"
        lines.append(f"  {issuer.issuer} ({', '.join(issuer.algorithms)}; {source})")
    lines.append(f"tenants ({len(config.tenants)}):")
    lines.extend(f"  {name} (region {tenant.region})" for name, tenant in config.tenants.items())
    lines.append(f"providers ({len(config.providers)}):")
    for name, provider in config.providers.items():
        regions = provider.region_names()
        where = f"; regions {', '.join(sorted(regions))}" if regions else ""
        lenient = "; allow_unknown_fields" if provider.allow_unknown_fields else ""
        lines.append(f"  {name} ({provider.type}{where}{lenient})")
    lines.append(f"embeds ({len(config.embeds)}):")
    lines.extend(f"  {name} -> {embed.provider}" for name, embed in config.embeds.items())
    if config.services:
        lines.append(f"services ({len(config.services)}): {', '.join(config.services)}")
    if config.forwarded_unknown_fields:
        lines.append(
            "warning: unknown request fields, forwarded as written (allow_unknown_fields):"
        )
        lines.extend(f"  {path}" for path in config.forwarded_unknown_fields)
    return "\n".join(lines)


def cmd_check_config(args: argparse.Namespace) -> int:
    """The policy file and the environment settings: everything ``serve`` would refuse."""
    settings = _settings_or_report()
    path = _policy_path(args.path, f"pass one, e.g. `token-broker check-config {DEMO_CONFIG}`")
    config = _load_or_report(path) if path is not None else None
    if config is None or settings is None:
        return EXIT_INVALID
    problem = _tracing_problem(settings) or _header_room_problem(settings, config)
    if problem is not None:
        return _fail(problem)
    print(f"{path}: valid")
    print(f"environment: valid ({describe_settings(settings)})")
    print(summarize(config))
    return EXIT_OK


REDIS_TOPOLOGY_NAMES = {
    "single": "Redis",
    "cluster": "Redis Cluster",
    "sentinel": "Redis via Sentinel",
}


def describe_settings(settings: Settings) -> str:
    """What the environment chose, without any value that could be secret."""
    mode = "in-process state"
    if settings.redis_url is not None:
        topology = parse_redis_url(settings.redis_url.get_secret_value()).topology
        mode = f"{REDIS_TOPOLOGY_NAMES[topology]} (shared cache, limits and vendor calls)"
    return (
        f"{mode}; {settings.workers} worker{'s' if settings.workers > 1 else ''}; "
        f"logs {settings.log_format} at {settings.log_level}; "
        f"tracing {'on' if settings.otel_enabled else 'off'}"
    )


# --- serve ----------------------------------------------------------------------------


def _export_overrides(args: argparse.Namespace) -> None:
    """Flags win over the environment; exported so every worker process sees them."""
    for flag, variable in (
        ("config", "BROKER_CONFIG"),
        ("host", "BROKER_HOST"),
        ("port", "BROKER_PORT"),
        ("workers", "BROKER_WORKERS"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            os.environ[variable] = str(value)


@contextlib.contextmanager
def _multiprocess_metrics_dir() -> Iterator[None]:
    """A private folder for prometheus-client's per-worker files, removed at exit.

    A folder the operator set (``PROMETHEUS_MULTIPROC_DIR``) is theirs to manage."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    folder = tempfile.mkdtemp(prefix="token-broker-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        yield
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(folder, ignore_errors=True)


def listen_problem(host: str, port: int) -> str | None:
    """Why ``serve`` could not listen on host:port, in one line; None when it can.

    uvicorn would otherwise log the bind error after the lifespan has started and exit
    with 3. The probe binds the way uvicorn does (SO_REUSEADDR) and closes at once."""
    if port == 0:
        return None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror:
        return f"cannot listen on {host!r}: not a usable address (--host, BROKER_HOST)"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"port {port} on {host} is already in use; choose another with "
                    "--port N (BROKER_PORT)"
                )
            return f"cannot listen on {host}:{port} ({exc.strerror}); check --host and --port"
    return None


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The server options ``serve`` runs uvicorn with (the benchmark reuses them)."""
    from app.connections import ConnectionGuard, ConnectionLimits
    from app.observability.logging import logging_config

    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": logging_config(settings.log_level, settings.log_format),
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": int(settings.shutdown_timeout_seconds),
        "server_header": False,
        "lifespan": "on",
        # httptools with bounds on header size and count, header and body read time
        # and connections (app.connections): uvicorn calls the guard per connection.
        "http": ConnectionGuard(ConnectionLimits.from_settings(settings)),
        "ws": "none",
    }


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.connections import ConnectionLimits, descriptor_problem
    from app.observability.logging import configure_logging
    from app.outbound import OutboundConfigError, check_outbound

    _export_overrides(args)
    settings = _settings_or_report()
    if settings is None or _policy_path(None, "pass --config PATH") is None:
        return EXIT_INVALID
    config = _load_or_report(settings.config)
    if config is None:
        return EXIT_INVALID
    try:
        check_outbound(settings.outbound_options())
    except OutboundConfigError as exc:
        return _fail(f"invalid environment settings: {exc}")
    problem = _tracing_problem(settings) or listen_problem(settings.host, settings.port)
    if problem is not None:
        return _fail(problem)
    problem = _header_room_problem(settings, config) or descriptor_problem(
        ConnectionLimits.from_settings(settings)
    )
    if problem is not None:
        return _fail(problem)

    configure_logging(settings.log_level, settings.log_format)
    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal it caught
    # with the handler it found installed. A no-op handler makes that a clean exit 0.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    common = uvicorn_options(settings)
    if settings.workers > 1:
        # prometheus-client aggregates workers through files in this directory.
        with _multiprocess_metrics_dir():
            uvicorn.run(
                "app.main:create_app",
                factory=True,
                workers=settings.workers,
                # A spawned worker imports everything before it can answer the
                # supervisor's ping; on a CPU-throttled pod that takes longer than
                # uvicorn's 5 s default, and the worker would be killed in a loop.
                timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
                **common,
            )
    else:
        from app.main import create_app

        uvicorn.run(create_app(settings), **common)
    return EXIT_OK


# --- dev-token, sandbox, demo -------------------------------------------------------------


def cmd_dev_token(args: argparse.Namespace) -> int:
    from app.auth import mint_dev_token
    from app.config.loader import load_session_section

    if args.ttl <= 0:
        return _fail("--ttl must be positive")
    path = _policy_path(args.config, f"pass --config PATH, e.g. --config {DEMO_CONFIG}")
    if path is None:
        return EXIT_INVALID
    try:
        # Only the session section: minting a session needs no vendor API key.
        session = load_session_section(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    roles = [role.strip() for role in args.roles.split(",") if role.strip()]
    try:
        token = mint_dev_token(
            session, user=args.user, tenant=args.tenant, roles=roles, ttl_seconds=args.ttl
        )
    except ValueError as exc:
        return _fail(str(exc))
    print(token)
    return EXIT_OK


def cmd_sandbox(args: argparse.Namespace) -> int:
    from app.sandbox import run_sandbox

    run_sandbox(args.host, args.port)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    return run_demo(broker_port=args.port, sandbox_port=args.sandbox_port)


# --- explain, test (dry runs of the token flow) ---------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    from app.explain import run_explain

    return run_explain(args)


def cmd_test(args: argparse.Namespace) -> int:
    from app.policy_tests import run_tests

    return run_tests(args)


# --- parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="token-broker",
        description="Mint short-lived embedded-analytics tokens without exposing vendor API keys.",
    )
    parser.add_argument("--version", action="version", version=f"token-broker {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the service",
        description="Run the token broker. Flags override the BROKER_* environment.",
    )
    serve.add_argument("--config", metavar="PATH", help="policy file (BROKER_CONFIG)")
    serve.add_argument("--host", help="listen address (BROKER_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (BROKER_PORT, default 8080)")
    serve.add_argument("--workers", type=int, help="worker processes (BROKER_WORKERS, default 1)")
    serve.set_defaults(handler=cmd_serve)

    check = commands.add_parser(
        "check-config",
        help="validate a policy file and the BROKER_* environment",
        description="Load and validate a policy file and the BROKER_* environment settings; "
        "print a summary (never secrets). Exit 0 when valid, 1 with the YAML path or the "
        "variable and the reason when not.",
    )
    check.add_argument("path", nargs="?", help="policy file (default: BROKER_CONFIG)")
    check.set_defaults(handler=cmd_check_config)

    dev_token = commands.add_parser(
        "dev-token",
        help="print a session JWT for local testing",
        description="Print a session JWT signed with the config's first HS* issuer secret "
        "(for local testing only). Refuses when the config has no HS* issuer.",
    )
    dev_token.add_argument("--user", required=True, help="user id (the mapped user_id claim)")
    dev_token.add_argument(
        "--tenant", required=True, action="append", help="tenant id (repeatable)"
    )
    dev_token.add_argument("--roles", default="", help="comma-separated roles, e.g. viewer,analyst")
    dev_token.add_argument(
        "--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)"
    )
    dev_token.add_argument("--config", metavar="PATH", help="policy file (default: BROKER_CONFIG)")
    dev_token.set_defaults(handler=cmd_dev_token)

    sandbox = commands.add_parser(
        "sandbox",
        help="run the vendor emulators",
        description="Run local emulators of the Embeddable, Databrain, Superset and Preset token APIs.",
    )
    sandbox.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    sandbox.add_argument("--port", type=int, default=8090, help="listen port (default 8090)")
    sandbox.set_defaults(handler=cmd_sandbox)

    demo = commands.add_parser(
        "demo",
        help="run sandbox + broker on config/demo.yaml and print curl commands",
        description="Run the vendor sandbox and the broker in one process on config/demo.yaml "
        "and print ready-to-paste curl commands with fresh dev tokens.",
    )
    demo.add_argument("--port", type=int, default=8080, help="broker port (default 8080)")
    demo.add_argument("--sandbox-port", type=int, default=8090, help="sandbox port (default 8090)")
    demo.set_defaults(handler=cmd_demo)

    _add_explain(commands)
    _add_test(commands)
    return parser


def _add_explain(commands: Any) -> None:
    explain = commands.add_parser(
        "explain",
        help="dry run: the decision and the exact vendor request, without calling the vendor",
        description="Dry run one token request through the real token flow: print the "
        "decision (allowed, or the error code and the policy rule behind it), the tenant "
        "and region, and the vendor request that would be sent (URL, headers with secrets "
        "masked, body exactly as sent). Nothing is sent. Exit 0 allowed, 1 denied, 2 bad input.",
    )
    explain.add_argument("--user", required=True, metavar="ID", help="the user id")
    explain.add_argument(
        "--tenant",
        required=True,
        action="append",
        metavar="ID",
        help="the session's tenant (repeat for a multi-tenant user, then say --act-for)",
    )
    explain.add_argument(
        "--act-for", metavar="ID", help="the request's tenant field: which tenant to act for"
    )
    explain.add_argument("--roles", default="", help="comma-separated roles, e.g. viewer,analyst")
    explain.add_argument("--email", help="the user's email ({user.email})")
    explain.add_argument(
        "--claim",
        action="append",
        metavar="NAME=VALUE",
        help="a further session claim for {user.claims.*}; repeatable; a.b=v nests; "
        'VALUE is JSON when it parses as JSON (3, true, ["x"]), else a string',
    )
    explain.add_argument("--embed", required=True, metavar="NAME", help="the embed to ask for")
    explain.add_argument(
        "--service",
        metavar="NAME",
        help="ask as this internal service (POST /internal/v1/tokens) instead of a session",
    )
    explain.add_argument("--config", metavar="PATH", help="policy file (default: BROKER_CONFIG)")
    explain.add_argument("--json", action="store_true", help="print one JSON document")
    explain.set_defaults(handler=cmd_explain)


def _add_test(commands: Any) -> None:
    test = commands.add_parser(
        "test",
        help="run policy test cases (tenant isolation you can keep under CI)",
        description='Run policy test cases (config.md "Policy tests") through the real '
        "token flow without calling any vendor: one line per case, then 'N passed, M "
        "failed'. Without FILES, runs the cases file beside the policy (demo.yaml -> "
        "demo.cases.yaml). Exit 0 all passed, 1 a case failed, 2 the tests could not run.",
    )
    test.add_argument(
        "files", nargs="*", metavar="CASES.yaml", help="case files or directories of them"
    )
    test.add_argument("--config", metavar="PATH", help="policy file (default: BROKER_CONFIG)")
    test.set_defaults(handler=cmd_test)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
