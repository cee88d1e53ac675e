"""``token-broker demo``: the sandbox vendors and the broker in one process.

For a newcomer's first five minutes: no vendor accounts, no IdP. The broker serves
``config/demo.yaml`` with its providers pointed at the sandbox, and the command prints
``curl`` lines with freshly minted dev session tokens for two tenants in two regions
and both vendors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
from pathlib import Path
from typing import Any

import uvicorn

from app.auth import mint_dev_token
from app.config.loader import ConfigError, load_policy_file
from app.main import create_app
from app.observability.logging import configure_logging, logging_config
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


def _server(app: Any, port: int) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=LOOPBACK,
            port=port,
            log_config=logging_config("warning", "console"),
            access_log=False,
            lifespan="on",
        )
    )


async def _serve(broker_port: int, sandbox_port: int, config_path: Path) -> None:

    settings = Settings(config=config_path, port=broker_port, log_format="console")
    sandbox = _server(create_sandbox_app(), sandbox_port)
    broker = _server(create_app(settings), broker_port)
    sandbox_task = asyncio.create_task(sandbox.serve())
    while not sandbox.started:
        if sandbox_task.done():
            await sandbox_task
            return
        await asyncio.sleep(0.05)
    broker_task = asyncio.create_task(broker.serve())
    while not broker.started:
        if broker_task.done():
            sandbox.should_exit = True
            await broker_task
            return
        await asyncio.sleep(0.05)
    broker_url = f"http://{LOOPBACK}:{broker_port}"
    print(
        f"\nSandbox vendors: http://{LOOPBACK}:{sandbox_port}  (recorded calls: /_sandbox/requests)"
    )
    print(
        f"Broker:          {broker_url}  (policy {config_path}; /readyz /metrics /openapi.json)\n"
    )
    print("Paste any of these into another terminal:\n")
    for line in curl_commands(config_path, broker_url):
        print(line + "\n")
    print("Stop with Ctrl-C.", flush=True)
    await asyncio.wait({sandbox_task, broker_task}, return_when=asyncio.FIRST_COMPLETED)
    sandbox.should_exit = broker.should_exit = True
    await asyncio.gather(sandbox_task, broker_task, return_exceptions=True)


def run_demo(*, broker_port: int, sandbox_port: int) -> int:
    config_path = demo_config_path()
    os.environ.setdefault("SANDBOX_URL", f"http://{LOOPBACK}:{sandbox_port}")
    configure_logging("warning", "console")
    try:
        load_policy_file(config_path)
    except ConfigError as exc:
        print(str(exc))
        return 1
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(broker_port, sandbox_port, config_path))
    return 0
