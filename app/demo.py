"""``token-broker demo``: the sandbox vendors and the broker in one process.

For a newcomer's first five minutes: no vendor accounts, no IdP. The broker serves
``config/demo.yaml`` with its providers pointed at the sandbox, and the command prints
``curl`` lines with freshly minted dev session tokens for two tenants in two regions
and both vendors, and serves the demo page (app/demo_site) next to the broker. While it
runs, each token decision (and each refused session) is echoed as one readable line, so the newcomer sees what the broker decided and why.

Both listening sockets are bound before anything starts: a busy port is one line
naming the flag that changes it, not a traceback from inside uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from app.auth import mint_dev_token
from app.config.loader import ConfigError, load_policy_file
from app.demo_site import DemoSite
from app.main import create_app
from app.observability.logging import escape_control, logging_config
from app.sandbox import create_sandbox_app
from app.settings import Settings

DEMO_CONFIG = Path("config/demo.yaml")
LOOPBACK = "127.0.0.1"

# (user, tenant, roles, embed): two tenants in two regions, both vendors.
DEMO_REQUESTS = (
    ("alice", "acme", ("analyst",), "sales-overview"),
    ("alice", "acme", ("analyst",), "ops-dashboard"),
    ("bob", "globex", ("viewer",), "sales-overview"),
    ("carol", "globex", ("analyst",), "ops-dashboard"),
)
ECHOED_EVENTS = frozenset({"token.issued", "token.denied", "session.rejected"})


def demo_config_path() -> Path:
    """config/demo.yaml from the working directory, or from the source checkout."""
    if DEMO_CONFIG.is_file():
        return DEMO_CONFIG
    return Path(__file__).resolve().parents[1] / DEMO_CONFIG


def curl_commands(config_path: Path, broker_url: str) -> list[str]:
    config = load_policy_file(config_path)
    lines = []
    for user, tenant, roles, embed in DEMO_REQUESTS:
        token = mint_dev_token(
            config.session, user=user, tenant=tenant, roles=roles, ttl_seconds=3600
        )
        body = f'{{"embed": "{embed}"}}'
        lines.append(
            f"# {user} ({', '.join(roles)}) at {tenant} "
            f"(region {config.tenants[tenant].region}) -> {embed}\n"
            f"curl -s -X POST {broker_url}/v1/tokens -H 'Content-Type: application/json' "
            f"-H {shlex.quote('Authorization: Bearer ' + token)} -d {shlex.quote(body)}"
        )
    return lines


# --- the echo of decisions ------------------------------------------------------------------


def _shown(value: Any) -> str:
    """A field on one line: the embed name comes from the request body, and a newline
    in it must not write a second, forged line."""
    return "-" if value is None else escape_control(str(value))


def decision_line(event: str, fields: dict[str, Any], created: float) -> str:
    """One readable line for an audit event."""
    at = time.strftime("%H:%M:%S", time.localtime(created))
    who = f"{_shown(fields.get('user_id'))}@{_shown(fields.get('tenant'))}"
    took = f"{float(fields.get('latency_ms') or 0):.0f} ms"
    if event == "token.issued":
        where = _shown(fields.get("provider"))
        if fields.get("region"):
            where += f" {_shown(fields['region'])}"
        return (
            f"{at}  issued   {_shown(fields.get('embed'))} for {who} via {where}"
            f" (cache {_shown(fields.get('cache'))}, vendor {_shown(fields.get('vendor_status'))},"
            f" {took})"
        )
    if event == "token.denied":
        return (
            f"{at}  denied   {_shown(fields.get('embed'))} for {who}:"
            f" {_shown(fields.get('outcome'))} ({took})"
        )
    issuer = f" from {_shown(fields['issuer'])}" if fields.get("issuer") else ""
    return (
        f"{at}  rejected a {_shown(fields.get('caller'))} credential{issuer}:"
        f" {_shown(fields.get('reason'))} ({_shown(fields.get('detail'))})"
    )


class DecisionFilter(logging.Filter):
    """Only the audit events that are echoed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() in ECHOED_EVENTS


class DecisionFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return decision_line(record.getMessage(), record.__dict__, record.created)


def demo_logging_config() -> dict[str, Any]:
    """The service's console logs at warning level, plus one line per decision."""
    config = logging_config("warning", "console")
    config["filters"]["decisions"] = {"()": DecisionFilter}
    config["formatters"] = {"decisions": {"()": DecisionFormatter}}
    config["handlers"]["stdout"]["level"] = "WARNING"
    config["handlers"]["decisions"] = {
        "class": "logging.StreamHandler",
        "formatter": "decisions",
        "filters": ["decisions"],
        "stream": "ext://sys.stdout",
    }
    # INFO, so that audit events are made at all; the handlers choose what is shown.
    config["loggers"]["token_broker"] = {
        "handlers": ["stdout", "decisions"],
        "level": "INFO",
        "propagate": False,
    }
    return config


# --- serving ----------------------------------------------------------------------------------


class PortInUse(Exception):
    """A port the demo needs is taken; ``str()`` is the one line to print."""


def listen(port: int, flag: str, make_variable: str) -> socket.socket:
    """A socket bound to the loopback port (0 = any free port), or PortInUse."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError as exc:
        sock.close()
        why = (
            "is already in use"
            if exc.errno == errno.EADDRINUSE
            else f"is not usable ({exc.strerror})"
        )
        raise PortInUse(
            f"port {port} {why}; choose another with {flag} N (make run {make_variable}=N)"
        ) from None
    return sock


def demo_site(broker: ASGIApp, config_path: Path, sandbox_port: int) -> DemoSite:
    """The broker with the demo page (app/demo_site) in front of it, on the broker's port."""
    config = load_policy_file(config_path)
    return DemoSite(
        broker,
        session=config.session,
        tenants={name: tenant.region for name, tenant in config.tenants.items()},
        sandbox_url=f"http://{LOOPBACK}:{sandbox_port}",
    )


def _server(app: Any) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=demo_logging_config(),
            access_log=False,
            lifespan="on",
        )
    )


async def _serve(
    broker_socket: socket.socket, sandbox_socket: socket.socket, config_path: Path
) -> None:
    broker_port = broker_socket.getsockname()[1]
    sandbox_port = sandbox_socket.getsockname()[1]
    settings = Settings(config=config_path, port=broker_port, log_format="console")
    sandbox = _server(create_sandbox_app())
    broker = _server(demo_site(create_app(settings), config_path, sandbox_port))
    sandbox_task = asyncio.create_task(sandbox.serve(sockets=[sandbox_socket]))
    while not sandbox.started:
        if sandbox_task.done():
            await sandbox_task
            return
        await asyncio.sleep(0.05)
    broker_task = asyncio.create_task(broker.serve(sockets=[broker_socket]))
    while not broker.started:
        if broker_task.done():
            sandbox.should_exit = True
            await asyncio.gather(sandbox_task, broker_task, return_exceptions=True)
            return
        await asyncio.sleep(0.05)
    broker_url = f"http://{LOOPBACK}:{broker_port}"
    print(
        f"\nSandbox vendors: http://{LOOPBACK}:{sandbox_port}  (recorded calls: /_sandbox/requests)"
    )
    print(
        f"Broker:          {broker_url}  (policy {config_path}; /readyz /metrics /openapi.json)\n"
    )
    print(f"Demo page:       {broker_url}/demo/  (the browser client, both vendors)\n")
    print("Paste any of these into another terminal:\n")
    for line in curl_commands(config_path, broker_url):
        print(line + "\n")
    print("Each token decision is echoed below. Stop with Ctrl-C.\n", flush=True)
    await asyncio.wait({sandbox_task, broker_task}, return_when=asyncio.FIRST_COMPLETED)
    sandbox.should_exit = broker.should_exit = True
    await asyncio.gather(sandbox_task, broker_task, return_exceptions=True)


def run_demo(*, broker_port: int, sandbox_port: int) -> int:
    import logging.config

    config_path = demo_config_path()
    try:
        sandbox_socket = listen(sandbox_port, "--sandbox-port", "SANDBOX_PORT")
        try:
            broker_socket = listen(broker_port, "--port", "PORT")
        except PortInUse:
            sandbox_socket.close()
            raise
    except PortInUse as exc:
        print(f"token-broker: {exc}", file=sys.stderr)
        return 1
    with sandbox_socket, broker_socket:
        os.environ.setdefault("SANDBOX_URL", f"http://{LOOPBACK}:{sandbox_socket.getsockname()[1]}")
        logging.config.dictConfig(demo_logging_config())
        try:
            load_policy_file(config_path)
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(broker_socket, sandbox_socket, config_path))
    return 0
