"""The vendor sandbox plus a JWKS document over TLS, run as its own process.

    python -m tests.support.origin --port-file PATH --certfile C --keyfile K \
        --jwks PATH [--client-ca CA]

Serves ``/jwks.json`` (the file given) and everything else from the sandbox
(``app.sandbox``), under uvicorn with the given server certificate. With
``--client-ca`` the TLS handshake requires a client certificate issued by that CA
(a self-hosted vendor behind mTLS). The port is written to ``--port-file`` when the
server accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Mount, Route

from app.sandbox import SandboxSettings, create_sandbox_app


def build_app(jwks: bytes) -> Starlette:
    async def jwks_document(_: object) -> Response:
        return Response(jwks, media_type="application/json")

    return Starlette(
        routes=[
            Route("/jwks.json", jwks_document),
            Mount("/", create_sandbox_app(SandboxSettings())),
        ]
    )


async def serve(args: argparse.Namespace) -> None:
    config = uvicorn.Config(
        build_app(args.jwks.read_bytes()),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        access_log=False,
        ssl_certfile=str(args.certfile),
        ssl_keyfile=str(args.keyfile),
        ssl_ca_certs=str(args.client_ca) if args.client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if args.client_ca else ssl.CERT_NONE,
    )
    server = uvicorn.Server(config)
    config.load()
    sockets = [_listening_socket()]
    task = asyncio.create_task(server.serve(sockets=sockets))
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    temporary = args.port_file.with_suffix(".tmp")
    temporary.write_text(str(sockets[0].getsockname()[1]))
    temporary.rename(args.port_file)
    await task


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--certfile", type=Path, required=True)
    parser.add_argument("--keyfile", type=Path, required=True)
    parser.add_argument("--jwks", type=Path, required=True)
    parser.add_argument("--client-ca", type=Path)
    asyncio.run(serve(parser.parse_args()))
