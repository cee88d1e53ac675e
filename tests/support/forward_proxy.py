"""A small forwarding HTTP proxy, run as its own process by the outbound tests.

    python -m tests.support.forward_proxy --port-file PATH --record PATH [--refuse-connect]

- ``CONNECT host:port``: answers ``200`` and tunnels bytes both ways (https through a
  proxy: the proxy sees the host, never the request);
- an absolute-form request (``POST http://host:port/path``): forwarded to the origin
  in origin-form, the answer relayed with ``Connection: close``;
- ``--refuse-connect``: every ``CONNECT`` is answered ``403`` (a proxy policy refusal).

Every request is appended to the record file as one JSON line ``{"method", "target",
"proxy_authorization"}`` before it is served, so a test reads what the proxy carried.
The listening port is written to ``--port-file`` once the proxy accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from pathlib import Path

MAX_HEAD = 64 * 1024


class Proxy:
    def __init__(self, record: Path, refuse_connect: bool) -> None:
        self.record = record
        self.refuse_connect = refuse_connect

    def _log(self, method: str, target: str, headers: dict[str, str]) -> None:
        entry = {
            "method": method,
            "target": target,
            "proxy_authorization": "proxy-authorization" in headers,
        }
        with self.record.open("a") as out:
            out.write(json.dumps(entry) + "\n")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        self._log(method, target, headers)
        try:
            if method == "CONNECT":
                await self._tunnel(target, reader, writer)
            else:
                await self._forward(method, target, lines[1:], headers, reader, writer)
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    async def _tunnel(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.refuse_connect:
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        host, port = target.rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def _forward(
        self,
        method: str,
        target: str,
        header_lines: list[str],
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        rest = target.split("://", 1)[1]
        authority, _, path = rest.partition("/")
        host, _, port = authority.rpartition(":")
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        kept = [
            line
            for line in header_lines
            if line
            and line.split(":", 1)[0].strip().lower() not in ("connection", "proxy-authorization")
        ]
        request = f"{method} /{path} HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in kept)
        up_writer.write(request.encode("latin-1") + b"Connection: close\r\n\r\n" + body)
        await up_writer.drain()
        answer_head = await up_reader.readuntil(b"\r\n\r\n")
        answer_lines = [
            line
            for line in answer_head.decode("latin-1").split("\r\n")
            if line and not line.lower().startswith("connection:")
        ]
        writer.write(
            ("\r\n".join(answer_lines) + "\r\nConnection: close\r\n\r\n").encode("latin-1")
        )
        await _pipe(up_reader, writer)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def main(port_file: Path, record: Path, refuse_connect: bool) -> None:
    proxy = Proxy(record, refuse_connect)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, limit=MAX_HEAD)
    port = server.sockets[0].getsockname()[1]
    record.touch()
    temporary = port_file.with_suffix(".tmp")
    temporary.write_text(str(port))
    temporary.rename(port_file)  # the port appears whole or not at all
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--refuse-connect", action="store_true")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.port_file, args.record, args.refuse_connect))
